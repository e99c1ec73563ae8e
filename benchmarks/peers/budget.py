"""The equal-wall-clock comparison: each tool's schedule fitted to the budget from its pace in the epoch
comparison."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from ..common import compose
from .definitions import Dataset, Settings
from .results import group
from .specs import recipe


def fit_epochs(references: list[dict], budget_s: float, minimum: int = 1) -> int:
    """How many epochs of a tool's reference schedule fit in ``budget_s``, from its own runs of that schedule:
    wall(E) = wall_ref + pace · (E − E_ref), the pace per epoch read off the later half of each curve (the
    main phase), means over the reference runs; never more epochs than the reference, never fewer than
    ``minimum``."""
    epochs = references[0]["epochs"]
    wall = statistics.mean(r["wall_s"] for r in references)
    pace = statistics.mean(_pace(r["curve"]) for r in references)
    fitting = epochs + math.floor((budget_s - wall) / pace) if pace > 0 else epochs
    return max(minimum, min(epochs, fitting))


def _pace(curve: list[dict]) -> float:
    """Seconds per epoch over the later half of a validation curve (the only epoch: its time)."""
    half = len(curve) // 2
    if len(curve) - 1 - half < 1:
        return curve[-1]["t_s"] / len(curve)
    return (curve[-1]["t_s"] - curve[half]["t_s"]) / (len(curve) - 1 - half)


def budget_of(dataset: Dataset, settings: Settings) -> float:
    """The budget comparison's seconds: ``--budget-s``, else the dataset's own."""
    return settings.budget_s or dataset.budget_s


def budget_spec(dataset: Dataset, settings: Settings, seed: int, run_spec: dict, name: str, runs: list[dict]) -> dict:
    """``run_spec`` with the tool's epochs fitted to the budget (``fit_epochs``) from its runs of the epoch
    comparison (same data, size and schedule; any seed); finetune keeps its recipe's phases and shortens the
    ones that follow ``schedule.epochs``. A LookupError without reference runs."""
    budget = budget_of(dataset, settings)
    reference_group = (dataset.name, run_spec["image_size"], run_spec["epochs"], 0)
    references = [r for r in runs if "error" not in r and r["tool"] == name and group(r) == reference_group]
    if not references:
        raise LookupError(
            f"no run of {name} on {dataset.name} ({run_spec['image_size']} px, {run_spec['epochs']} "
            f"epochs) to size its budget from: run the epoch comparison first (--compare epochs)"
        )
    fitted = {**run_spec, "budget_s": budget, "reference_epochs": run_spec["epochs"]}
    if name != "finetune":
        return {**fitted, "epochs": fit_epochs(references, budget)}
    if settings.epochs:  # one phase of N epochs: N shrinks
        epochs = fit_epochs(references, budget)
        return {
            **fitted,
            "epochs": epochs,
            "finetune_overrides": recipe(dataset, replace(settings, epochs=epochs), seed)[0],
        }
    fixed, per_step = _recipe_epochs(run_spec["finetune_overrides"])
    steps = max(1, (fit_epochs(references, budget, fixed + per_step) - fixed) // per_step)
    overrides = [o for o in run_spec["finetune_overrides"] if not o.startswith("schedule.epochs=")]
    return {
        **fitted,
        "epochs": fixed + per_step * steps,
        "finetune_overrides": [*overrides, f"schedule.epochs={steps}"],
    }


def _recipe_epochs(overrides: list[str]) -> tuple[int, int]:
    """(epochs of the phases with a fixed count, phases that run ``schedule.epochs`` each) of a recipe."""
    base = [o for o in overrides if not o.startswith("schedule.epochs=")]
    one, two = (sum(int(p.epochs) for p in compose(*base, f"schedule.epochs={k}").schedule.phases) for k in (1, 2))
    if two == one:
        raise ValueError(
            f"no phase of {overrides} follows schedule.epochs, so the budget cannot shorten it: run "
            "the budget comparison with --epochs N (one phase of N epochs), or only --compare epochs"
        )
    return one - (two - one), two - one
