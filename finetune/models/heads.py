"""New classification heads on top of pooled backbone features: the builders of ``finetune.models.HEADS``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from finetune.run.errors import FinetuneError

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def linear_head(in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Dropout (optional) then one linear layer: the lecture's "new last layer"."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


def mlp_head(
    in_features: int, num_classes: int, hidden: Sequence[int] = (512,), dropout: float = 0.2, activation: str = "gelu"
) -> nn.Module:
    """Hidden layers (linear → activation → dropout) then the output layer."""
    if activation not in _ACTIVATIONS:
        raise FinetuneError(f"head.activation={activation!r}: choose one of {', '.join(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, int(size)), _ACTIVATIONS[activation]()]
        layers += [nn.Dropout(dropout)] if dropout else []
        width = int(size)
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
