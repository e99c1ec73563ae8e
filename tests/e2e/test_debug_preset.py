"""``trainer=debug``: a few batches of every phase, validation and test through the whole run (checkpoint pick, test,
exports, report), said to be a debug run in the console and in metrics.json."""

from __future__ import annotations

import csv
import json

from ..helpers import cli_in_process, one_torch_thread

SMALL = [
    "dataset=digits",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "trainer.progress_bar=false",
]


def train_steps(run_dir, phase: str) -> int:
    """The training steps a phase's CSV log holds (``trainer=debug`` logs every step)."""
    with open(run_dir / "logs" / phase / "metrics.csv", newline="") as f:
        return len({row["step"] for row in csv.DictReader(f) if row.get("train/loss_step")})


def test_debug_preset_runs_every_phase_briefly_and_still_exports(tmp_path):
    with one_torch_thread():
        out = cli_in_process("trainer=debug", "schedule=gradual", *SMALL, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["debug"]["batches"] == {"train": 2, "val": 2, "test": 2}
    assert [(p["name"], p["epochs"], p["epochs_run"]) for p in metrics["phases"]] == [
        ("probe", 1, 1),
        ("last_stage", 1, 1),
        ("all", 1, 1),
    ]  # gradual's probe has 5 epochs and the others schedule.epochs=2: one each here
    assert [train_steps(run, p["name"]) for p in metrics["phases"]] == [2, 2, 2]
    assert metrics["test"]  # tested on the checkpoint the val batches picked
    assert any((run / "exports").iterdir()) and (run / "report.html").is_file()
    assert "debug run: 1 epoch of 2 batches per phase" in out.stdout and "metrics are not meaningful" in out.stdout
