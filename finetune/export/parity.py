"""The parity gate: "the export + the reference preprocessing shipped beside it (``preprocess.py``,
numpy + Pillow) following its metadata" must reproduce "the run's torch model + the run's own
evaluation pipeline" on real images (max |Δlogit| within the format's tolerance, 100 % top-1
agreement: per image, or per pixel for segmentation) before an export is kept."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from finetune.data import reference
from finetune.data.transforms import eval_transform
from finetune.export.bundle import ModelBundle
from finetune.export.formats import torch_forward
from finetune.export.loading import load_export
from finetune.export.registry import FORMATS, format_of
from finetune.run.errors import FinetuneError
from finetune.run.task import Task

PARITY_IMAGES = 8
REFERENCE = Path(reference.__file__)  # shipped with every export as preprocess.py


@dataclass(frozen=True)
class Parity:
    """Export vs the run's torch model on the same real images."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agreement == 1.0


def decision_agreement(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    """Share of decisions (top-1 class per image, or per pixel for [N, K, H, W] masks) that agree,
    over those whose expected top-2 margin exceeds 2 x tolerance: a genuine tie may flip within
    the logit tolerance, anything else may not."""
    if expected.shape[1] < 2:
        return 1.0
    top2 = np.sort(expected, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    same = actual.argmax(1) == expected.argmax(1)
    return float(same[decisive].mean()) if decisive.any() else 1.0


def logit_scale(expected: np.ndarray) -> float:
    """What a format's tolerance is multiplied by: float32 rounding grows with the logits' magnitude
    (an ONNX runtime fuses and reorders operations), so the tolerance is relative to the largest
    logit, and absolute below 1."""
    return max(1.0, float(np.abs(expected).max()))


def reference_preprocess(path: Path, images: Sequence[np.ndarray], spec: dict) -> np.ndarray:
    """``images`` through the ``preprocess.py`` file at ``path`` (imported from that file, as a
    deployment would), resized to the recorded size."""
    loader = importlib.machinery.SourceFileLoader("finetune_export_preprocess", str(path))  # any suffix (a temp file)
    module_spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.preprocess(list(images), spec)


def run_pipeline(bundle: ModelBundle, images: Sequence[np.ndarray]) -> np.ndarray:
    """``images`` through the run's own evaluation transform (albumentations, as in its test)."""
    images = [image[..., None] if image.ndim == 2 else image for image in images]
    return np.stack(
        [eval_transform(bundle.preprocessing, image.shape[2])(image=image)["image"].numpy() for image in images]
    )


def check_parity(
    bundle: ModelBundle,
    path: str | Path,
    images: Sequence[np.ndarray],
    *,
    fmt: str | None = None,
    sidecar: Path | None = None,
    reference: Path = REFERENCE,
) -> Parity:
    """Compare "export + the reference preprocessing file ``reference`` (the ``preprocess.py`` shipped
    with it)" with "torch model + the run's pipeline"; FinetuneError when max |Δlogit| exceeds the
    format's tolerance or a top-1 class differs."""
    if not images:
        raise FinetuneError("the parity check needs at least one real image")
    spec = FORMATS.get(fmt) if fmt else format_of(Path(path))
    exported = load_export(
        path, bundle.backbone_weights, tasks={bundle.task.name: bundle.task}, fmt=spec.name, sidecar=sidecar
    )
    actual = exported.forward(reference_preprocess(reference, images, exported.metadata["preprocessing"]))
    expected = torch_forward(bundle.model.eval())(run_pipeline(bundle, images))
    scale = logit_scale(expected)
    tolerance = spec.tolerance * scale
    if actual.shape != expected.shape:
        parity = Parity(len(images), float("inf"), 0.0, tolerance)
    else:
        parity = Parity(
            len(images),
            float(np.abs(actual - expected).max()),
            decision_agreement(actual, expected, tolerance),
            tolerance,
        )
    if not parity.passed:
        raise FinetuneError(
            f"{spec.name} export failed the parity check on {len(images)} real image(s): max |Δlogit| = "
            f"{parity.max_abs_diff:.3g} (allowed {tolerance:.3g} = {spec.tolerance:g} x the largest logit "
            f"{scale:.3g}), top-1 agreement "
            f"{parity.top1_agreement:.0%} (needed 100%). The exported model or the preprocessing in its "
            f"metadata ({exported.metadata['preprocessing']}) differs from the run's "
            f"({bundle.preprocessing.to_dict()}); the export was not kept"
        )
    return parity


def validation_images(cfg: DictConfig, task: Task, n: int = PARITY_IMAGES) -> list[np.ndarray]:
    """Up to ``n`` raw images of the run's validation split (``task``'s data module, from its config)."""
    try:
        data = task.data_module(cfg)
    except FinetuneError as err:
        raise FinetuneError(
            f"the parity check needs real images, but the run's dataset cannot be loaded "
            f"({err}); pass images=<files, folder or glob> instead"
        ) from None
    return task.parity_images(data, n)
