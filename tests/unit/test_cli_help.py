"""The ``finetune`` command's own words, in this process: did-you-mean for misspelt keys and commands, ``--version``,
the recipes in ``finetune train --help`` (all before torch is needed)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

from finetune.commands.train_help import recipe_summaries
from finetune.resources import recipes_dir
from finetune.version import __version__

from ..helpers import assert_refused, cli_in_process


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["datset=x"], "datset=x: not a key of the config; did you mean dataset?"),
        (
            ["datset.root=x"],
            "datset.root=x: not a key of the config; did you mean dataset.root? (a key of dataset=imagefolder|",
        ),
        (
            ["dataset.roots=x"],
            "dataset.roots=x: not a key of the config; did you mean dataset.root? (a key of dataset=imagefolder|",
        ),
        (["datset.imag_size=3"], "datset.imag_size=3: not a key of the config; did you mean dataset.image_size?"),
        (["schedul.phases.0.lrr=1"], "did you mean schedule.phases.0.lr?"),
        (["+clasification=digits"], "+clasification=digits: not a key of the config; did you mean classification?"),
        (["segmentaton.loss=dice"], "did you mean segmentation.loss? (a key of task=segmentation)"),
        (["exprot"], "unknown command 'exprot'; did you mean export? commands: train, plan,"),
        (["export", "rn=x"], "finetune export: unexpected argument 'rn=x'; did you mean run=x? keys: run, format"),
    ],
)
def test_misspellings_get_one_line_with_the_right_suggestion(tmp_path, args, line):
    assert_refused(cli_in_process(*args, cwd=tmp_path), line)


def test_a_word_nothing_resembles_lists_the_commands(tmp_path):
    out = cli_in_process("xyzzy", cwd=tmp_path)
    assert_refused(out, "unknown command 'xyzzy'; commands: train, plan,")
    assert "did you mean" not in out.stderr


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_finetune_and_its_main_libraries_without_importing_them(flag):
    code = f"import sys; from finetune.cli import main; code = main([{flag!r}]); print(code, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0] == f"finetune {__version__}", out.stdout + out.stderr
    assert lines[-1] == "0 False"
    for package in ("torch", "torchvision", "timm", "lightning"):
        assert f"{package} {importlib.metadata.version(package)}" in lines[1:-1]


def test_recipe_summaries_are_one_line_per_file():
    files = sorted(recipes_dir().glob("*/*.yaml"))
    summaries = recipe_summaries()
    assert [name for name, _ in summaries] == [f"+{p.parent.name}={p.stem}" for p in files]
    for (name, text), path in zip(summaries, files):
        assert text and "\n" not in text and len(text) <= 80, name
        assert f"# {text}" in path.read_text().splitlines()[:3], name


def test_train_help_lists_every_recipe(tmp_path):
    out = cli_in_process("train", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "== Recipes ==" in text and "dataset: csv, dicom_folder, digits" in text  # the groups are still there
    recipes = text[text.index("== Recipes ==") : text.index("== Config ==")]
    for name, summary in recipe_summaries():
        assert f"  {name}" in recipes and summary in recipes
    assert "+classification=digits" in recipes and "+medical=blood" in recipes and "+segmentation=camvid" in recipes
    assert "finetune train --help" in cli_in_process("--help", cwd=tmp_path).stdout
    assert "recipes" in cli_in_process("--help", cwd=tmp_path).stdout


def test_backbones_lists_matching_models_with_size_and_offline_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet18.safetensors").write_bytes(b"")  # what resolve_weights would find first
    out = cli_in_process("backbones", "resnet18", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = {line.split()[-1]: line.split()[:-1] for line in lines[1:-1]}
    assert rows["resnet18"] == ["cache", "224"]  # timm's default tag, as configs write it
    assert rows["resnet18.a3_in1k"] == ["-", "160"]  # trained at 160 px, not on this machine
    assert "resnet18.a1_in1k" not in rows and all("resnet18" in name for name in rows)
    assert lines[-1].endswith("with weights on this machine: 1")

    offline = cli_in_process("backbones", "resnet18", "--offline", cwd=tmp_path)
    assert [line.split()[-1] for line in offline.stdout.splitlines()[1:-1]] == ["resnet18"]
    assert cli_in_process("backbones", "filter=resnet18", "offline=true", cwd=tmp_path).stdout == offline.stdout


def test_backbones_filter_matching_nothing_gets_did_you_mean(tmp_path):
    out = cli_in_process("backbones", "resnt", cwd=tmp_path)
    assert_refused(out, "no pretrained timm model matches 'resnt'; did you mean resnet")


@pytest.mark.parametrize("args", [["--help"], ["plan", "--help"]])
def test_help_into_a_closed_pipe_exits_quietly(args):
    """``finetune --help | head -1``: the reader is gone before the help is written; no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone: every write fails with EPIPE
    code = f"import sys; from finetune.cli import main; sys.exit(main({args!r}))"
    with os.fdopen(write, "wb") as stdout:
        out = subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=99)
    assert out.stderr == "" and out.returncode == 141
