"""The export formats' writers and loaders. Adding a format is one writer, one loader (here) and one entry in
``FORMATS`` (``finetune.export.registry``, light: it names them as ``"module:function"``; ``FORMATS.get(name)``
refuses an unknown name with the choices).

* ``head``: ``head.safetensors``, only the tensors that differ from the pretrained backbone (the new
  head and every changed backbone tensor, BatchNorm buffers included; every LoRA / DoRA tensor) plus
  metadata (finetune.export.tensors). The only format that keeps adapters as they are: every other
  format stores a plain model with the adapters merged into its weights (finetune.export.merging).
* ``safetensors``: ``model.safetensors``, every tensor plus the same metadata (no pretrained weights
  needed to load it).
* ``onnx``: ``model.onnx`` (opset 17, dynamic batch axis; segmentation also dynamic height and width,
  multiples of 32) + ``model.onnx.json`` sidecar.
* ``pt2``: ``model.pt2`` (``torch.export``: the graph and its weights; dynamic batch axis, segmentation
  also dynamic height and width, multiples of 32 from 64 up) + ``model.pt2.json`` sidecar. Load it with
  ``torch.export.load(path).module()``; like every pickle-based format, only from a trusted source.
  finetune opens only the archive layout ``torch.export.save`` writes for one model (checked before
  torch reads it): raw tensors, no pickled weights or objects, sample inputs that ``weights_only`` reads.
* ``timm``: a folder ``timm/`` that plain timm (classification, ``timm.create_model("local-dir:<folder>",
  pretrained=True)``) or segmentation_models_pytorch (``smp.from_pretrained(<folder>)``) opens without
  finetune, + ``finetune.json`` inside (finetune.export.folders: layout, upload to the Hugging Face Hub).
* ``torchscript`` (deprecated: use ``pt2``): ``model.torchscript.pt`` (``torch.jit.trace``) +
  ``model.torchscript.pt.json``. torch 2.14 deprecates ``torch.jit.trace``, ``torch.jit.save`` and
  ``torch.jit.load`` (each raises a FutureWarning "... is deprecated. Please switch to ``torch.export``");
  the format still works, with those warnings hidden. A file without TorchScript code (a ``torch.save``
  pickle renamed) is refused before ``torch.jit.load`` reads it.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.export.pt2_archive import constants as pt2

from finetune.export.bundle import REEXPORT, ModelBundle, metadata
from finetune.export.folders import load_folder
from finetune.export.tensors import rebuild, write_safetensors
from finetune.models.weights import sha256_file
from finetune.run.errors import FinetuneError
from finetune.run.task import Task

log = logging.getLogger(__name__)

ONNX_OPSET = 17
_QUIET = (DeprecationWarning, FutureWarning, torch.jit.TracerWarning)

Forward = Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> logits


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporters' deprecation and tracer chatter (the parity gate is the real check)."""
    with warnings.catch_warnings():
        for category in _QUIET:
            warnings.simplefilter("ignore", category)
        yield


def _example_input(bundle: ModelBundle) -> torch.Tensor:
    return torch.zeros(2, bundle.preprocessing.in_chans, *bundle.preprocessing.size)


# --- writers -------------------------------------------------------------------------------------


def write_head(bundle: ModelBundle, path: Path) -> dict:
    return write_safetensors(bundle, path, head_only=True)


def write_model(bundle: ModelBundle, path: Path) -> dict:
    return write_safetensors(bundle, path, head_only=False)


def write_onnx(bundle: ModelBundle, path: Path) -> dict:
    """Dynamic batch; for dense tasks (segmentation) also dynamic height and width (multiples of 32)."""
    axes = {0: "batch", 2: "height", 3: "width"} if bundle.task.dense else {0: "batch"}
    with _quiet():
        torch.onnx.export(
            bundle.model.eval(),
            (_example_input(bundle),),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": axes, "logits": axes},
        )
    # the graph's tensor names; "input" is metadata()'s preprocessing contract
    return metadata(bundle, "onnx") | {
        "sha256": sha256_file(path),
        "opset": ONNX_OPSET,
        "input_name": "input",
        "output_name": "logits",
    }


def write_pt2(bundle: ModelBundle, path: Path) -> dict:
    """``torch.export`` with a dynamic batch axis; for dense tasks (segmentation) also dynamic height
    and width: multiples of 32 from 64 up (torch.export specializes a size-1 feature map at stride 32)."""
    example = _example_input(bundle)
    axes = {0: torch.export.Dim("batch", min=1)}
    if bundle.task.dense:
        axes |= {2: 32 * torch.export.Dim("height32", min=2), 3: 32 * torch.export.Dim("width32", min=2)}
        example = torch.zeros(*example.shape[:2], *(max(64, side) for side in example.shape[2:]))
    program = torch.export.export(bundle.model.eval(), (example,), dynamic_shapes=(axes,))
    with open(path, "wb") as f:  # a file object: torch warns about a path not ending in .pt2 (the temp file)
        torch.export.save(program, f)
    return metadata(bundle, "pt2") | {"sha256": sha256_file(path), "torch": torch.__version__}


def write_torchscript(bundle: ModelBundle, path: Path) -> dict:
    log.warning("format=torchscript is deprecated (torch deprecates torch.jit.trace / save / load): use format=pt2")
    with _quiet():
        traced = torch.jit.trace(bundle.model.eval(), _example_input(bundle))
        torch.jit.save(traced, str(path))
    return metadata(bundle, "torchscript") | {"sha256": sha256_file(path)}


# --- loaders: (file, its metadata, its task, backbone weights file, allow_unverified) -> forward ----


@dataclass(frozen=True)
class TorchForward:
    """A numpy-in, numpy-out forward of a torch model (inference mode); ``module`` is the model."""

    module: nn.Module

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).float().numpy()


def torch_forward(model: nn.Module) -> Forward:
    """A numpy-in, numpy-out forward of a torch model (inference mode)."""
    return TorchForward(model)


def load_safetensors(path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool) -> Forward:
    return torch_forward(rebuild(path, metadata, task, weights, allow_unverified))


def load_onnx(path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool) -> Forward:
    try:
        import onnxruntime  # optional: the "export" extra
    except ModuleNotFoundError:
        raise FinetuneError("ONNX exports need onnxruntime: pip install 'finetune[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def load_torchscript(path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool) -> Forward:
    check_torchscript_archive(path)
    with _quiet():
        return torch_forward(torch.jit.load(str(path), map_location="cpu").eval())


def load_pt2(path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool) -> Forward:
    check_pt2_archive(path)
    with open(path, "rb") as f:  # as in write_pt2
        program = torch.export.load(f)
    return torch_forward(program.module())  # eval mode was captured at export


def load_folder_export(path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool) -> Forward:
    return torch_forward(load_folder(path, metadata))


def supported(bundle: ModelBundle) -> None:
    """Every model can be written in the formats without a ``check``."""


# --- archives checked before torch reads them (no pickle is opened before these checks) ----------

_TORCHSCRIPT_MEMBERS = ("data.pkl", "constants.pkl", "version")
# every member torch.export.save writes for one model ("model"): raw tensors, JSON, and the sample inputs
_PT2_MEMBERS = re.compile(
    "|".join(
        [
            *(
                re.escape(name)
                for name in (
                    pt2.ARCHIVE_FORMAT_PATH,
                    pt2.ARCHIVE_VERSION_PATH,
                    "byteorder",
                    ".data/version",
                    ".data/serialization_id",
                    pt2.MODELS_FILENAME_FORMAT.format("model"),
                    pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format("model"),
                    pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format("model"),
                    pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format("model"),
                )
            ),
            re.escape(pt2.WEIGHTS_DIR + pt2.WEIGHT_FILENAME_PREFIX) + r"\d+",
            re.escape(pt2.CONSTANTS_DIR + pt2.TENSOR_CONSTANT_FILENAME_PREFIX) + r"\d+",
            re.escape(pt2.EXTRA_DIR) + r"[^/]+",
        ]
    )
)


def _not_export(path: Path, kind: str, reason: str) -> FinetuneError:
    return FinetuneError(
        f"{path} is not a {kind} export finetune writes: {reason}; it was not loaded (nothing "
        f"in it was unpickled); {REEXPORT}"
    )


def _archive_members(path: Path, kind: str) -> dict[str, str]:
    """{name inside the archive's root folder: full name} of the zip archive ``path``."""
    if not zipfile.is_zipfile(path):
        raise _not_export(path, kind, "not a zip archive (a pickle, or another file renamed)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if len({name.split("/", 1)[0] for name in names}) != 1 or any("/" not in name for name in names):
        raise _not_export(path, kind, "its files are not in one root folder")
    return {name.split("/", 1)[1]: name for name in names}


def check_torchscript_archive(path: Path) -> None:
    """``path`` is a TorchScript archive (code, constants and data), not e.g. a ``torch.save`` pickle
    renamed to ``.pt``; FinetuneError before ``torch.jit.load`` reads anything."""
    members = _archive_members(path, "TorchScript")
    missing = [name for name in _TORCHSCRIPT_MEMBERS if name not in members]
    if missing or not any(name.startswith("code/") for name in members):
        raise _not_export(
            path,
            "TorchScript",
            f"it has no TorchScript code ({', '.join(missing) or 'code/'} "
            "missing): a torch.save pickle renamed to .pt, or another zip archive",
        )


def check_pt2_archive(path: Path) -> None:
    """``path`` holds only what ``torch.export.save`` writes for one model, with no pickled weight or
    constant and sample inputs that ``weights_only`` reads (``torch.export.load`` unpickles those without
    restriction otherwise); FinetuneError before torch reads anything."""
    members = _archive_members(path, "pt2")
    other = sorted(name for name in members if not _PT2_MEMBERS.fullmatch(name))
    if other or pt2.ARCHIVE_FORMAT_PATH not in members:
        found = (
            f"it holds {other[0]}, which torch.export.save does not write for one model"
            if other
            else f"it has no {pt2.ARCHIVE_FORMAT_PATH}"
        )
        raise _not_export(path, "pt2", f"{found} (a torch.save pickle renamed to .pt2, or another archive)")
    with zipfile.ZipFile(path) as archive:
        if archive.read(members[pt2.ARCHIVE_FORMAT_PATH]) != pt2.ARCHIVE_FORMAT_VALUE.encode():
            raise _not_export(path, "pt2", f"its {pt2.ARCHIVE_FORMAT_PATH} is not {pt2.ARCHIVE_FORMAT_VALUE!r}")
        for config in (pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_CONFIG_FILENAME_FORMAT):
            _check_payloads(path, archive, members.get(config.format("model")))
        _check_sample_inputs(path, archive, members.get(pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format("model")))


def _check_payloads(path: Path, archive: zipfile.ZipFile, config: str | None) -> None:
    """No weight or constant of a pt2 archive's payload ``config`` is stored as a pickle."""
    if config is None:
        return
    try:
        entries = json.loads(archive.read(config))["config"]
        pickled = sorted(name for name, entry in entries.items() if entry.get("use_pickle", True))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _not_export(path, "pt2", f"its {config.split('/', 1)[1]} is not the JSON torch.export writes") from None
    if pickled:
        raise _not_export(path, "pt2", f"its tensor {pickled[0]!r} is pickled ({len(pickled)} pickled)")


def _check_sample_inputs(path: Path, archive: zipfile.ZipFile, member: str | None) -> None:
    """The sample inputs of a pt2 archive hold only tensors and containers (``weights_only`` reads them)."""
    if member is None:
        return
    try:
        torch.load(io.BytesIO(archive.read(member)), map_location="cpu", weights_only=True)
    except Exception:  # anything weights_only refuses, or no torch file at all
        raise _not_export(path, "pt2", "its sample inputs hold pickled objects other than tensors") from None
