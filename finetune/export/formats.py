"""Exports of a trained model; each one passes a parity check on real images before it is kept.

Formats (``format=``, comma-separated for several):

* ``head``: ``head.safetensors``, only the tensors that differ from the pretrained backbone (the new
  head and every changed backbone tensor, BatchNorm buffers included) plus metadata. Loading it
  rebuilds the backbone from its pretrained weights and refuses weights whose fingerprint (sha256
  over the unchanged tensors) differs.
* ``safetensors``: ``model.safetensors``, every tensor plus the same metadata (no pretrained weights
  needed to load it).
* ``onnx``: ``model.onnx`` (opset 17, dynamic batch axis) + ``model.onnx.json`` sidecar.
* ``torchscript``: ``model.torchscript.pt`` (``torch.jit.trace``) + ``model.torchscript.pt.json``.

Parity gate: "the export + the preprocessing its metadata records" must reproduce "the run's torch
model + the run's preprocessing" on real validation images (max |Δlogit| within the format's
tolerance, 100 % top-1 agreement: per image, or per pixel for segmentation); otherwise nothing is
written and FinetuneError is raised. Segmentation ONNX exports take any height and width that are
multiples of 32; ``predict`` slides the recorded tile over larger images.
Nothing is unpickled from an export: tensors are safetensors, metadata JSON.

    python -m finetune.export.formats run=<run dir|checkpoint> [format=head,onnx] [out=<dir>] [overwrite=true]
                              [images=<files, folder or glob>] [weights=<backbone weights file>]

``out`` defaults to ``<run dir>/exports``; ``images`` replaces the run's validation images for the
parity check; ``weights`` is the pretrained backbone file when the recorded one is not found.
"""
from __future__ import annotations

import glob
import hashlib
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from finetune import __version__
from finetune.artifacts import atomic_path
from finetune.cli import parse_args, parse_flag, run_command
from finetune.engine.schedule import phases_from
from finetune.data.datasets import IMAGE_EXTENSIONS, read_image
from finetune.data.transforms import Preprocessing, eval_transform, normalized_tensor
from finetune.errors import FinetuneError
from finetune.models.freezing import FineTuneModel
from finetune.engine.runs import find_checkpoint, load_run
from finetune.models.factory import build_model
from finetune.tasks import get_task
from finetune.models.weights import WeightsNotFoundError, WeightsRecord, resolve_weights, sha256_file

EXPORT_VERSION = 1
METADATA_KEY = "finetune"  # one key: safetensors writes several in random order
ONNX_OPSET = 17
PARITY_IMAGES = 8
_QUIET = (DeprecationWarning, FutureWarning, torch.jit.TracerWarning)


# --- what is exported ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelBundle:
    """Everything an export needs: the trained model, its config and what it predicts."""

    model: FineTuneModel
    cfg: DictConfig  # the run's resolved config (build_model rebuilds the architecture from it)
    class_names: list[str]
    multilabel: bool
    preprocessing: Preprocessing
    image_channels: int  # channels of the training images (1: grayscale data)
    weights: dict  # WeightsRecord.to_dict() of the pretrained backbone
    training: dict = field(default_factory=dict)  # phases, BN policy, test metrics
    origin: str = ""
    backbone_weights: str | None = None  # pretrained weights file overriding the recorded one
    task_metadata: dict = field(default_factory=dict)  # the task's own export keys (e.g. segmentation tiles)

    @classmethod
    def from_run(cls, path: str | Path, backbone_weights: str | None = None) -> ModelBundle:
        """The best checkpoint of a run directory (or the given checkpoint) and its records."""
        run = load_run(path)
        data = json.loads((run.run_dir / "data.json").read_text())
        return cls(run.model, run.cfg, run.class_names, run.multilabel, run.preprocessing,
                   data["image_channels"], run.weights, _training_summary(run.cfg, run.run_dir),
                   str(run.checkpoint), backbone_weights, get_task(run.cfg.task).export_metadata(data))


def _training_summary(cfg: DictConfig, run_dir: Path) -> dict:
    """Phases, BN policy, test metrics and the decision threshold the run was tested with."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    phases = [{"name": p.name, "epochs": p.epochs, "freeze": p.freeze} for p in phases_from(cfg)]
    per_label = metrics.get("test_per_class", {}).get("threshold")  # multi-label: one per class
    threshold = list(per_label.values()) if per_label else metrics.get("test", {}).get("threshold")
    return {"phases": phases, "bn": cfg.backbone.bn, "test": metrics.get("test", {}), "threshold": threshold}


def _metadata(bundle: ModelBundle, fmt: str) -> dict:
    """What every export records: classes, preprocessing, task, backbone, weights, training."""
    weights = {k: bundle.weights.get(k) for k in ("model", "tag", "source", "sha256")}
    return {
        "export_version": EXPORT_VERSION, "format": fmt, "finetune_version": __version__,
        "task": bundle.cfg.task, "multilabel": bundle.multilabel, "class_names": list(bundle.class_names),
        "preprocessing": bundle.preprocessing.to_dict(), "image_channels": bundle.image_channels,
        "backbone": {"name": bundle.cfg.backbone.name, "in_chans": bundle.preprocessing.in_chans},
        "weights": weights, "training": bundle.training, "origin": bundle.origin,
        **bundle.task_metadata,
    }


# --- safetensors: head-only delta or the full model ----------------------------------------------


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _resolve_backbone(cfg: DictConfig, weights: str | None) -> WeightsRecord:
    name = cfg.backbone.name
    try:
        return resolve_weights(name, weights or cfg.backbone.weights)
    except (ValueError, OSError, WeightsNotFoundError) as err:
        raise FinetuneError(f"cannot find the pretrained weights of {name}: {err}\n"
                            "pass the backbone weights file with weights=<file>") from None


def _pretrained_backbone(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """The pretrained backbone's tensors (``backbone.*``), from the weights the run was trained on."""
    if not bundle.cfg.backbone.pretrained:
        raise FinetuneError("format=head stores only what changed from the pretrained backbone, but this "
                            "run started from random weights (backbone.pretrained=false): use format=safetensors")
    record = _resolve_backbone(bundle.cfg, bundle.backbone_weights)
    expected = bundle.weights.get("sha256")
    if record.sha256 != expected:
        raise FinetuneError(f"the pretrained weights found for {record.model} ({record.file}, sha256 "
                            f"{record.sha256}) are not those the run was trained from (sha256 {expected}); "
                            "pass the original file with weights=<file>")
    reference = build_model(bundle.cfg, record, bundle.preprocessing.in_chans, len(bundle.class_names))
    return {k: v for k, v in reference.state_dict().items() if k.startswith("backbone.")}


def _write_safetensors(bundle: ModelBundle, path: Path, head_only: bool) -> dict:
    """Save the tensors that differ from the pretrained backbone (``head_only``) or all of them."""
    state = bundle.model.state_dict()
    reference = _pretrained_backbone(bundle) if head_only else {}
    delta = {k: v.detach().contiguous() for k, v in state.items()
             if k not in reference or not torch.equal(v, reference[k])}
    frozen = {k: v for k, v in state.items() if k not in delta}
    metadata = _metadata(bundle, "head" if head_only else "safetensors") | {
        "config": OmegaConf.to_container(bundle.cfg, resolve=True),
        "fingerprint": fingerprint(frozen), "frozen_tensors": len(frozen),
        "delta": {"tensors": len(delta), "stages": sorted({bundle.model.stage_of(k) for k in delta})},
    }
    save_file(delta, str(path), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return metadata


def load_head_export(path: str | Path, weights: str | Path | None = None) -> FineTuneModel:
    """Rebuild the model of a ``.safetensors`` export (eval mode). A head export rebuilds the backbone
    from its pretrained weights (``weights``: that file, else the recorded one, else the usual
    offline-first resolution) and refuses weights whose frozen tensors differ from those it was made on."""
    path = Path(path)
    return _rebuild(path, _embedded_metadata(path), None if weights is None else str(weights))


def _rebuild(path: Path, metadata: dict, weights: str | None) -> FineTuneModel:
    cfg = OmegaConf.create(metadata["config"])
    if metadata["format"] == "head":
        record = _resolve_backbone(cfg, weights)
    else:
        record = resolve_weights(cfg.backbone.name, pretrained=False)  # every tensor is in the file
    model = build_model(cfg, record, metadata["backbone"]["in_chans"], len(metadata["class_names"]))
    tensors = load_file(path)
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise FinetuneError(f"{path} holds tensors that {cfg.backbone.name} does not have, e.g. {unknown[:3]}")
    frozen = {k: v for k, v in state.items() if k not in tensors}
    found = fingerprint(frozen)
    if found != metadata["fingerprint"]:
        raise FinetuneError(_mismatch(path, metadata, record, found, len(frozen)))
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def _mismatch(path: Path, metadata: dict, record: WeightsRecord, found: str, frozen: int) -> str:
    expected = metadata["weights"]
    return (f"{path} was made on {expected['model']} backbone weights with sha256 {expected['sha256']} "
            f"(source {expected['source']}), but the weights found now ({record.source}: {record.file}, "
            f"sha256 {record.sha256}) differ in its {frozen} frozen tensors (fingerprint {found[:12]}… "
            f"instead of {metadata['fingerprint'][:12]}…). Pass the original weights file: weights=<file> "
            "(python -m finetune.export.predict … weights=<file>, load_head_export(path, weights=<file>), "
            "or train with backbone.weights=<file>)")


# --- ONNX and TorchScript ------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporters' deprecation and tracer chatter (the parity gate is the real check)."""
    with warnings.catch_warnings():
        for category in _QUIET:
            warnings.simplefilter("ignore", category)
        yield


def _example_input(bundle: ModelBundle) -> torch.Tensor:
    return torch.zeros(2, bundle.preprocessing.in_chans, *bundle.preprocessing.size)


def _write_onnx(bundle: ModelBundle, path: Path) -> dict:
    """Dynamic batch; for segmentation also dynamic height and width (multiples of 32)."""
    axes = {0: "batch", 2: "height", 3: "width"} if get_task(bundle.cfg.task).dense else {0: "batch"}
    with _quiet():
        torch.onnx.export(bundle.model.eval(), (_example_input(bundle),), str(path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": axes, "logits": axes})
    return _metadata(bundle, "onnx") | {"sha256": sha256_file(path), "opset": ONNX_OPSET,
                                        "input": "input", "output": "logits"}


def _write_torchscript(bundle: ModelBundle, path: Path) -> dict:
    with _quiet():
        traced = torch.jit.trace(bundle.model.eval(), _example_input(bundle))
        torch.jit.save(traced, str(path))
    return _metadata(bundle, "torchscript") | {"sha256": sha256_file(path)}


Forward = Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> logits


def _torch_forward(model: nn.Module) -> Forward:
    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).float().numpy()
    return forward


def _load_safetensors(path: Path, metadata: dict, weights: str | None) -> Forward:
    return _torch_forward(_rebuild(path, metadata, weights))


def _load_onnx(path: Path, metadata: dict, weights: str | None) -> Forward:
    try:
        import onnxruntime  # optional: the "export" extra
    except ModuleNotFoundError:
        raise FinetuneError("ONNX exports need onnxruntime: pip install 'finetune[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def _load_torchscript(path: Path, metadata: dict, weights: str | None) -> Forward:
    with _quiet():
        return _torch_forward(torch.jit.load(str(path), map_location="cpu").eval())


# --- formats -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One export format: its file name, parity tolerance, writer and loader."""

    name: str
    filename: str
    tolerance: float  # max |Δlogit| allowed by the parity gate
    sidecar: bool  # metadata in <file>.json (else embedded in the file)
    write: Callable[[ModelBundle, Path], dict]
    load: Callable[[Path, dict, str | None], Forward]

    def outputs(self, path: Path) -> list[Path]:
        return [path, sidecar_path(path)] if self.sidecar else [path]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("head", "head.safetensors", 1e-6, False, partial(_write_safetensors, head_only=True), _load_safetensors),
    Format("safetensors", "model.safetensors", 1e-6, False, partial(_write_safetensors, head_only=False),
           _load_safetensors),
    Format("onnx", "model.onnx", 1e-4, True, _write_onnx, _load_onnx),
    Format("torchscript", "model.torchscript.pt", 1e-4, True, _write_torchscript, _load_torchscript),
)}
_BY_SUFFIX = {".safetensors": FORMATS["head"], ".onnx": FORMATS["onnx"], ".pt": FORMATS["torchscript"]}


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def get_format(name: str) -> Format:
    """The format called ``name``; FinetuneError lists the known ones."""
    if name not in FORMATS:
        raise FinetuneError(f"format={name!r} is not known: use one or more of {', '.join(FORMATS)} "
                            "(comma-separated)")
    return FORMATS[name]


def _format_of(path: Path) -> Format:
    if path.suffix not in _BY_SUFFIX:
        raise FinetuneError(f"{path} is not a finetune export: expected a .safetensors, .onnx or "
                            "TorchScript .pt file made by python -m finetune.export.formats")
    return _BY_SUFFIX[path.suffix]


# --- loading any export --------------------------------------------------------------------------


@cache
def _transform(pre: Preprocessing, channels: int, full_size: bool):
    return normalized_tensor([], pre, channels) if full_size else eval_transform(pre, channels)


def preprocess(images: Sequence[np.ndarray], pre: Preprocessing, full_size: bool = False) -> np.ndarray:
    """HWC uint8 images (1 or 3 channels) → the model's NCHW float32 batch, as at evaluation:
    resized to ``pre.size``, or normalized at their own size (``full_size``, segmentation; the
    images must then share one size)."""
    batch = []
    for image in images:
        image = image[..., None] if image.ndim == 2 else image
        if image.shape[2] == 3 and pre.in_chans == 1:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
        batch.append(_transform(pre, image.shape[2], full_size)(image=image)["image"].numpy())
    return np.stack(batch).astype(np.float32)


@dataclass(frozen=True)
class LoadedExport:
    """An export ready to predict: its metadata and a forward function."""

    path: Path
    metadata: dict
    forward: Forward

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    @property
    def multilabel(self) -> bool:
        return self.metadata["multilabel"]

    @property
    def threshold(self) -> float | list[float] | None:
        """Decision threshold of a binary / multi-label run (None: argmax, or 0.5 per label)."""
        return self.metadata.get("training", {}).get("threshold")

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Logits for raw images, through the preprocessing the metadata records."""
        return self.forward(preprocess(images, self.preprocessing))


def _embedded_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as err:  # safetensors raises its own error types for a broken header
        raise FinetuneError(f"cannot read {path} as safetensors: {err}") from None
    if raw is None:
        raise FinetuneError(f"{path} has no finetune metadata: not made by python -m finetune.export.formats")
    return json.loads(raw)


def _sidecar_metadata(path: Path, sidecar: Path) -> dict:
    if not sidecar.is_file():
        raise FinetuneError(f"{sidecar} is missing: the metadata (classes, preprocessing) of {path} lives "
                            "there; re-export with python -m finetune.export.formats")
    metadata = json.loads(sidecar.read_text())
    if metadata.get("sha256") != sha256_file(path):
        raise FinetuneError(f"{sidecar} describes another model file than {path} (sha256 differs); "
                            "keep each export with its own .json, or re-export")
    return metadata


def load_export(path: str | Path, weights: str | Path | None = None, *, fmt: str | None = None,
                sidecar: Path | None = None) -> LoadedExport:
    """Open any export (format from the suffix unless ``fmt``); ``sidecar`` overrides ``<file>.json``."""
    path = Path(path)
    spec = get_format(fmt) if fmt else _format_of(path)
    if not path.is_file():
        raise FinetuneError(f"export {path} does not exist; make one with "
                            "python -m finetune.export.formats run=<run dir> format=head,onnx")
    if spec.sidecar:
        metadata = _sidecar_metadata(path, sidecar or sidecar_path(path))
    else:
        metadata = _embedded_metadata(path)
    if metadata.get("export_version") != EXPORT_VERSION:
        raise FinetuneError(f"{path}: export version {metadata.get('export_version')} is not supported by "
                            f"finetune {__version__} (expects {EXPORT_VERSION})")
    return LoadedExport(path, metadata, spec.load(path, metadata, None if weights is None else str(weights)))


# --- parity gate ---------------------------------------------------------------------------------


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


def _torch_logits(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    return _torch_forward(model.eval())(batch)


def check_parity(bundle: ModelBundle, path: str | Path, images: Sequence[np.ndarray], *,
                 fmt: str | None = None, sidecar: Path | None = None) -> Parity:
    """Compare "export + its recorded preprocessing" with "torch model + the run's preprocessing";
    FinetuneError when max |Δlogit| exceeds the format's tolerance or a top-1 class differs."""
    if not images:
        raise FinetuneError("the parity check needs at least one real image")
    spec = get_format(fmt) if fmt else _format_of(Path(path))
    exported = load_export(path, bundle.backbone_weights, fmt=spec.name, sidecar=sidecar)
    actual = exported.logits(images)
    expected = _torch_logits(bundle.model, preprocess(images, bundle.preprocessing))
    if actual.shape != expected.shape:
        parity = Parity(len(images), float("inf"), 0.0, spec.tolerance)
    else:
        parity = Parity(len(images), float(np.abs(actual - expected).max()),
                        decision_agreement(actual, expected, spec.tolerance), spec.tolerance)
    if not parity.passed:
        raise FinetuneError(
            f"{spec.name} export failed the parity check on {len(images)} real image(s): max |Δlogit| = "
            f"{parity.max_abs_diff:.3g} (allowed {spec.tolerance:g}), top-1 agreement "
            f"{parity.top1_agreement:.0%} (needed 100%). The exported model or the preprocessing in its "
            f"metadata ({exported.metadata['preprocessing']}) differs from the run's "
            f"({bundle.preprocessing.to_dict()}); the export was not kept")
    return parity


def validation_images(cfg: DictConfig, n: int = PARITY_IMAGES) -> list[np.ndarray]:
    """Up to ``n`` raw images of the run's validation split (rebuilt from its config)."""
    task = get_task(cfg.task)
    try:
        data = task.data_module(cfg)
    except FinetuneError as err:
        raise FinetuneError(f"the parity check needs real images, but the run's dataset cannot be loaded "
                            f"({err}); pass images=<files, folder or glob> instead") from None
    return task.parity_images(data, n)


def find_images(spec: str) -> list[Path]:
    """Image files named by comma-separated files, folders (searched recursively) or globs."""
    found: dict[Path, None] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part).expanduser()
        if path.is_file():
            candidates = [path]
        elif path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            candidates = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        found |= dict.fromkeys(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise FinetuneError(f"no images found in {spec!r}: give image files, folders or globs "
                            f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}), comma-separated")
    return list(found)


# --- writing exports -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """A written export that passed its parity check."""

    format: str
    path: Path
    bytes: int
    parity: Parity


def _refuse_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FinetuneError(f"{existing[0]} already exists; pass overwrite=true to replace it "
                            "(or out=<another folder>)")


def export(bundle: ModelBundle, fmt: str, out_dir: str | Path, images: Sequence[np.ndarray],
           overwrite: bool = False) -> ExportResult:
    """Write one export into ``out_dir`` atomically, kept only if it passes the parity check."""
    spec = get_format(fmt)
    path = Path(out_dir) / spec.filename
    _refuse_overwrite(spec.outputs(path), overwrite)
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path))
        metadata = spec.write(bundle, tmp)
        sidecar = None
        if spec.sidecar:
            sidecar = stack.enter_context(atomic_path(sidecar_path(path)))
            sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        parity = check_parity(bundle, tmp, images, fmt=spec.name, sidecar=sidecar)
    return ExportResult(spec.name, path, path.stat().st_size, parity)


def export_run(run: str | Path, formats: Sequence[str] = ("head",), out: str | Path | None = None,
               overwrite: bool = False, images: str | None = None, weights: str | None = None,
               parity_images: Sequence[np.ndarray] | None = None) -> list[ExportResult]:
    """Export a run directory (or checkpoint) in each format; parity on its validation images
    (``parity_images`` when the caller already holds them) unless ``images`` names other files."""
    specs = [get_format(name) for name in dict.fromkeys(formats)]
    run_dir, _ = find_checkpoint(run)
    out_dir = Path(out).expanduser() if out else run_dir / "exports"
    for spec in specs:
        _refuse_overwrite(spec.outputs(out_dir / spec.filename), overwrite)
    bundle = ModelBundle.from_run(run, weights)
    channels = bundle.image_channels
    if images:
        parity_images = [read_image(p, channels) for p in find_images(images)[:PARITY_IMAGES]]
    elif parity_images is None:
        parity_images = validation_images(bundle.cfg)
    return [export(bundle, spec.name, out_dir, parity_images, overwrite) for spec in specs]


# --- re-targeting --------------------------------------------------------------------------------


def _head_source(source: Path) -> tuple[str, list[str], dict[str, torch.Tensor]]:
    """(backbone architecture, class names, tensors) of a .safetensors export or a run/checkpoint."""
    if source.suffix == ".safetensors":
        metadata = _embedded_metadata(source)
        return metadata["weights"]["model"], metadata["class_names"], load_file(source)
    if source.is_file() and source.suffix != ".ckpt":
        raise FinetuneError(f"init_from={source}: use a .safetensors export, a run directory or a .ckpt")
    run_dir, ckpt = find_checkpoint(source)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    data = json.loads((run_dir / "data.json").read_text())
    arch = json.loads((run_dir / "weights.json").read_text())["model"]
    return arch, data["class_names"], {k.removeprefix("model."): v for k, v in state.items()}


def init_head_from(model: FineTuneModel, class_names: list[str], source: str | Path) -> list[str]:
    """Copy the final linear layer's rows (weight and bias) of every class named both in
    ``class_names`` (``model``'s classes, in order) and in ``source`` (an export or a run);
    return the matched names. Both heads must have the same layout on the same architecture."""
    source = Path(source).expanduser()
    arch, source_names, tensors = _head_source(source)
    own_arch = model.backbone.pretrained_cfg["architecture"]
    name, layer = [(n, m) for n, m in model.head.named_modules() if isinstance(m, nn.Linear)][-1]
    weight, bias = tensors.get(f"head.{name}.weight"), tensors.get(f"head.{name}.bias")
    if arch != own_arch or weight is None or bias is None or weight.shape[1] != layer.in_features:
        raise FinetuneError(f"init_from={source}: its head ({arch}, final layer head.{name} "
                            f"{None if weight is None else tuple(weight.shape)}) does not fit this model's "
                            f"({own_arch}, {layer.out_features}x{layer.in_features}); use a source trained "
                            "with the same backbone and head")
    if len(class_names) != layer.out_features:
        raise ValueError(f"{len(class_names)} class names for a head with {layer.out_features} outputs")
    rows = {n: i for i, n in enumerate(source_names)}
    matched = [n for n in class_names if n in rows]
    with torch.no_grad():
        for i, n in enumerate(class_names):
            if n in rows:
                layer.weight[i] = weight[rows[n]]
                layer.bias[i] = bias[rows[n]]
    return matched


# --- command line --------------------------------------------------------------------------------


def print_results(results: Sequence[ExportResult], console: Console) -> None:
    """The exports written, their size and parity."""
    table = Table(title="exports (parity checked on real images)", title_justify="left")
    for column in ("format", "file", "size", "max |Δlogit|", "top-1 same"):
        table.add_column(column, justify="left" if column in ("format", "file") else "right", no_wrap=True)
    for r in results:
        table.add_row(r.format, r.path.name, f"{r.bytes / 1024:,.1f} KiB", f"{r.parity.max_abs_diff:.2g}",
                      f"{r.parity.top1_agreement:.0%} of {r.parity.images}")
    console.print(table)
    if results:
        console.print(f"written to [bold]{results[0].path.parent}[/bold]")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finetune.export.formats``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_export_command, __doc__, argv)


def _export_command(argv: list[str]) -> None:
    args = parse_args(argv, {"run": None, "format": "head", "out": None, "overwrite": "false",
                             "images": None, "weights": None}, ["run"], "finetune.export.formats")
    results = export_run(args["run"], args["format"].split(","), args["out"],
                         parse_flag(args["overwrite"], "overwrite"), args["images"], args["weights"])
    print_results(results, Console())


if __name__ == "__main__":
    sys.exit(main())
