"""The progress bar's ``train_acc`` during an epoch is that epoch's running accuracy (torchmetrics' value of
the batches seen so far), not the previous epoch's; the end-of-epoch ``train/acc`` the logs get is unchanged.
One tiny in-process run (resnet10t at 32 px, two epochs of three batches), watched by a callback; and one epoch of
two batches printed as ``EpochLines`` (one line per epoch), where no step computes the running value."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from finetune.commands import train as run_module
from finetune.training.epoch_lines import plain_progress

from ..helpers import SMALL_RESNET, compose_config, one_torch_thread, with_callback

BATCHES = 3
SHORT = [
    *SMALL_RESNET,
    "trainer.progress_bar=true",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "backbone.freeze=0",
]


class WatchTrainAcc(L.Callback):
    """After each training batch: the accuracy of the epoch's batches so far (counted from the model's own
    training logits), the ``train/acc`` the bar holds and the text the bar shows for it; how often the training
    metrics were computed so far (``computed``, one count per batch)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float, float | None, str | None]] = []
        self.logits: torch.Tensor | None = None
        self.right = self.total = 0
        self.computes = 0
        self.computed: list[int] = []
        self.last_bar: L.Callback | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def keep(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if module.training:
                self.logits = output.detach()

        pl_module.model.register_forward_hook(keep)
        compute = pl_module.train_metrics.compute

        def counted() -> dict:
            self.computes += 1
            return compute()

        pl_module.train_metrics.compute = counted

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.right = self.total = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        targets = batch[1]
        self.right += int((self.logits.argmax(1) == targets).sum())
        self.total += len(targets)
        self.computed.append(self.computes)
        self.last_bar = trainer.progress_bar_callback
        shown = trainer.progress_bar_callback.get_metrics(trainer, pl_module).get("train_acc")
        held = trainer.progress_bar_metrics.get("train/acc")
        self.seen.append((trainer.current_epoch, batch_idx, self.right / self.total, held, shown))


def train_watched(run_dir: Path, *overrides: str) -> WatchTrainAcc:
    """Train ``overrides`` in this process into ``run_dir``, each phase's Trainer watched."""
    watch = WatchTrainAcc()
    with pytest.MonkeyPatch.context() as patch, one_torch_thread():
        with_callback(patch, watch)
        run_module.train(compose_config(*overrides), run_dir)
    return watch


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> tuple[Path, WatchTrainAcc]:
    run_dir = tmp_path_factory.mktemp("train_acc")
    watch = train_watched(run_dir, *SHORT, "schedule.epochs=2", f"trainer.limit_train_batches={BATCHES}")
    return run_dir, watch


def test_the_bar_shows_this_epochs_running_train_accuracy(watched):
    _, watch = watched
    assert [(epoch, batch) for epoch, batch, *_ in watch.seen] == [(e, b) for e in (0, 1) for b in range(BATCHES)]
    for epoch, batch, running, held, shown in watch.seen:
        assert held == pytest.approx(running, abs=1e-6), (epoch, batch)  # epoch 0 too: nothing stale, none missing
        assert shown == f"{running:.3g}", (epoch, batch)
    assert watch.computed == [1, 2, 3, 5, 6, 7]  # each step, and each epoch's end (its logged value)


def test_the_logged_train_accuracy_is_still_the_whole_epochs(watched):
    run_dir, watch = watched
    ends = [running for _, batch, running, *_ in watch.seen if batch == BATCHES - 1]
    with open(next(run_dir.rglob("metrics.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["train/acc"]) for r in rows if r.get("train/acc")]
    assert logged == pytest.approx(ends, abs=1e-6)  # one value per epoch, its own: no per-step train/acc
    assert not any(k.startswith("train/acc_") for k in rows[0])


def test_one_line_per_epoch_computes_no_running_accuracy(tmp_path):
    """``EpochLines`` (a notebook's, a log's progress) prints at the epoch's end only: the steps compute nothing."""
    with plain_progress():
        watch = train_watched(tmp_path, *SHORT, "schedule.epochs=1", "trainer.limit_train_batches=2")
    assert type(watch.last_bar).__name__ == "EpochLines"
    assert watch.computed == [0, 0] and watch.computes == 1  # the epoch's end: its logged train/acc
