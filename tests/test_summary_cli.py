"""``python -m finetune.models.summary``: the counting table of a configured model, frozen stages marked."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import timm

from finetune.models.summary import main

RESNET18 = ["backbone=resnet18", "input_size=64", "backbone.freeze=2"]
FROZEN, TRAINABLE = ("stem", "stage1", "stage2"), ("stage3", "stage4", "head")


def test_cli_writes_stage_csv_with_frozen_stages_and_full_parameter_count(tmp_path):
    out = tmp_path / "stages.csv"
    done = subprocess.run([sys.executable, "-m", "finetune.models.summary", *RESNET18, "format=csv", "per=stage",
                           f"out={out}"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["name"]: row for row in csv.DictReader(out.open())}
    assert list(rows) == [*FROZEN, *TRAINABLE]
    assert all(rows[s]["trainable"] == "frozen" for s in FROZEN)
    assert all(rows[s]["trainable"] == "trainable" for s in TRAINABLE)
    params = sum(p.numel() for p in timm.create_model("resnet18", num_classes=1000).parameters())
    assert sum(int(r["weights_with_bias"]) for r in rows.values()) == params  # only conv, norm, linear
    assert int(rows["head"]["weights_with_bias"]) == 512 * 1000 + 1000
    assert not list(tmp_path.glob(".*.tmp"))


def test_markdown_shows_layers_then_stages_with_totals(capsys):
    assert main([*RESNET18, "format=markdown", "classes=10"]) == 0
    text = capsys.readouterr().out
    assert text.index("## Layers") < text.index("## Stages")
    assert "| backbone.conv1 | Conv2d | 64x32x32 |" in text and "| stage2 |" in text
    assert "| head | 1 | 10 | 5,120 | 5,130 | 5,120 | 5,130 | trainable |" in text
    assert text.count("**Total**") == 2


def test_layer_csv_to_stdout(capsys):
    assert main([*RESNET18, "format=csv", "per=layer"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert rows[0]["name"] == "backbone.conv1" and rows[0]["trainable"] == "False"
    assert rows[-1]["name"] == "head.0" and rows[-1]["trainable"] == "True"


@pytest.mark.parametrize("args, message", [
    (["backbone=resnet18", "backbone.freeze=9"], "has 4 stages"),
    (["backbone=resnet999"], "Available options in 'backbone'"),
    (["backbone.name=resnet18x"], "Did you mean: resnet18"),
    (["backbone=resnet18", "format=csv", "per=both"], "choose per=layer or per=stage"),
    (["backbone=resnet18", "input_size=big"], "input_size='big'"),
])
def test_bad_arguments_give_one_clear_message_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("finetune: error:") and message in err and "Traceback" not in err
