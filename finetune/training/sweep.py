"""Hydra multirun: one table of the runs of a sweep (CSV + markdown), ranked by the validation score
that picked each run's checkpoint. Test metrics are shown for the selected run's report and marked as
not for selection: picking a run by its test score makes that score optimistic. A search
(``hydra/sweeper=search``) adds each trial's state in its study (``study.json``: complete, pruned, failed
and re-queued, running) and names the study's best trial; pruned trials are listed, not ranked."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.report.page import NO_TEST_SPLIT, no_test_split
from finetune.run.artifacts import write_text
from finetune.training.search import PRUNED_REASON, STUDY_RECORD, best_text, direction, short_keys, shown_value

FINISHED, PRUNED, NO_METRICS = "finished", "pruned", "no metrics.json"
ROW_KEYS = ("rank", "run", "status", "state", "swept", "wall_time_s")  # every other: a val monitor or test/…
HEADERS = {"wall_time_s": "time_s"}  # sweep_summary.md's shorter names of the CSV's columns
HIDDEN = ("search.",)  # overrides a sweeper gives each job to identify it, not what was swept


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run under ``sweep_dir``: its rank by validation score (1 = best), what was swept
    (overrides not shared by all runs), the validation score that picked its checkpoint and its test
    metrics. Finished runs come best first; runs without metrics.json (failed) come last."""
    runs = [_read_run(d) for d in sorted(_run_dirs(sweep_dir), key=lambda d: _job_order(d.name))]
    shared = set.intersection(*(set(r["overrides"]) for r in runs)) if runs else set()
    states = _trial_states(sweep_dir)
    finished = [r for r in runs if r["metrics"] and PRUNED_REASON not in r["metrics"]]
    ranked = len({r["monitor"] for r in finished}) == 1  # different monitors cannot be ranked together
    if ranked:
        finished.sort(key=_sort_key)

    def row(r: dict[str, Any], rank: int | None, status: str) -> dict[str, Any]:
        return {"rank": rank, "run": r["name"], "status": status, **_state(r, states), "swept": _swept(r, shared)}

    rows = [
        {
            **row(r, rank if ranked else None, FINISHED),
            r["monitor"]: r["score"],
            **{f"test/{k}": v for k, v in r["metrics"]["test"].items()},
            "wall_time_s": r["metrics"].get("wall_time_s"),
        }
        for rank, r in enumerate(finished, 1)
    ]
    rows += [row(r, None, _pruned(r["metrics"][PRUNED_REASON])) for r in runs if PRUNED_REASON in (r["metrics"] or {})]
    return rows + [row(r, None, NO_METRICS) for r in runs if not r["metrics"]]


def _trial_states(sweep_dir: Path) -> dict[str, str] | None:
    """Job name (= trial number) -> the trial's state in the search's study; None outside a search."""
    study = _study(sweep_dir)
    if study is None:
        return None
    return {str(t["trial"]): t["state"] + (", re-queued" if t.get("requeued") else "") for t in study.get("trials", [])}


def _state(run: dict[str, Any], states: dict[str, str] | None) -> dict[str, str]:
    return {} if states is None else {"state": states.get(run["name"], "")}


def _pruned(record: dict[str, Any]) -> str:
    """The status of a pruned trial: where the pruner stopped it, or that it diverged."""
    if "epoch" in record:
        return f"{PRUNED} at epoch {record['epoch']} ({record['monitor']}={_cell(record['value'])})"
    return f"{PRUNED}: diverged"


def _study(sweep_dir: Path) -> dict[str, Any] | None:
    return _read(sweep_dir / STUDY_RECORD, json.loads)


def _run_dirs(sweep_dir: Path) -> set[Path]:
    """Job directories: every one Hydra started (``.hydra/overrides.yaml``) or that finished."""
    return {p.parent for p in sweep_dir.glob("*/metrics.json")} | {
        p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")
    }


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    """The parsed file; None while it is missing or half-written (another worker's job is writing it)."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _read_run(run: Path) -> dict[str, Any]:
    overrides = _read(run / ".hydra" / "overrides.yaml", yaml.safe_load)
    metrics = _read(run / "metrics.json", json.loads)
    checkpoint = (metrics or {}).get("checkpoint") or {}
    return {
        "name": run.name,
        "overrides": overrides if isinstance(overrides, list) else [],
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
    return " ".join(o for o in run["overrides"] if o not in shared and not o.lstrip("+~").startswith(HIDDEN))


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (10**9, name)


def write_summary(sweep_dir: Path) -> list[Path]:
    """Write ``sweep_summary.csv`` (every column, plain metric names, full values: machine-readable) and
    ``sweep_summary.md`` (for people: see ``_markdown``)."""
    rows = sweep_rows(sweep_dir)
    if not rows:
        return []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return [
        write_text(sweep_dir / "sweep_summary.csv", buffer.getvalue()),
        write_text(sweep_dir / "sweep_summary.md", _markdown(sweep_dir, rows, columns)),
    ]


def _markdown(sweep_dir: Path, rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The notes (how to select, the study's best trial, the swept keys in full), then a table about 100
    columns wide: one column per swept key (its short name), the validation score that selects, the test
    score of the same metric (for reporting; the other test metrics are in the CSV), floats rounded."""
    monitors = [c for c in columns if c not in ROW_KEYS and not c.startswith("test/")]
    swept = [_overrides(row.get("swept") or "") for row in rows]
    names = {k: k if short in ROW_KEYS else short for k, short in short_keys(k for o in swept for k in o).items()}
    tests = [t for m in monitors if (t := f"test/{m.split('/', 1)[-1]}") in columns]
    shown = [c for c in ("rank", "run", "status", "state") if c in columns]
    shown += [*names.values(), *monitors, *tests, *(["wall_time_s"] if "wall_time_s" in columns else [])]
    notes = _notes(sweep_dir, monitors)
    full = [f"{short} = {key}" for key, short in names.items() if short != key]
    if full:
        notes.append(f"Swept keys: {', '.join(full)}.")
    others = [c for c in columns if c.startswith("test/") and c not in tests]
    if others:
        notes.append(f"The other test metrics ({', '.join(others)}): sweep_summary.csv.")
    cells = [
        {**{c: _cell(row.get(c), c) for c in columns}, **{names[k]: shown_value(v) for k, v in overrides.items()}}
        for row, overrides in zip(rows, swept)
    ]
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(cell.get(c, "") for c in shown) + " |" for cell in cells]
    return "\n".join([*notes, "", *lines]) + "\n"


def _overrides(swept: str) -> dict[str, str]:
    """``schedule.lr=0.001 +mix=x ~seed`` -> {``schedule.lr``: ``0.001``, ``mix``: ``x``, ``~seed``: ``deleted``}
    (a value holding spaces stays whole)."""
    items: list[str] = []
    for token in swept.split(" "):
        if items and "=" not in token and not token.startswith("~"):
            items[-1] += " " + token
        elif token:
            items.append(token)
    pairs = [item.split("=", 1) if "=" in item else [item, "deleted"] for item in items]
    return {key.lstrip("+"): value for key, value in pairs}


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
    if any(no_test_split(_read(d / "metrics.json", json.loads) or {}) for d in _run_dirs(sweep_dir)):
        notes.append(f"No test split: the test/ columns are scores on {NO_TEST_SPLIT}.")
    study = _study(sweep_dir)
    if study is not None:
        notes.append(_study_note(study, monitors[0] if len(monitors) == 1 else None))
    return notes


def _study_note(study: dict[str, Any], monitor: str | None) -> str:
    """The study's best trial (its run is the job of the same number; its score is ``monitor``'s) and its
    trials by state."""
    counts: dict[str, int] = {}
    for trial in study.get("trials", []):
        state = trial["state"].lower() + (" and re-queued" if trial.get("requeued") else "")
        counts[state] = counts.get(state, 0) + 1
    tally = ", ".join(f"{n} {state}" for state, n in counts.items())
    head = f"Study {study.get('study_name')!r} ({study.get('storage')}): {tally or 'no trials'}"
    best = study.get("best")
    if not best:
        return head + "; no trial completed yet."
    text = best_text(best["trial"], best["value"], monitor or "value", best["params"])
    return f"{head}. The study's best {text}, run {best['trial']}."


def _cell(value: Any, column: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall_time_s" else f"{value:.4f}"
    return "" if value is None else str(value)


class SweepSummary(Callback):
    """Hydra callback: after each job of a ``-m`` sweep (any sweeper: grid or Optuna) and when it
    finishes, summarise every run; a sweep that stops early (an error, Ctrl-C) keeps the table so far."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for path in write_summary(Path(config.hydra.sweep.dir)):
            print(f"sweep summary: {path}")
