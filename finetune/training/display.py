"""What a run prints: the per-stage table, the plan, the test results."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import ProcessingSpeedColumn
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from finetune.models.freezing import FineTuneModel, stage_status
from finetune.models.summary import StageCount
from finetune.run.console import console

LOG_WIDTH = 1000  # the progress line in a log file: every metric on the epoch's one line


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
    """Redraws (and reads the logged metrics) every ``every`` batches instead of every batch.

    Measured in benchmarks/overhead.py: the per-step redraw was the largest part of our overhead
    over a plain PyTorch loop. The bar names the phase in full (``probe · epoch 1/5``) instead of
    Lightning's ``v_num`` (the last characters of the logger version, which is the phase name), and
    its rate is batches over the time they took, correct however rarely the bar is redrawn.
    """

    def __init__(self, every: int, phase: str | None = None, **kwargs) -> None:
        if "console_kwargs" not in kwargs and not console.is_terminal:
            kwargs["console_kwargs"] = {"width": LOG_WIDTH}  # a log file: one line per epoch, metrics unwrapped
        super().__init__(**kwargs)
        self.every = max(1, every)
        self.phase = phase

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.every == 0 or batch_idx + 1 == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _update(self, progress_bar_id, current: int, visible: bool = True, hard: bool = False) -> None:
        if self.progress is not None and self.is_enabled and progress_bar_id is not None:
            self.progress.update(progress_bar_id, updated=self.progress.get_time())  # for RateColumn
        super()._update(progress_bar_id, current, visible, hard)

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = f"epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        return f"{self.phase} · {epochs}" if self.phase else epochs

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the phase is in the description, in full
        return metrics

    def configure_columns(self, trainer) -> list:
        columns = [
            RateColumn(self.theme.processing_speed) if isinstance(column, ProcessingSpeedColumn) else column
            for column in super().configure_columns(trainer)
        ]
        for column in columns:
            if hasattr(column, "bar_width"):
                column.bar_width = 20  # leaves the metrics room on a 120-column terminal
        return columns


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
    table = Table(title="test results", title_justify="left")
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
