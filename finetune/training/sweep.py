"""Hydra multirun: one table of the runs of a sweep (CSV + markdown), ranked by the validation score
that picked each run's checkpoint. Test metrics are shown for the selected run's report and marked as
not for selection: picking a run by its test score makes that score optimistic."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.run.artifacts import write_text
from finetune.training.search import direction

FINISHED, NO_METRICS = "finished", "no metrics.json"
ROW_KEYS = ("rank", "run", "status", "swept", "wall_time_s")  # every other column is a val monitor or test/…
OPTUNA_RESULTS = "optimization_results.yaml"  # the Optuna sweeper's best trial, in the sweep directory


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run under ``sweep_dir``: its rank by validation score (1 = best), what was swept
    (overrides not shared by all runs), the validation score that picked its checkpoint and its test
    metrics. Finished runs come best first; runs without metrics.json (failed) come last."""
    runs = [_read_run(d) for d in sorted(_run_dirs(sweep_dir), key=lambda d: _job_order(d.name))]
    shared = set.intersection(*(set(r["overrides"]) for r in runs)) if runs else set()
    finished = [r for r in runs if r["metrics"]]
    ranked = len({r["monitor"] for r in finished}) == 1  # different monitors cannot be ranked together
    if ranked:
        finished.sort(key=_sort_key)
    rows = [
        {
            "rank": rank if ranked else None,
            "run": r["name"],
            "status": FINISHED,
            "swept": _swept(r, shared),
            r["monitor"]: r["score"],
            **{f"test/{k}": v for k, v in r["metrics"]["test"].items()},
            "wall_time_s": r["metrics"].get("wall_time_s"),
        }
        for rank, r in enumerate(finished, 1)
    ]
    return rows + [
        {"rank": None, "run": r["name"], "status": NO_METRICS, "swept": _swept(r, shared)}
        for r in runs
        if not r["metrics"]
    ]


def _run_dirs(sweep_dir: Path) -> set[Path]:
    """Job directories: every one Hydra started (``.hydra/overrides.yaml``) or that finished."""
    return {p.parent for p in sweep_dir.glob("*/metrics.json")} | {
        p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")
    }


def _read_run(run: Path) -> dict[str, Any]:
    overrides_file, metrics_file = run / ".hydra" / "overrides.yaml", run / "metrics.json"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    checkpoint = (metrics or {}).get("checkpoint") or {}
    return {
        "name": run.name,
        "overrides": overrides or [],
        "metrics": metrics,
        "monitor": checkpoint.get("monitor") or "val score",
        "score": checkpoint.get("best"),
    }


def _sort_key(run: dict[str, Any]) -> tuple[bool, float]:
    """Best validation score first (lowest for a loss); runs without a score last."""
    score = run["score"]
    if score is None:
        return True, 0.0
    return False, score if direction(run["monitor"]) == "minimize" else -score


def _swept(run: dict[str, Any], shared: set[str]) -> str:
    return " ".join(o for o in run["overrides"] if o not in shared)


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (10**9, name)


def write_summary(sweep_dir: Path) -> list[Path]:
    """Write ``sweep_summary.csv`` (plain metric names, machine-readable) and ``sweep_summary.md``
    (which column selects and which does not, said in the headers and above the table)."""
    rows = sweep_rows(sweep_dir)
    if not rows:
        return []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    monitors = [c for c in columns if c not in ROW_KEYS and not c.startswith("test/")]
    headers = [
        f"{c} (selection)" if c in monitors else f"{c} (not for selection)" if c.startswith("test/") else c
        for c in columns
    ]
    lines = [
        *_notes(sweep_dir, monitors),
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return [
        write_text(sweep_dir / "sweep_summary.csv", buffer.getvalue()),
        write_text(sweep_dir / "sweep_summary.md", "\n".join(lines) + "\n"),
    ]


def _notes(sweep_dir: Path, monitors: list[str]) -> list[str]:
    """The lines above the markdown table: how it is ranked, and Optuna's best trial."""
    if len(monitors) == 1:
        better = "lower" if direction(monitors[0]) == "minimize" else "higher"
        notes = [
            f"Ranked by {monitors[0]} ({better} is better), the validation score that picked each run's "
            "checkpoint: select on it. The test columns are for reporting the selected run only; choosing "
            "by them makes the test score optimistic."
        ]
    elif monitors:
        notes = [
            f"Runs monitor different validation metrics ({', '.join(monitors)}): not ranked. Select on a "
            "validation score, never on the test columns."
        ]
    else:
        notes = ["No run finished (none wrote metrics.json): nothing to rank; each run's finetune.log says why."]
    results = sweep_dir / OPTUNA_RESULTS
    if results.is_file():
        notes.append(_optuna_note(yaml.safe_load(results.read_text()) or {}, sweep_dir))
    return notes


def _optuna_note(results: dict[str, Any], sweep_dir: Path) -> str:
    """Optuna's best trial from ``optimization_results.yaml`` and the run it was."""
    params = results.get("best_params") or {}
    match = [
        r["name"]
        for r in map(_read_run, _run_dirs(sweep_dir))
        if params and all(_override_value(r["overrides"], k) == str(v) for k, v in params.items())
    ]
    where = f" = run {match[0]}" if len(match) == 1 else ""
    shown = " ".join(f"{k}={v}" for k, v in params.items())
    return f"Optuna's best trial ({OPTUNA_RESULTS}): value {_cell(results.get('best_value'))}{where} ({shown})."


def _override_value(overrides: list[str], key: str) -> str | None:
    """The value ``key`` was given, as written (the sweeper writes ``f"{key}={value}"``)."""
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]
    return values[-1] if values else None


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


class SweepSummary(Callback):
    """Hydra callback: after each job of a ``-m`` sweep (any sweeper: grid or Optuna) and when it
    finishes, summarise every run; a sweep that stops early (an error, Ctrl-C) keeps the table so far."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for path in write_summary(Path(config.hydra.sweep.dir)):
            print(f"sweep summary: {path}")
