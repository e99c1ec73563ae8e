"""``checkpoints.keep=none`` (issue #29): no checkpoint is ever written; the best validation epoch's weights
(the weight average's, with ``ema.decay``), held in memory across phases, are tested and exported, the same
as the ``best.ckpt`` of ``keep=best``. An interrupted run writes nothing either and ``resume`` starts it
again; a failure after the test writes the tested weights to ``best.ckpt``, so they are not lost."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from finetune.commands import train as run_module
from finetune.run.errors import ConfigError, FinetuneError, RunInterrupted
from finetune.run.records import model_state
from finetune.run.schedule import PHASE_KEY
from finetune.training import phases
from finetune.training import train as train_module
from finetune.training.best_weights import BestWeights

from ..conftest import compose_config
from ..helpers import SMALL_RESNET, cli_in_process, one_torch_thread, with_callback

# Three phases (head on cached features for 3 epochs, last stage, all), EMA on, the best epoch by val loss.
GRADUAL = [
    *SMALL_RESNET,
    "schedule=gradual",
    "schedule.phases.0.epochs=3",
    "schedule.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_test_batches=1",
    "trainer.deterministic=true",
    "ema.decay=0.9",
    "monitor=loss",
]
ONE_EPOCH = [*SMALL_RESNET, "schedule=linear_probe", "schedule.epochs=1", "trainer.limit_train_batches=2"]
ONE_EPOCH += ["trainer.limit_test_batches=1"]


class WatchCheckpoints(L.Callback):
    """Lists the run directory's ``.ckpt`` files at every validation end and training epoch end."""

    def __init__(self, run_dir: Path, seen: list[list[Path]]) -> None:
        self.run_dir, self.seen = run_dir, seen

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(sorted(self.run_dir.rglob("*.ckpt")))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(sorted(self.run_dir.rglob("*.ckpt")))


class SignalAt(L.Callback):
    """Sends this process SIGTERM as the first batch of training epoch ``epoch`` (0-based) starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, index: int) -> None:
        if trainer.current_epoch == self.epoch and index == 0:
            signal.raise_signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, list[list[Path]]]]:
    """The same seeded run with checkpoints.keep=best and none: run directory, ``.ckpt`` files seen in training."""
    made = {}
    for keep in ("best", "none"):
        run_dir, seen = tmp_path_factory.mktemp(f"keep_{keep}"), []
        with pytest.MonkeyPatch.context() as patch, one_torch_thread():
            with_callback(patch, WatchCheckpoints(run_dir, seen))
            run_module.train(compose_config(*GRADUAL, f"checkpoints.keep={keep}"), run_dir)
        made[keep] = (run_dir, seen)
    return made


def test_keep_none_never_writes_a_checkpoint(runs):
    (kept, kept_seen), (lean, lean_seen) = runs["best"], runs["none"]
    assert len(lean_seen) == len(kept_seen) == 2 * (3 + 1 + 1)  # every epoch of the three phases, watched twice
    assert lean_seen == [[]] * len(lean_seen)
    assert not list(lean.rglob("*.ckpt")) and not (lean / "checkpoints").exists()
    assert kept / "checkpoints" / "best.ckpt" in kept_seen[2]  # the watch sees what keep=best wrote in epoch 1


def test_keep_none_tests_and_exports_the_best_epoch_as_keep_best_does(runs):
    kept, lean = runs["best"][0], runs["none"][0]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (kept, lean)]
    assert metrics[0]["checkpoint"]["tested"] == "best.ckpt"
    assert metrics[1]["checkpoint"]["tested"] == phases.IN_MEMORY
    assert metrics[1]["checkpoint"]["best"] == pytest.approx(metrics[0]["checkpoint"]["best"], abs=1e-6)
    tested = [m["test"] for m in metrics]
    assert tested[0].keys() == tested[1].keys() and tested[0]["acc"] is not None
    assert all(tested[1][k] == pytest.approx(v, abs=1e-5) for k, v in tested[0].items() if v is not None)
    # the score recorded is the val-loss minimum (the EMA weights of that epoch were tested)
    val_losses = [float(r["val/loss"]) for r in _rows(kept) if r.get("val/loss")]
    assert metrics[0]["checkpoint"]["best"] == pytest.approx(min(val_losses), abs=1e-6)
    exports = [load_file(run / "exports" / "model.safetensors") for run in (kept, lean)]  # random init: all tensors
    assert exports[0].keys() == exports[1].keys()
    assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])
    assert (lean / "report.html").is_file()


def test_an_interrupted_keep_none_run_writes_nothing_and_resume_starts_it_again(runs, tmp_path, monkeypatch):
    """A real SIGTERM in the first phase: no checkpoint; ``finetune resume=<run>`` trains it again from the first
    phase to the same results as the uninterrupted run of the fixture (same seed, deterministic)."""
    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch, one_torch_thread(), pytest.raises(RunInterrupted) as stopped:
        with_callback(patch, SignalAt(epoch=1))
        run_module.train(compose_config(*GRADUAL, "checkpoints.keep=none"), run_dir)
    assert (
        "interrupted in phase 'probe', epoch 2/3 (SIGTERM); checkpoints.keep=none writes no checkpoint: "
        f"`finetune resume={run_dir}` starts the run again from phase 'probe'"
    ) in str(stopped.value)
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "metrics.json").exists()

    with one_torch_thread():
        out = cli_in_process(f"resume={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(run_dir.rglob("*.ckpt")) and (run_dir / "exports" / "model.safetensors").is_file()
    resumed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, runs["none"][0]))
    assert resumed["test"] == uninterrupted["test"] and resumed["checkpoint"] == uninterrupted["checkpoint"]
    assert [p["epochs_run"] for p in resumed["phases"]] == [3, 1, 1]


def test_a_failure_after_the_test_saves_the_tested_weights(tmp_path, monkeypatch):
    """A signal while exporting: the weights the run tested, held in memory only, are written to best.ckpt, the
    interrupt line says so, and ``finetune export run=`` and a re-test (``resume_finished=true``) read them."""
    run_dir = tmp_path / "run"

    def signalled_export(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(train_module, "export_run", signalled_export)
    with one_torch_thread(), pytest.raises(RunInterrupted) as stopped:
        run_module.train(compose_config(*ONE_EPOCH, "checkpoints.keep=none"), run_dir)
    monkeypatch.undo()
    saved = run_dir / "checkpoints" / "best.ckpt"
    assert f"the tested weights were saved to {saved}" in str(stopped.value)
    assert [p.name for p in run_dir.rglob("*.ckpt")] == ["best.ckpt"] and not (run_dir / "exports").exists()
    tested = json.loads((run_dir / "metrics.json").read_text())

    with one_torch_thread():
        exported = cli_in_process("export", f"run={run_dir}", "format=safetensors", cwd=tmp_path)
        retested = cli_in_process(f"resume={run_dir}", "resume_finished=true", cwd=tmp_path)
    assert exported.returncode == 0 and retested.returncode == 0, (exported.stderr + retested.stderr)[-3000:]
    weights = load_file(run_dir / "exports" / "model.safetensors")
    best = torch.load(saved, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], best[f"model.{k}"]) for k in weights)
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["test"] == tested["test"] and again["checkpoint"]["best"] == tested["checkpoint"]["best"]
    assert again["checkpoint"]["tested"] == "best.ckpt"


def test_an_error_after_the_test_names_the_saved_weights(tmp_path):
    best = BestWeights("val/loss")
    best.checkpoint = {"state_dict": {"model.w": torch.ones(2)}, PHASE_KEY: 0, "epoch": 0}
    with pytest.raises(FinetuneError, match="parity failed; checkpoints.keep=none: the tested weights were saved"):
        with train_module.weights_kept_on_failure(best, tmp_path):
            raise FinetuneError("parity failed")
    assert torch.equal(model_state(tmp_path / "checkpoints" / "best.ckpt")["model.w"], torch.ones(2))


def test_keep_none_without_validation_is_refused_before_training(tmp_path):
    cfg = compose_config(*ONE_EPOCH, "checkpoints.keep=none", "trainer.limit_val_batches=0")
    with pytest.raises(
        ConfigError, match="checkpoints.keep=none with trainer.limit_val_batches=0: .* use checkpoints.keep=last"
    ):
        run_module.train(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def _rows(run_dir: Path) -> list[dict]:
    import csv

    rows = []
    for path in sorted((run_dir / "logs").rglob("metrics.csv")):
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows
