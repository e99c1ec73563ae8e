"""The counting table must reproduce the lecture's LeNet-5 numbers and add up on timm models."""

from __future__ import annotations

import csv
import io

import pytest
import timm
import torch
from rich.console import Console
from torch import nn

from finetune.models.summary import (
    LayerCount,
    StageCount,
    count_layers,
    render_table,
    roll_up,
    to_markdown,
    totals,
    write_csv,
)


def lenet5() -> nn.Sequential:
    """LeNet-5 for 32x32 gray images, C3 connected to all six S2 maps."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(),  # C1
        nn.MaxPool2d(2),  # S2
        nn.Conv2d(6, 16, 5), nn.Tanh(),  # C3
        nn.AvgPool2d(2),  # S4
        nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(),  # F5
        nn.Dropout(0.1),
        nn.Linear(120, 84), nn.Tanh(),  # F6
        nn.Linear(84, 10),  # output
    )


# name: (kind, output shape, units, connections, weights, connections+bias, weights+bias)
LENET = {
    "0": ("Conv2d", (6, 28, 28), 4704, 117_600, 150, 122_304, 156),
    "2": ("MaxPool2d", (6, 14, 14), 1176, 4704, 0, 4704, 0),
    "3": ("Conv2d", (16, 10, 10), 1600, 240_000, 2400, 241_600, 2416),
    "5": ("AvgPool2d", (16, 5, 5), 400, 1600, 0, 1600, 0),
    "7": ("Linear", (120,), 120, 48_000, 48_000, 48_120, 48_120),
    "10": ("Linear", (84,), 84, 10_080, 10_080, 10_164, 10_164),
    "12": ("Linear", (10,), 10, 840, 840, 850, 850),
}


@pytest.fixture(scope="module")
def lenet_rows() -> list[LayerCount]:
    return count_layers(lenet5(), (1, 32, 32))


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return timm.create_model("resnet10t", pretrained=False, num_classes=5)


def as_tuple(row: LayerCount) -> tuple:
    return (row.kind, row.output_shape, row.units, row.connections, row.weights,
            row.connections_with_bias, row.weights_with_bias)


def test_lenet5_matches_the_lecture(lenet_rows: list[LayerCount]) -> None:
    assert {r.name: as_tuple(r) for r in lenet_rows} == LENET
    assert [r.name for r in lenet_rows] == list(LENET)  # forward order, no activation rows


def test_lenet5_totals(lenet_rows: list[LayerCount]) -> None:
    assert totals(lenet_rows) == {
        "units": 8094,
        "weights": 61_470,
        "weights_with_bias": 61_706,
        "connections": 422_824,
        "connections_with_bias": 429_342,
    }
    assert totals(lenet_rows)["weights_with_bias"] == sum(
        p.numel() for p in lenet5().parameters()
    )


def test_depthwise_and_grouped_conv() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: K²·I·J/groups = 9·8·8/8
        nn.Conv2d(8, 4, 1, groups=2, bias=False),
    )
    depthwise, grouped = count_layers(model, (8, 10, 10))
    assert (depthwise.units, depthwise.weights, depthwise.connections) == (800, 72, 7200)
    assert (depthwise.weights_with_bias, depthwise.connections_with_bias) == (80, 8000)
    assert (grouped.units, grouped.weights, grouped.connections) == (400, 16, 1600)
    assert (grouped.weights_with_bias, grouped.connections_with_bias) == (16, 1600)


def test_norm_and_adaptive_pooling() -> None:
    model = nn.Sequential(
        nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.LayerNorm(2, elementwise_affine=False),
    )
    norm, pool, plain = count_layers(model, (6, 4, 4))
    assert (norm.units, norm.weights, norm.weights_with_bias) == (96, 6, 12)
    assert (norm.connections, norm.connections_with_bias) == (96, 192)
    assert (pool.units, pool.connections, pool.weights, pool.trainable) == (24, 96, 0, None)
    assert (plain.units, plain.weights, plain.connections, plain.trainable) == (24, 0, 24, None)


def test_transposed_conv_and_timm_cat_pool() -> None:
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 2, 2, stride=2),
        timm.layers.SelectAdaptivePool2d(pool_type="catavgmax", flatten=True),
    )
    up, pool = count_layers(model, (4, 3, 3))
    assert (up.output_shape, up.units, up.weights, up.weights_with_bias) == ((2, 6, 6), 72, 32, 34)
    assert (up.connections, up.connections_with_bias) == (72 * 4, 72 * 5)  # 4 inputs per output
    assert (pool.output_shape, pool.units, pool.connections) == ((4, 1, 1), 4, 2 * 72)  # avg + max


def test_layer_with_only_its_bias_trainable_counts_as_trainable() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    assert count_layers(model, (1, 1, 3))[0].trainable is True


def test_repeated_module_is_one_row_with_summed_activity() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    (row,) = count_layers(Twice(), (2, 4, 4))
    assert (row.calls, row.output_shape, row.units) == (2, (2, 4, 4), 64)
    assert (row.weights, row.weights_with_bias) == (36, 38)
    assert (row.connections, row.connections_with_bias) == (2 * 32 * 18, 2 * 32 * 19)


def test_timm_weights_add_up_to_the_parameters(resnet: nn.Module) -> None:
    rows = count_layers(resnet, (3, 64, 64))
    assert totals(rows)["weights_with_bias"] == sum(p.numel() for p in resnet.parameters())
    stem = rows[0]
    assert (stem.name, stem.output_shape) == ("conv1.0", (24, 32, 32))
    assert stem.connections == 24 * 32 * 32 * 3 * 3 * 3
    pool = next(r for r in rows if r.name == "global_pool.pool")
    assert (pool.units, pool.connections) == (512, 512 * 2 * 2)
    assert rows[-1].name == "fc" and rows[-1].output_shape == (5,)
    assert not any(r.kind in {"ReLU", "Identity", "Flatten"} for r in rows)


def test_train_state_and_grad_flags_are_restored(resnet: nn.Module) -> None:
    resnet.train()
    resnet.layer1.eval()
    count_layers(resnet, (3, 64, 64))
    assert resnet.training and resnet.layer2[0].bn1.training
    assert not resnet.layer1.training and not resnet.layer1[0].bn1.training
    assert all(p.grad is None for p in resnet.parameters())


def stage_of(name: str) -> str:
    return name.split(".")[0]


def test_trainable_flags_and_roll_up() -> None:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    for module in (model.conv1, model.bn1, model.layer1):
        module.requires_grad_(False)
    model.layer2[0].conv1.requires_grad_(False)
    rows = count_layers(model, (3, 64, 64))
    flags = {r.name: r.trainable for r in rows}
    assert flags["conv1.0"] is False and flags["layer1.0.bn2"] is False
    assert flags["layer2.0.conv1"] is False and flags["layer2.0.bn1"] is True
    assert flags["global_pool.pool"] is None and flags["fc"] is True

    stages = roll_up(rows, stage_of)
    assert [(s.name, s.trainable) for s in stages] == [
        ("conv1", "frozen"), ("bn1", "frozen"), ("maxpool", "-"), ("layer1", "frozen"),
        ("layer2", "mixed"), ("layer3", "trainable"), ("layer4", "trainable"),
        ("global_pool", "-"), ("fc", "trainable"),
    ]
    assert totals(stages) == totals(rows)
    assert sum(s.layers for s in stages) == len(rows)
    frozen = sum(s.weights_with_bias for s in stages if s.trainable == "frozen")
    assert frozen == sum(
        p.numel() for m in (model.conv1, model.bn1, model.layer1) for p in m.parameters()
    )


def parse_markdown(text: str) -> list[list[str]]:
    lines = text.strip().splitlines()
    assert set(lines[1]) <= set("|-:")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_markdown_round_trip(lenet_rows: list[LayerCount]) -> None:
    header, *body, total = parse_markdown(to_markdown(lenet_rows))
    assert header[:4] == ["Layer", "Type", "Output", "Units"]
    assert body[0] == ["0", "Conv2d", "6x28x28", "4,704", "150", "156", "117,600", "122,304", "yes"]
    assert [row[0] for row in body] == list(LENET)
    assert total[0] == "**Total**" and total[header.index("Connections")] == "422,824"


def test_markdown_of_stages(lenet_rows: list[LayerCount]) -> None:
    stages = roll_up(lenet_rows, lambda name: "conv" if name in {"0", "2", "3", "5"} else "fc")
    header, conv, fc, total = parse_markdown(to_markdown(stages))
    assert header[:2] == ["Stage", "Layers"]
    assert conv[:3] == ["conv", "4", "7,880"] and fc[:3] == ["fc", "3", "214"]
    assert total[:3] == ["**Total**", "7", "8,094"]


def test_csv_round_trip(lenet_rows: list[LayerCount], tmp_path) -> None:
    path = tmp_path / "out" / "layers.csv"
    write_csv(lenet_rows, path)
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    parsed = [
        LayerCount(
            name=r["name"], kind=r["kind"],
            output_shape=tuple(int(d) for d in r["output_shape"].split("x")),
            trainable={"True": True, "False": False, "": None}[r["trainable"]],
            **{k: int(r[k]) for k in ("units", "weights", "weights_with_bias", "connections",
                                      "connections_with_bias", "calls")},
        )
        for r in read
    ]
    assert parsed == lenet_rows


def test_csv_of_stages(lenet_rows: list[LayerCount], tmp_path) -> None:
    stages = roll_up(lenet_rows, lambda name: "all")
    write_csv(stages, tmp_path / "stages.csv")
    with (tmp_path / "stages.csv").open(newline="") as handle:
        (read,) = list(csv.DictReader(handle))
    assert read["name"] == "all" and read["trainable"] == "trainable"
    assert int(read["connections"]) == 422_824 and int(read["layers"]) == 7
    assert isinstance(stages[0], StageCount)


def test_rich_table_has_totals_and_separators(lenet_rows: list[LayerCount]) -> None:
    table = render_table(lenet_rows, "LeNet-5")
    assert table.row_count == len(lenet_rows) + 1
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    text = console.file.getvalue()
    assert "LeNet-5" in text and "117,600" in text and "422,824" in text
    assert text.index("Total") > text.index("117,600")
