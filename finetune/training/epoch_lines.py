"""Plain progress: one printed line per epoch instead of a redrawn bar, for a notebook or a log, where a bar
that redraws itself is noise (``finetune.train(progress="lines")``; its default where output is no terminal)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from finetune.run.console import console
from finetune.training.display import epoch_line

_PLAIN: ContextVar[bool] = ContextVar("plain_progress", default=False)


@contextmanager
def plain_progress(on: bool = True) -> Iterator[None]:
    """Inside the block, a phase's Trainer that shows progress prints ``EpochLines`` instead of the bar."""
    token = _PLAIN.set(on)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def progress_callbacks(bars: list, phase: str) -> list:
    """``bars`` (the progress bar a Trainer would show, or none), or ``EpochLines`` in a ``plain_progress`` block."""
    return [EpochLines(phase)] if bars and _PLAIN.get() else bars


class EpochLines(ProgressBar):
    """Lightning's progress bar as one line per training epoch, printed when the epoch (its validation
    included) ends: ``probe · epoch 1/3: loss 0.52 acc 0.91 (4.2 s)``, the metrics the bar would show."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase
        self.enabled = True
        self.started = time.perf_counter()

    def disable(self) -> None:
        self.enabled = False  # ranks other than 0

    def enable(self) -> None:
        self.enabled = True

    @property
    def is_enabled(self) -> bool:
        return self.enabled

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            console.print(self.line(trainer, pl_module), markup=False, highlight=False)

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """The epoch's line (as it ends)."""
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the phase is named in full
        return f"{epoch_line(self.phase, trainer, metrics)} ({time.perf_counter() - self.started:.1f} s)"
