"""The Python API: ``finetune.load`` opens a run directory or any export for prediction in a notebook.

import finetune
model = finetune.load("runs/2026-11-30/10-00-00")      # a run (its best checkpoint) or an export
result = model.predict(["ant.jpg", "bee.png"])         # files, Pillow images or HWC uint8 arrays
result.labels, result.probabilities                     # classification
result.masks                                            # segmentation: one class-index mask per image
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data import reference
from finetune.data.images import check_image
from finetune.export.bundle import ModelBundle, metadata
from finetune.export.formats import torch_forward
from finetune.export.loading import LoadedExport, load_export
from finetune.export.predict_io import resolve_export
from finetune.run.errors import FinetuneError
from finetune.run.records import run_config
from finetune.run.task import Predictions
from finetune.tasks.registry import TASKS, get_task

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Model:
    """A trained model ready to predict: ``predict``, ``class_names``, ``preprocess``, ``torch_module``."""

    exported: LoadedExport

    @property
    def class_names(self) -> list[str]:
        return self.exported.class_names

    @property
    def task(self) -> str:
        return self.exported.metadata["task"]

    @property
    def metadata(self) -> dict:
        """What the export records: classes, preprocessing, backbone, weights, training."""
        return self.exported.metadata

    @property
    def torch_module(self):
        """The model as a ``torch.nn.Module`` in eval mode (a run, or a safetensors / pt2 / timm export;
        an ONNX export has none: load the run or another format)."""
        module = self.exported.torch_module
        if module is None:
            raise FinetuneError(
                f"{self.exported.path} ({self.metadata['format']}) has no torch module: "
                "load the run directory or a safetensors, pt2 or timm export"
            )
        return module

    def read(self, image: ImageInput) -> np.ndarray:
        """One input as the model's training images were read: HWC uint8 (DICOM with the run's window);
        a file first passes the image check training runs (a cut JPEG is refused, naming the file)."""
        if isinstance(image, np.ndarray):
            return image
        if isinstance(image, Image.Image):
            return reference.to_array(image)
        check_image(Path(image))
        return self.exported.read(Path(image))

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """The model's NCHW float32 input for ``images``, exactly as in training and evaluation."""
        return self.exported.preprocess([self.read(image) for image in _as_list(images)])

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Predictions:
        """Labels and probabilities (classification) or class-index masks (segmentation) of ``images``."""
        arrays = [self.read(image) for image in _as_list(images)]
        if not arrays:
            raise FinetuneError("predict() needs at least one image")
        return self.exported.task.predict_arrays(self.exported, arrays)


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    return [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)


def load(path: str | Path, weights: str | Path | None = None, allow_unverified: bool = False) -> Model:
    """A run directory (its best checkpoint), a checkpoint, an export file or export folder, ready to
    predict; ``weights``: the pretrained backbone file a head export pins to, when not where it was;
    ``allow_unverified``: open an export that records no sha256 of its tensors or model file (refused
    otherwise; only for a file whose origin you know: a change made to it since export goes unnoticed)."""
    path = Path(path).expanduser()
    if (path / "config.yaml").is_file() or path.suffix == ".ckpt":
        bundle = ModelBundle.from_run(path, get_task(run_config(path).task), None if weights is None else str(weights))
        return Model(LoadedExport(path, metadata(bundle, "run"), torch_forward(bundle.model.eval()), bundle.task))
    return Model(load_export(resolve_export(path), weights, tasks=TASKS, allow_unverified=allow_unverified))
