"""What a run prints: the per-stage table, the plan, the test results."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomTimeColumn, ProcessingSpeedColumn
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from finetune.models.freezing import FineTuneModel, stage_status
from finetune.models.summary import StageCount
from finetune.report.page import results_title
from finetune.run.console import RECORD, console

LOG_WIDTH = 1000  # the progress line in a log file: every metric on the epoch's one line
NARROW = 100  # a terminal narrower than this gets a shorter bar and no time column
BAR, BAR_NARROW = 20, 10  # the bar's width: leaves the metrics room on a 120- / 80-column terminal
TIME, RATE = 17, 10  # "0:00:01 • 0:00:12", "12.34it/s" (columns)
SHORT_NAMES = {"balanced_acc": "bal_acc", "f1_macro": "f1"}


class RateColumn(ProgressColumn):
    """Batches per second since the bar started, as of its last update (rich's own speed needs two
    updates in one window, so a bar redrawn every N batches showed ``0.00it/s``)."""

    def __init__(self, style) -> None:
        super().__init__()
        self.style = style

    def render(self, task: Task) -> Text:
        updated, started = task.fields.get("updated"), task.start_time
        if updated is None or started is None or updated <= started or not task.completed:
            return Text("–it/s", style=self.style)
        rate = task.completed / (updated - started)
        return Text(f"{rate:.2f}it/s" if rate >= 0.1 else f"{1 / rate:.1f}s/it", style=self.style)


class ThrottledRichProgressBar(RichProgressBar):
    """Redraws (and reads the logged metrics) every ``every`` batches, and at least once a ``seconds``,
    instead of every batch.

    Measured in benchmarks/overhead.py: the per-step redraw was the largest part of our overhead
    over a plain PyTorch loop; an epoch of a few slow batches still moves every second. The bar names the
    phase in full (``probe · epoch 1/5``) instead of Lightning's ``v_num`` (the last characters of the logger
    version, which is the phase name), its rate is batches over the time they took, correct however rarely
    the bar is redrawn, and its metrics (short names, 3 significant digits) are those that fit on the
    terminal's line: on a narrow one (under ``NARROW`` columns) the bar is shorter and the time column goes.
    """

    def __init__(self, every: int, phase: str | None = None, seconds: float = 1.0, **kwargs) -> None:
        if "console_kwargs" not in kwargs and not console.is_terminal:
            kwargs["console_kwargs"] = {"width": LOG_WIDTH}  # a log file: one line per epoch, metrics unwrapped
        super().__init__(**kwargs)
        self.every = max(1, every)
        self.phase = phase
        self.seconds = seconds
        self._drawn_at = time.monotonic()

    def should_redraw(self, batch_idx: int, total: int | float, now: float) -> bool:
        """Whether the bar is redrawn after batch ``batch_idx`` (0-based) of ``total``, at time ``now``."""
        return (batch_idx + 1) % self.every == 0 or batch_idx + 1 == total or now - self._drawn_at >= self.seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._drawn_at = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if self.should_redraw(batch_idx, self.total_train_batches, now):
            self._drawn_at = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _update(self, progress_bar_id, current: int, visible: bool = True, hard: bool = False) -> None:
        if self.progress is not None and self.is_enabled and progress_bar_id is not None:
            self.progress.update(progress_bar_id, updated=self.progress.get_time())  # for RateColumn
        super()._update(progress_bar_id, current, visible, hard)

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = f"epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        return f"{self.phase} · {epochs}" if self.phase else epochs

    @property
    def width(self) -> int:
        """The columns the bar's console has."""
        return (self._console or console).width

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the phase is in the description, in full
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        fixed = len(self._get_train_description(trainer.current_epoch)) + len(str(self.total_train_batches)) * 2
        fixed += (BAR_NARROW if self.width < NARROW else BAR) + (RATE if self.width < NARROW else RATE + TIME) + 6
        return fit_metrics(short_metrics(metrics, monitor), self.width - fixed)

    def configure_columns(self, trainer) -> list:
        narrow = self.width < NARROW
        columns = [
            RateColumn(self.theme.processing_speed) if isinstance(column, ProcessingSpeedColumn) else column
            for column in super().configure_columns(trainer)
            if not (narrow and isinstance(column, CustomTimeColumn))
        ]
        for column in columns:
            if hasattr(column, "bar_width"):
                column.bar_width = BAR_NARROW if narrow else BAR
        return columns


def short_metrics(metrics: Mapping[str, object], monitor: str | None = None) -> dict[str, str]:
    """The bar's metrics: the training loss first (``loss``: the epoch's mean once there is one, else the last
    step's), then ``monitor``, then the rest in order; the other training metrics (the running value of the
    epoch's batches so far, which the task logs each step for a redrawn bar in one process; else the previous
    epoch's) as ``train_acc``, never mistaken for the current validation's; long names shortened, 3 significant
    digits."""
    named: dict[str, object] = {}
    for key, value in metrics.items():
        name = short_name(key)
        if key.endswith("_step") and name in named:
            continue  # the epoch's mean is there already
        named[name] = value
    first = [n for n in ("loss", short_name(monitor or "")) if n in named]
    ordered = {n: named[n] for n in first} | named
    return {name: f"{value:.3g}" if isinstance(value, float | int) else str(value) for name, value in ordered.items()}


def short_name(key: str) -> str:
    """``train/loss_epoch`` -> ``loss``, ``train/balanced_acc`` -> ``train_bal_acc``, ``val/f1_macro`` -> ``val/f1``."""
    name = key.removesuffix("_step").removesuffix("_epoch")
    if name.startswith("train/"):
        name = "loss" if name == "train/loss" else "train_" + name.removeprefix("train/")
    for long, short in SHORT_NAMES.items():
        name = name.replace(long, short)
    return name


def fit_metrics(metrics: Mapping[str, str], width: int) -> dict[str, str]:
    """The first of ``metrics`` that fit in ``width`` columns as Lightning writes them (``name: value``, one
    space between)."""
    fitted, used = {}, -1
    for name, value in metrics.items():
        used += len(name) + len(value) + 3
        if used > width:
            break
        fitted[name] = value
    return fitted


class EpochLog(L.Callback):
    """Each epoch's metrics (those the bar shows, every one), one line in the run's log file (``RECORD``), unless
    the Trainer's progress callback prints lines of its own (which the console records)."""

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shown = trainer.progress_bar_callback
        if trainer.is_global_zero and (shown is None or isinstance(shown, RichProgressBar)):
            metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items()}
            RECORD.info("%s", epoch_line(self.phase, trainer, metrics))


def epoch_line(phase: str, trainer: L.Trainer, metrics: dict) -> str:
    """``<phase> · epoch e/E: loss 0.2 val/acc 0.9 …``: an ended epoch in one line (the log's, a notebook's)."""
    shown = " ".join(f"{name} {value}" for name, value in short_metrics(metrics).items())
    return f"{phase} · epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}"


def stage_table(model: FineTuneModel, counts: list[StageCount] | None, title: str) -> Table:
    """Stem … head: parameters (adapter parameters among them), trainable or frozen, BatchNorm mode,
    and the lecture's counts."""
    table = Table(title=title, title_justify="left")
    adapter = f"{model.adapter.kind} params" if model.adapter else None
    numeric = ("params", adapter, "trainable", "units", "connections")
    columns = (
        "stage",
        "params",
        *((adapter,) if adapter else ()),
        "trainable",
        "status",
        "BN mode",
        *(("units", "connections") if counts else ()),
    )
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    by_stage = {c.name: c for c in counts or []}
    for row in stage_status(model):
        cells = [
            row.stage,
            f"{row.params:,}",
            *((f"{row.adapter:,}",) if adapter else ()),
            f"{row.trainable:,}",
            row.status,
            row.bn_mode,
        ]
        if counts:
            count = by_stage.get(row.stage)
            cells += [f"{count.units:,}", f"{count.connections:,}"] if count else ["-", "-"]
        table.add_row(*cells, style="dim" if row.status == "frozen" else None)
    return table


def results_table(metrics: dict) -> Table:
    """Test metrics, the validation score that picked the tested checkpoint, and wall time."""
    table = Table(title=results_title(metrics), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics["test"].items():
        table.add_row(key, "-" if value is None else f"{value:.4f}")
    chosen = metrics.get("checkpoint") or {}
    if chosen.get("best") is not None:
        table.add_row(f"tested checkpoint: best {chosen['monitor']}", f"{chosen['best']:.4f}")
    table.add_row("wall time", f"{metrics['wall_time_s']:.0f} s")
    return table


def print_results(metrics: dict, run_dir: Path) -> None:
    """The test metrics as a table, then where everything was written."""
    console.print(results_table(metrics))
    console.print(f"run directory: [bold]{run_dir}[/bold]")
