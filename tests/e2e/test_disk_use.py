"""``checkpoints.keep=none``: a run that keeps its exports, report and metrics but no checkpoint (a search's
trials), tested on the same weights as a run that keeps them; the head export of a run that trained every
tensor is named the whole model it is (issue #29)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers import cli_in_process, compose_config, one_torch_thread

# Pip ImageNet weights, every stage trained (schedule=finetune, freeze=0): one epoch of two batches at 32 px.
FULL_FINETUNE = [
    "backbone=efficientnet_lite0",
    "schedule=finetune",
    "schedule.epochs=1",
    "dataset.image_size=32",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
]


def run_size(run_dir: Path) -> int:
    """Bytes of every file in the run directory."""
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """The same run twice, with checkpoints.keep=best (the default) and none: run directory and console."""
    base = tmp_path_factory.mktemp("disk_use")
    made = {}
    for keep in ("best", "none"):
        with one_torch_thread():
            out = cli_in_process(*FULL_FINETUNE, f"checkpoints.keep={keep}", f"hydra.run.dir={keep}", cwd=base)
        assert out.returncode == 0, out.stderr[-3000:]
        made[keep] = (base / keep, out.stdout)
    return made


def test_keep_none_leaves_no_checkpoint_and_frees_its_size(runs):
    (kept, _), (lean, printed) = runs["best"], runs["none"]
    checkpoint = (kept / "checkpoints" / "best.ckpt").stat().st_size
    assert not list(lean.rglob("*.ckpt")) and not (lean / "checkpoints").exists()
    assert (lean / "exports" / "head.safetensors").is_file() and (lean / "report.html").is_file()
    # what the run directory loses is the checkpoint (efficientnet_lite0 with its optimizer state), nothing else
    assert run_size(kept) - run_size(lean) >= 0.95 * checkpoint and run_size(lean) < run_size(kept) / 2
    # (that it tests the same weights as keep=best: tests/e2e/test_keep_none.py, over three phases and EMA)
    # said once before training (nothing to resume afterwards); nothing to remove at the end
    assert printed.count("checkpoints.keep=none: no checkpoint is written") == 1
    assert printed.index("checkpoints.keep=none") < printed.index("phase 1/1")
    assert "removed checkpoints/" not in printed


def test_a_head_export_of_every_tensor_is_named_the_whole_model(runs):
    from finetune.export.tensors import embedded_metadata

    run_dir, printed = runs["best"]
    assert embedded_metadata(run_dir / "exports" / "head.safetensors")["frozen_tensors"] == 0
    assert "│ head = whole model │ head.safetensors │" in printed


@pytest.mark.parametrize("recipe", ["+classification=digits_search", "+medical=blood_search"])
def test_search_recipes_keep_no_checkpoints(recipe):
    assert compose_config(recipe).checkpoints.keep == "none"
