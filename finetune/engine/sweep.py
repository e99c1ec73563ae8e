"""Hydra multirun: one table of the key metrics across the runs of a sweep (CSV + markdown)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from finetune.artifacts import write_text


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished run under ``sweep_dir``: what was swept (overrides not shared by all
    runs) and its test metrics."""
    runs = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: _job_order(p.parent.name)):
        run = metrics_file.parent
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        runs.append((run, overrides, json.loads(metrics_file.read_text())))
    shared = set.intersection(*(set(o) for _, o, _ in runs)) if runs else set()
    return [{"run": run.name, "swept": " ".join(o for o in overrides if o not in shared),
             **{f"test/{k}": v for k, v in metrics["test"].items()}, "wall_time_s": metrics.get("wall_time_s")}
            for run, overrides, metrics in runs]


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (10**9, name)


def write_summary(sweep_dir: Path) -> list[Path]:
    """Write ``sweep_summary.csv`` and ``sweep_summary.md`` in the sweep directory."""
    rows = sweep_rows(sweep_dir)
    if not rows:
        return []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return [write_text(sweep_dir / "sweep_summary.csv", buffer.getvalue()),
            write_text(sweep_dir / "sweep_summary.md", "\n".join(lines) + "\n")]


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


class SweepSummary(Callback):
    """Hydra callback: after ``-m`` finishes, summarise every run of the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for path in write_summary(Path(config.hydra.sweep.dir)):
            print(f"sweep summary: {path}")
