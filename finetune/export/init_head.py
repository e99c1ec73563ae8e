"""Re-targeting (``init_from``): start a new head from the rows of the classes an earlier export or
run already knows, matched by class name."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from finetune.export.tensors import embedded_metadata
from finetune.models.freezing import FineTuneModel
from finetune.run.errors import FinetuneError
from finetune.run.records import find_checkpoint, model_state


def _head_source(source: Path) -> tuple[str, list[str], dict[str, torch.Tensor]]:
    """(backbone architecture, class names, tensors) of a .safetensors export or a run/checkpoint."""
    if source.suffix == ".safetensors":
        metadata = embedded_metadata(source)
        return metadata["weights"]["model"], metadata["class_names"], load_file(source)
    if source.is_file() and source.suffix != ".ckpt":
        raise FinetuneError(f"init_from={source}: use a .safetensors export, a run directory or a .ckpt")
    run_dir, ckpt = find_checkpoint(source)
    state = model_state(ckpt)
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
        raise FinetuneError(
            f"init_from={source}: its head ({arch}, final layer head.{name} "
            f"{None if weight is None else tuple(weight.shape)}) does not fit this model's "
            f"({own_arch}, {layer.out_features}x{layer.in_features}); use a source trained "
            "with the same backbone and head"
        )
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
