"""What a run prints: the per-stage table, the plan, the test results."""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar
from rich.console import Console
from rich.table import Table

from finetune.models.freezing import FineTuneModel, stage_status
from finetune.models.summary import StageCount

console = Console()


class ThrottledRichProgressBar(RichProgressBar):
    """Redraws (and reads the logged metrics) every ``every`` batches instead of every batch.

    Measured in benchmarks/overhead.py: the per-step redraw was the largest part of our overhead
    over a plain PyTorch loop.
    """

    def __init__(self, every: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.every = max(1, every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.every == 0 or batch_idx + 1 == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def stage_table(model: FineTuneModel, counts: list[StageCount] | None, title: str) -> Table:
    """Stem … head: parameters, trainable or frozen, BatchNorm mode, and the lecture's counts."""
    table = Table(title=title, title_justify="left")
    numeric = ("params", "trainable", "units", "connections")
    columns = ("stage", "params", "trainable", "status", "BN mode", *(("units", "connections") if counts else ()))
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    by_stage = {c.name: c for c in counts or []}
    for row in stage_status(model):
        cells = [row.stage, f"{row.params:,}", f"{row.trainable:,}", row.status, row.bn_mode]
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
