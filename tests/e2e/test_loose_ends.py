"""Loose ends of the user-facing messages: a run trained with ``checkpoints.keep=none`` read back, misspelt
options of the tools that take training overrides, the small-split advice of a run tested on val, and the
report of a ``trainer=debug`` run. In-process and cheap (one report of the session's tiny run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune.cli import main


def _fake_run(root: Path, keep: str, saved: str = "config.yaml", finished: bool = True) -> Path:
    """A finished run directory without its ``checkpoints/``, as ``checkpoints.keep=none`` leaves it: its saved
    config (``saved``: ``config.yaml`` or Hydra's ``.hydra/config.yaml``), metrics.json and an export."""
    run = root / f"run-{keep}"
    (run / saved).parent.mkdir(parents=True)
    (run / saved).write_text(f"task: classification\ncheckpoints:\n  keep: {keep}\n")
    if finished:
        (run / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    (run / "exports").mkdir()
    (run / "exports" / "model.onnx").write_bytes(b"onnx")
    return run


@pytest.mark.parametrize("command", ["export", "report", "explain"])
@pytest.mark.parametrize("saved", ["config.yaml", ".hydra/config.yaml"])
def test_a_keep_none_run_says_its_checkpoints_were_removed_and_where_its_exports_are(tmp_path, capsys, command, saved):
    run = _fake_run(tmp_path, "none", saved)
    extra = [f"inputs={run / 'exports'}"] if command == "explain" else []

    assert main([command, f"run={run}", *extra]) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "checkpoints.keep=none" in lines[0]
    assert f"finetune predict export={run / 'exports'}" in lines[0]
    assert "checkpoints.keep=best" in lines[0]
    assert "expected" not in lines[0]


@pytest.mark.parametrize(("keep", "finished"), [("best", True), ("none", False)])
def test_a_folder_without_checkpoints_of_another_run_is_still_named_not_a_run(tmp_path, capsys, keep, finished):
    run = _fake_run(tmp_path, keep, finished=finished)

    assert main(["report", f"run={run}"]) == 2

    err = capsys.readouterr().err
    assert f"expected {run}/checkpoints/best.ckpt" in err
    assert "keep=none" not in err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["lr-find", "phse=1"], "phase=1"),
        (["lr-find", "+classification=digits", "stps=30"], "steps=30"),
        (["advise", "ot=/tmp/x"], "out=/tmp/x"),
    ],
)
def test_a_misspelt_option_of_a_tool_suggests_the_tools_option(capsys, argv, option):
    assert main(argv) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"did you mean {option}?" in lines[0]


def test_a_misspelt_training_key_given_to_a_tool_still_suggests_the_key(capsys):
    assert main(["lr-find", "+classification=digits", "sed=3"]) == 2

    assert "did you mean seed?" in capsys.readouterr().err


def test_no_test_split_advice_when_the_test_split_is_the_val_split():
    from finetune.training.input_warnings import split_advice

    sizes = {"train": 200, "val": 12, "test": 12}

    own = split_advice(sizes, test_is_val=False)
    shared = split_advice(sizes, test_is_val=True)

    assert [m.split(":")[0] for m in own] == ["the val split has 12 image(s)", "the test split has 12 image(s)"]
    assert [m.split(":")[0] for m in shared] == ["the val split has 12 image(s)"]


def test_the_report_of_a_debug_run_says_so_at_the_top(tiny_finished_run, tmp_path):
    from finetune.report.html import write_report
    from finetune.tasks.registry import get_task

    run = tmp_path / "run"
    shutil.copytree(tiny_finished_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    batches = {"train": 2, "val": 1, "test": 1}
    metrics["debug"] = {"epochs_per_phase": 1, "batches": batches, "note": "metrics are not meaningful"}
    (run / "metrics.json").write_text(json.dumps(metrics))

    page = write_report(run, get_task("classification")).read_text()

    top = page[: page.index("<h2>")]  # before the first section
    assert "debug run (trainer=debug)" in top
    assert "metrics are not meaningful" in top
    assert "1 epoch of 2 training batches per phase" in top


def test_the_report_of_a_normal_run_has_no_debug_note(tiny_finished_run):
    page = (tiny_finished_run / "report.html").read_text()

    assert "<h2>" in page
    assert "debug run" not in page
