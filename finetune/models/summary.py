"""The lecture's counting table (units, weights, connections) for any network.

One forward pass on a zero tensor with forward hooks on every module that computes something:
convolutions (incl. transposed), linear layers, pooling (incl. adaptive/global pooling and
timm's fast global pools), normalization layers and any module that defines
``count_connections(input, output)``. Pure activations, dropout, identity and
flatten get no row. Work done outside such modules (attention matmuls, residual adds,
functional pooling such as a ViT's token mean) is not counted.

Counting rules (per layer, batch of one):

* units: output activations, e.g. Ŵ·Ĥ·I for a conv with I output maps.
* conv: K²·I·J/groups weights, units·K²·J/groups connections (= Ŵ·Ĥ·K²·I·J/groups);
  transposed conv: input activations · K²·I/groups connections.
* linear: M·N weights and connections (times the number of tokens for token inputs).
* pooling: no weights, units · window-area connections; adaptive/global pooling has window =
  input area / output area, so it has one connection per input activation.
* normalization: weights = affine scale, weights with bias = all affine parameters;
  connections = units (one scale per activation).
* biases add their own count to the weights and one connection per output unit.

Modules called more than once (shared layers) get one row: units and connections are summed
over the calls (``calls`` says how many), weights are counted once, ``output_shape`` is that of
the first call. Rows appear in the order of each module's first call, so weights with bias
summed over all rows equal the parameters of the counted modules.

Counting works on the meta device too (shapes only), which makes large models free to count.
The ``finetune summary`` command lives in ``finetune.commands.summary``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from timm.layers import adaptive_avgmax_pool as timm_pool
from timm.layers import norm as timm_norm
from timm.layers import norm_act as timm_norm_act
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.pooling import (
    _AdaptiveAvgPoolNd,
    _AdaptiveMaxPoolNd,
    _AvgPoolNd,
    _LPPoolNd,
    _MaxPoolNd,
)


@dataclass(frozen=True)
class LayerCount:
    """One counted layer; counts exclude biases unless the field says ``with_bias``.

    ``trainable`` is True if any of the layer's own parameters requires grad, None if it has
    no parameters; ``calls`` is how many forward calls the row sums.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    units: int
    weights: int
    weights_with_bias: int
    connections: int
    connections_with_bias: int
    trainable: bool | None
    calls: int = 1


@dataclass(frozen=True)
class StageCount:
    """Layer counts summed over one stage; ``trainable`` is trainable/frozen/mixed/-."""

    name: str
    layers: int
    units: int
    weights: int
    weights_with_bias: int
    connections: int
    connections_with_bias: int
    trainable: str


Rows = Sequence[LayerCount] | Sequence[StageCount]

_SUMMED = ("units", "weights", "weights_with_bias", "connections", "connections_with_bias")


def _types(module: Any, *names: str) -> tuple[type, ...]:
    """The classes among ``names`` that ``module`` defines (timm versions differ)."""
    return tuple(getattr(module, n) for n in names if hasattr(module, n))


_DENSE = (nn.Linear, _ConvNd)
_POOL = (_MaxPoolNd, _AvgPoolNd, _LPPoolNd)
_GLOBAL_POOL = (_AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd) + _types(
    timm_pool,
    "FastAdaptiveAvgPool",
    "FastAdaptiveMaxPool",
    "FastAdaptiveAvgMaxPool",
    "AdaptiveAvgMaxPool2d",
)
_CAT_POOL = _types(timm_pool, "FastAdaptiveCatAvgMaxPool", "AdaptiveCatAvgMaxPool2d")
_NORM = (
    (_BatchNorm, _InstanceNorm, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)
    + _types(
        timm_norm,
        "RmsNorm",
        "RmsNormFp32",
        "RmsNorm2d",
        "RmsNorm2dFp32",
        "SimpleNorm",
        "SimpleNormFp32",
        "SimpleNorm2d",
        "SimpleNorm2dFp32",
    )
    + _types(timm_norm_act, "FrozenBatchNormAct2d")
)
_COUNTED = _DENSE + _POOL + _GLOBAL_POOL + _CAT_POOL + _NORM


def _first_tensor(value: Any) -> Tensor:
    """The tensor itself, or the first tensor of a tuple/list (e.g. pooling with indices)."""
    if isinstance(value, Tensor):
        return value
    return next(v for v in value if isinstance(v, Tensor))


def _window_area(kernel_size: int | tuple[int, ...], spatial_dims: int) -> int:
    """Number of inputs one pooling output reads."""
    if isinstance(kernel_size, int):
        return kernel_size**spatial_dims
    return math.prod(kernel_size)


def _counts_itself(module: nn.Module) -> bool:
    """A module with its own ``count_connections(input, output) -> int`` (multiply-adds of one
    call without bias), e.g. LeNet-5's trainable subsampling in ``finetune.models.papers``."""
    return callable(getattr(module, "count_connections", None))


def _connections(module: nn.Module, inp: Tensor, out: Tensor) -> int:
    """Multiply-adds (without bias) of one call."""
    if _counts_itself(module):
        return int(module.count_connections(inp, out))
    if isinstance(module, _ConvTransposeNd):
        return inp.numel() * module.weight[0].numel()
    if isinstance(module, _DENSE):
        return out.numel() * module.weight[0].numel()
    if isinstance(module, _POOL):
        return out.numel() * _window_area(module.kernel_size, out.dim() - 2)
    if isinstance(module, _CAT_POOL):
        return 2 * inp.numel()
    if isinstance(module, _GLOBAL_POOL):
        return inp.numel()
    return out.numel()


def _bias_size(module: nn.Module) -> int:
    """Size of the module's own ``bias`` parameter (0 if it has none)."""
    bias = getattr(module, "bias", None)
    return bias.numel() if isinstance(bias, nn.Parameter) else 0


def _trainable(module: nn.Module) -> bool | None:
    """True if any own parameter requires grad, None if the module has no parameters."""
    flags = [p.requires_grad for p in module.parameters(recurse=False)]
    return any(flags) if flags else None


def _count_call(name: str, module: nn.Module, inp: Tensor, out: Tensor) -> LayerCount:
    """The row for one call of a counted module."""
    with_bias = sum(p.numel() for p in module.parameters(recurse=False))
    bias = _bias_size(module)
    units = out.numel()
    connections = _connections(module, inp, out)
    return LayerCount(
        name=name,
        kind=type(module).__name__,
        output_shape=tuple(out.shape[1:]),
        units=units,
        weights=with_bias - bias,
        weights_with_bias=with_bias,
        connections=connections,
        connections_with_bias=connections + (units if bias else 0),
        trainable=_trainable(module),
    )


def _merge_call(first: LayerCount, again: LayerCount) -> LayerCount:
    """Add a repeated call's activity to a module's row; weights stay counted once."""
    return replace(
        first,
        units=first.units + again.units,
        connections=first.connections + again.connections,
        connections_with_bias=first.connections_with_bias + again.connections_with_bias,
        calls=first.calls + 1,
    )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every submodule's own train/eval flag restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _probe(model: nn.Module, input_shape: tuple[int, int, int]) -> Tensor:
    """A zero batch of one on the model's device, in its floating dtype."""
    ref = next(model.parameters(), None)
    if ref is None or not ref.is_floating_point():
        return torch.zeros(1, *input_shape)
    return torch.zeros(1, *input_shape, device=ref.device, dtype=ref.dtype)


def count_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerCount]:
    """Count every computing layer of ``model`` for one (C, H, W) input, in forward order."""
    rows: dict[str, LayerCount] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            row = _count_call(name, module, _first_tensor(args), _first_tensor(output))
            rows[name] = _merge_call(rows[name], row) if name in rows else row

        return hook

    handles = [
        module.register_forward_hook(hook_for(name or type(module).__name__))
        for name, module in model.named_modules()
        if isinstance(module, _COUNTED) or _counts_itself(module)
    ]
    try:
        with _eval_mode(model), torch.no_grad():
            model(_probe(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return list(rows.values())


def _stage_label(rows: list[LayerCount]) -> str:
    """trainable / frozen / mixed over the rows that have parameters, '-' if none do."""
    flags = {r.trainable for r in rows if r.trainable is not None}
    if not flags:
        return "-"
    if len(flags) == 2:
        return "mixed"
    return "trainable" if flags == {True} else "frozen"


def roll_up(rows: Sequence[LayerCount], stage_of: Callable[[str], str]) -> list[StageCount]:
    """Sum layer rows per stage (``stage_of(layer name)``), stages in first-appearance order."""
    groups: dict[str, list[LayerCount]] = {}
    for row in rows:
        groups.setdefault(stage_of(row.name), []).append(row)
    return [
        StageCount(name=stage, layers=len(members), trainable=_stage_label(members), **totals(members))
        for stage, members in groups.items()
    ]


def totals(rows: Rows) -> dict[str, int]:
    """Units, weights and connections (with and without bias) summed over rows or stages."""
    return {key: sum(getattr(r, key) for r in rows) for key in _SUMMED}


@dataclass(frozen=True)
class _Column:
    header: str
    get: Callable[[Any], Any]
    numeric: bool = True


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


_COUNT_COLUMNS = [
    _Column("Units", lambda r: r.units),
    _Column("Weights", lambda r: r.weights),
    _Column("Weights+bias", lambda r: r.weights_with_bias),
    _Column("Connections", lambda r: r.connections),
    _Column("Connections+bias", lambda r: r.connections_with_bias),
]
_LAYER_COLUMNS = [
    _Column("Layer", lambda r: r.name, numeric=False),
    _Column("Type", lambda r: r.kind, numeric=False),
    _Column("Output", lambda r: _shape(r.output_shape), numeric=False),
    *_COUNT_COLUMNS,
    _Column("Trainable", lambda r: _flag(r.trainable), numeric=False),
]
_STAGE_COLUMNS = [
    _Column("Stage", lambda r: r.name, numeric=False),
    _Column("Layers", lambda r: r.layers),
    *_COUNT_COLUMNS,
    _Column("Trainable", lambda r: r.trainable, numeric=False),
]


def _columns(rows: Rows) -> list[_Column]:
    """Stage columns for StageCount rows, layer columns otherwise."""
    return _STAGE_COLUMNS if rows and isinstance(rows[0], StageCount) else _LAYER_COLUMNS


def _cells(rows: Rows) -> tuple[list[_Column], list[list[str]]]:
    """Formatted cells (thousands separators), totals row last."""
    columns = _columns(rows)
    body = [[f"{c.get(r):,}" if c.numeric else str(c.get(r)) for c in columns] for r in rows]
    total = [f"{sum(c.get(r) for r in rows):,}" if c.numeric else "" for c in columns]
    return columns, [*body, ["Total", *total[1:]]]


def render_table(rows_or_stages: Rows, title: str) -> Table:
    """A rich table of layers or stages with a totals row at the bottom."""
    columns, cells = _cells(rows_or_stages)
    table = Table(title=title)
    for column in columns:
        table.add_column(column.header, justify="right" if column.numeric else "left")
    for line in cells[:-1]:
        table.add_row(*line)
    table.add_section()
    table.add_row(*cells[-1], style="bold")
    return table


def to_markdown(rows_or_stages: Rows) -> str:
    """A GitHub markdown table of layers or stages with a bold totals row at the bottom."""
    columns, cells = _cells(rows_or_stages)
    cells[-1][0] = "**Total**"
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|",
        *("| " + " | ".join(line) + " |" for line in cells),
    ]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    """Shapes as 6x28x28, None as an empty cell, everything else unchanged."""
    if isinstance(value, tuple):
        return _shape(value)
    return "" if value is None else value


def write_csv(rows_or_stages: Rows, path: str | os.PathLike[str]) -> None:
    """Write the raw dataclass fields (no separators, no totals row) to ``path``."""
    stages = bool(rows_or_stages) and isinstance(rows_or_stages[0], StageCount)
    names = [f.name for f in fields(StageCount if stages else LayerCount)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows([_csv_value(getattr(r, n)) for n in names] for r in rows_or_stages)
