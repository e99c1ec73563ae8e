"""The export formats: one registry entry per format, with its file name, parity tolerance, writer
and loader. Adding a format is one writer, one loader and one line in ``FORMATS``.

* ``head``: ``head.safetensors``, only the tensors that differ from the pretrained backbone (the new
  head and every changed backbone tensor, BatchNorm buffers included) plus metadata (finetune.export.tensors).
* ``safetensors``: ``model.safetensors``, every tensor plus the same metadata (no pretrained weights
  needed to load it).
* ``onnx``: ``model.onnx`` (opset 17, dynamic batch axis; segmentation also dynamic height and width,
  multiples of 32) + ``model.onnx.json`` sidecar.
* ``torchscript``: ``model.torchscript.pt`` (``torch.jit.trace``) + ``model.torchscript.pt.json``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from finetune.errors import FinetuneError
from finetune.export.bundle import ModelBundle, metadata
from finetune.export.tensors import rebuild, write_safetensors
from finetune.models.weights import sha256_file

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


def _write_onnx(bundle: ModelBundle, path: Path) -> dict:
    """Dynamic batch; for dense tasks (segmentation) also dynamic height and width (multiples of 32)."""
    axes = {0: "batch", 2: "height", 3: "width"} if bundle.dense else {0: "batch"}
    with _quiet():
        torch.onnx.export(bundle.model.eval(), (_example_input(bundle),), str(path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": axes, "logits": axes})
    return metadata(bundle, "onnx") | {"sha256": sha256_file(path), "opset": ONNX_OPSET,
                                       "input": "input", "output": "logits"}


def _write_torchscript(bundle: ModelBundle, path: Path) -> dict:
    with _quiet():
        traced = torch.jit.trace(bundle.model.eval(), _example_input(bundle))
        torch.jit.save(traced, str(path))
    return metadata(bundle, "torchscript") | {"sha256": sha256_file(path)}


# --- loaders: (file, its metadata, backbone weights file) -> forward -----------------------------


def torch_forward(model: nn.Module) -> Forward:
    """A numpy-in, numpy-out forward of a torch model (inference mode)."""
    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).float().numpy()
    return forward


def _load_safetensors(path: Path, metadata: dict, weights: str | None) -> Forward:
    return torch_forward(rebuild(path, metadata, weights))


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
        return torch_forward(torch.jit.load(str(path), map_location="cpu").eval())


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One export format: its file name, parity tolerance, writer and loader."""

    name: str
    filename: str
    tolerance: float  # max |Δlogit| allowed by the parity gate, relative to the largest logit (absolute below 1)
    sidecar: bool  # metadata in <file>.json (else embedded in the file)
    write: Callable[[ModelBundle, Path], dict]
    load: Callable[[Path, dict, str | None], Forward]

    def outputs(self, path: Path) -> list[Path]:
        return [path, sidecar_path(path)] if self.sidecar else [path]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("head", "head.safetensors", 1e-6, False, partial(write_safetensors, head_only=True), _load_safetensors),
    Format("safetensors", "model.safetensors", 1e-6, False, partial(write_safetensors, head_only=False),
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


def format_of(path: Path) -> Format:
    """The format of an export file, from its suffix."""
    if path.suffix not in _BY_SUFFIX:
        raise FinetuneError(f"{path} is not a finetune export: expected a .safetensors, .onnx or "
                            "TorchScript .pt file made by finetune export")
    return _BY_SUFFIX[path.suffix]
