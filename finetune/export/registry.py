"""The export formats' registry (``FORMATS``), light: each entry names its writer, loader and check as a
``"module:function"`` reference that ``finetune.run.registry.resolve`` imports on first use, so a command line's
``format=`` is checked before torch is imported. The functions are in ``finetune.export.formats``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.run.errors import FinetuneError
from finetune.run.registry import Entry, Registry, resolve

if TYPE_CHECKING:
    import numpy as np

    from finetune.export.bundle import ModelBundle
    from finetune.run.task import Task

_FORMATS = "finetune.export.formats"
_FOLDERS = "finetune.export.folders"
FOLDER_WEIGHTS = "model.safetensors"  # the name timm and huggingface_hub write and look for
FOLDER_METADATA = "finetune.json"  # finetune's metadata inside a folder export


@dataclass(frozen=True)
class Format(Entry):
    """One export format: its file (or folder) name, parity tolerance, writer and loader."""

    filename: str
    tolerance: float  # max |Δlogit| allowed by the parity gate, relative to the largest logit (absolute below 1)
    sidecar: bool  # metadata in a JSON sidecar (<file>.json; finetune.json inside a folder) else in the file
    writer: str  # (bundle, temp file or empty temp folder) -> metadata
    loader: str  # (file, metadata, task, weights, allow_unverified) -> forward
    folder: bool = False  # ``filename`` names a folder holding the model's files and its metadata
    adapters: bool = False  # stores LoRA / DoRA adapters as they are (else merged into plain weights)
    checker: str = f"{_FORMATS}:supported"  # (bundle) -> None, a FinetuneError before anything is written
    note: str = ""  # shown where the formats are listed, e.g. "deprecated: use pt2"

    def write(self, bundle: ModelBundle, path: Path) -> dict:
        """Write ``bundle`` to ``path`` (a temp file, or an empty temp folder); its metadata."""
        return resolve(self.writer)(bundle, path)

    def load(
        self, path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool
    ) -> Callable[[np.ndarray], np.ndarray]:
        """The forward of the export at ``path`` (NCHW float32 batch -> logits)."""
        return resolve(self.loader)(path, metadata, task, weights, allow_unverified)

    def check(self, bundle: ModelBundle) -> None:
        """A FinetuneError where ``bundle`` cannot be exported in this format."""
        resolve(self.checker)(bundle)

    def outputs(self, path: Path) -> list[Path]:
        """What the export at ``path`` consists of (each refused if it exists, unless overwrite)."""
        return [path, sidecar_path(path)] if self.sidecar and not self.folder else [path]

    def metadata_file(self, path: Path) -> Path | None:
        """Where the metadata of the export at ``path`` lives (None: embedded in the file)."""
        if self.folder:
            return path / FOLDER_METADATA
        return sidecar_path(path) if self.sidecar else None

    def model_file(self, path: Path) -> Path:
        """The file whose sha256 the metadata records (a folder export: its weights file)."""
        return path / FOLDER_WEIGHTS if self.folder else path

    @property
    def label(self) -> str:
        return f"{self.name} ({self.note})" if self.note else self.name


# Tolerances, measured with float32 on CPU: pt2 and timm/smp folders reproduce the torch model exactly
# (max |Δlogit| 0 on resnet10t, efficientnet_lite0, vit_tiny at 32 px and a resnet10t U-Net), so
# pt2 allows 1e-5 (room for kernels a newer torch picks for the exported graph), the folders 1e-6
# (the same modules on the same tensors); ONNX runtime fuses and reorders: 1e-4.
FORMATS: Registry[Format] = Registry(
    "format",
    [
        Format(
            "head",
            "the trained tensors only (adapters kept); loading needs the pretrained backbone",
            "head.safetensors",
            1e-6,
            False,
            f"{_FORMATS}:write_head",
            f"{_FORMATS}:load_safetensors",
            adapters=True,
        ),
        Format(
            "safetensors",
            "every tensor of the model",
            "model.safetensors",
            1e-6,
            False,
            f"{_FORMATS}:write_model",
            f"{_FORMATS}:load_safetensors",
        ),
        Format(
            "onnx",
            "an ONNX graph (opset 17) for onnxruntime",
            "model.onnx",
            1e-4,
            True,
            f"{_FORMATS}:write_onnx",
            f"{_FORMATS}:load_onnx",
        ),
        Format(
            "torchscript",
            "a traced TorchScript module",
            "model.torchscript.pt",
            1e-4,
            True,
            f"{_FORMATS}:write_torchscript",
            f"{_FORMATS}:load_torchscript",
            note="deprecated: use pt2",
        ),
        Format(
            "pt2", "a torch.export program", "model.pt2", 1e-5, True, f"{_FORMATS}:write_pt2", f"{_FORMATS}:load_pt2"
        ),
        Format(
            "timm",
            "a folder plain timm or segmentation_models_pytorch opens",
            "timm",
            1e-6,
            True,
            f"{_FOLDERS}:write_folder",
            f"{_FORMATS}:load_folder_export",
            folder=True,
            checker=f"{_FOLDERS}:check_folder",
        ),
    ],
    hint="several comma-separated, e.g. format=head,onnx",
)
_BY_SUFFIX = {
    ".safetensors": FORMATS["head"],
    ".onnx": FORMATS["onnx"],
    ".pt": FORMATS["torchscript"],
    ".pt2": FORMATS["pt2"],
}


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` → ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def format_of(path: Path) -> Format:
    """The format of an export: a file's from its suffix, a folder's from the metadata file it holds."""
    if path.is_dir():
        for spec in FORMATS.values():
            if spec.folder and spec.metadata_file(path).is_file():
                return spec
        raise FinetuneError(
            f"{path} is a folder but not a finetune folder export (it has no {FOLDER_METADATA}): "
            "give an export file, or the timm/ folder made by finetune export format=timm"
        )
    if path.suffix not in _BY_SUFFIX:
        raise FinetuneError(
            f"{path} is not a finetune export: expected a .safetensors, .onnx, .pt2 or "
            "TorchScript .pt file, or a timm/ folder, made by finetune export"
        )
    return _BY_SUFFIX[path.suffix]
