"""Opening any export for prediction: its metadata, a forward function, the preprocessing it records,
its task (from the tasks it is handed, by the name its metadata records), and the image files it is
given, read as its task reads them (e.g. DICOM with the window the run was trained with)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from finetune.data import reference
from finetune.data.files import find_images  # noqa: F401 (re-exported: predict's inputs)
from finetune.data.transforms import Preprocessing
from finetune.export.bundle import (
    EXPORT_VERSIONS,
    REEXPORT,
    ModelBundle,
    check_metadata,
    metadata,
    parse_metadata,
    task_of,
    unverified,
)
from finetune.export.formats import Forward, torch_forward
from finetune.export.predict_io import resolve_export
from finetune.export.registry import FORMATS, format_of
from finetune.export.tensors import embedded_metadata
from finetune.models.weights import sha256_file
from finetune.run.errors import ConfigError, FinetuneError
from finetune.run.records import run_config
from finetune.run.rundir import is_run
from finetune.run.task import Task
from finetune.version import __version__

log = logging.getLogger(__name__)


def preprocess(images: Sequence[np.ndarray], pre: Preprocessing, full_size: bool = False) -> np.ndarray:
    """HWC uint8 images (1 or 3 channels) → the model's NCHW float32 batch by the reference
    preprocessing (``finetune.data.reference``, every export's ``preprocess.py``): resized to
    ``pre.size``, or normalized at their own size (``full_size``, segmentation; the images must then
    share one size)."""
    return reference.preprocess(images, pre.to_dict(), full_size)


@dataclass(frozen=True)
class LoadedExport:
    """An export ready to predict: its metadata, a forward function and its task."""

    path: Path
    metadata: dict
    forward: Forward
    task: Task

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    @property
    def task_record(self) -> dict:
        """The task's own part of the metadata (e.g. multi-label, the DICOM window, segmentation tiles)."""
        return self.task.task_record(self.metadata)

    def read(self, path: Path) -> np.ndarray:
        """One input file as the model's training images were read (channels; the task's own, e.g. a DICOM window)."""
        return self.task.read_image(self.task_record, Path(path), self.preprocessing.in_chans)

    @property
    def torch_module(self) -> nn.Module | None:
        """The torch model behind ``forward`` (None for ONNX, which runs in onnxruntime)."""
        return getattr(self.forward, "module", None)

    @property
    def whole_image(self) -> bool:
        """The model takes whole images (segmentation), not images resized to one size."""
        return self.metadata["input"]["resize"] is None

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's NCHW float32 input for decoded images, by the reference preprocessing."""
        return preprocess(images, self.preprocessing, full_size=self.whole_image)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's outputs for decoded images, preprocessed as recorded."""
        return self.forward(self.preprocess(images))


def _sidecar_metadata(path: Path, sidecar: Path, allow_unverified: bool) -> dict:
    """The metadata in ``sidecar``, refused unless it records the sha256 of the model file ``path``
    (a sidecar that records none: only with ``allow_unverified``)."""
    if not sidecar.is_file():
        raise FinetuneError(
            f"{sidecar} is missing: the metadata (classes, preprocessing) of {path} lives "
            "there; re-export with finetune export"
        )
    try:
        text = sidecar.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FinetuneError(f"{sidecar}: its finetune metadata is not UTF-8 text; {REEXPORT}") from None
    metadata = parse_metadata(text, sidecar)
    if "sha256" not in metadata:
        if not allow_unverified:
            raise FinetuneError(unverified(sidecar, f"sha256 of {path}"))
        log.warning("%s records no sha256 of %s: the model file is not verified (allow_unverified)", sidecar, path)
    elif metadata["sha256"] != sha256_file(path):
        raise FinetuneError(
            f"{sidecar} describes another model file than {path} (sha256 differs); "
            "keep each export with its own .json, or re-export"
        )
    return metadata


def load_export(
    path: str | Path,
    weights: str | Path | None = None,
    *,
    tasks: Mapping[str, Task],
    fmt: str | None = None,
    sidecar: Path | None = None,
    allow_unverified: bool = False,
) -> LoadedExport:
    """Open any export of one of ``tasks`` (by name; ``finetune.tasks.registry.TASKS``): a file (format
    from the suffix unless ``fmt``) or a folder export (``timm/``); ``sidecar`` overrides where the
    metadata is read (``<file>.json``, ``<folder>/finetune.json``). An export whose metadata lacks its
    integrity record (the sha256 of its tensors or of its model file) is refused unless
    ``allow_unverified``; a record that differs is always refused."""
    path = Path(path)
    spec = FORMATS.get(fmt) if fmt else format_of(path)
    if not (path.is_dir() if spec.folder else path.is_file()):
        raise FinetuneError(
            f"export {path} does not exist; make one with finetune export run=<run dir> format=head,onnx"
        )
    source = (sidecar or spec.metadata_file(path)) if spec.sidecar else path
    if spec.sidecar:
        metadata = _sidecar_metadata(spec.model_file(path), source, allow_unverified)
    else:
        metadata = embedded_metadata(path)
    if metadata.get("export_version") not in EXPORT_VERSIONS:
        raise FinetuneError(
            f"{path}: export version {metadata.get('export_version')} is not supported by "
            f"finetune {__version__} (expects {' or '.join(map(str, EXPORT_VERSIONS))}); export the run "
            "again with finetune export run=<run dir> (its run directory is all it needs)"
        )
    check_metadata(metadata, source)
    task = task_of(metadata, tasks, source)
    forward = spec.load(path, metadata, task, None if weights is None else str(weights), allow_unverified)
    classes = len(metadata.get("class_names") or [])
    return LoadedExport(path, metadata, _checked_classes(forward, path, classes), task)


def load_model(
    path: str | Path, weights: str | Path | None = None, *, tasks: Mapping[str, Task], allow_unverified: bool = False
) -> LoadedExport:
    """A run directory (its best checkpoint), a checkpoint, an export file, export folder or folder of exports
    (``resolve_export``), ready to predict (``finetune.load``, ``finetune evaluate``); ``weights`` and
    ``allow_unverified`` as ``load_export``'s."""
    path = Path(path).expanduser()
    if not is_run(path):
        return load_export(resolve_export(path), weights, tasks=tasks, allow_unverified=allow_unverified)
    name = run_config(path).task
    if name not in tasks:
        raise ConfigError(f"{path}: task={name!r} is not known: choose one of {', '.join(tasks)}")
    bundle = ModelBundle.from_run(path, tasks[name], None if weights is None else str(weights))
    return LoadedExport(path, metadata(bundle, "run"), torch_forward(bundle.model.eval()), bundle.task)


def _checked_classes(forward: Forward, path: Path, classes: int) -> Forward:
    """``forward`` that refuses logits with another number of classes than the metadata lists
    (ONNX / TorchScript files whose sidecar's class list was edited or swapped)."""

    def checked(batch: np.ndarray) -> np.ndarray:
        logits = forward(batch)
        if logits.ndim >= 2 and logits.shape[1] != classes:
            raise FinetuneError(
                f"{path}: its metadata lists {classes} class names but the model predicts "
                f"{logits.shape[1]} classes; the class list was edited or belongs to another "
                "export: re-export the run"
            )
        return logits

    checked.module = getattr(forward, "module", None)  # LoadedExport.torch_module
    return checked
