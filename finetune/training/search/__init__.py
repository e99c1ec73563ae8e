"""Hyperparameter search (``finetune -m hydra/sweeper=search …``, finetune's own Optuna sweeper): every
trial reports the validation score that picked its checkpoint (metrics.json ``checkpoint.best``), never a
test metric, and the study pushes that score the way the checkpoint callback does: a loss down, every
other monitor up.

A sweeper that optimises a number says which way in ``hydra.sweeper.direction``. The basic sweeper
(grid ``-m``) has no direction and needs no number.

The package: ``space`` (the search space, Hydra's sweep syntax → Optuna distributions), ``storage``
(journal file or database, the cross-process lock, heartbeats), ``study`` (exactly ``n_trials``, stale
trials re-queued, seeded suggestions), ``pruning`` (the Lightning callback of a trial), ``sweeper`` (the
Hydra sweeper, ``hydra_plugins.finetune_search.SearchSweeper``). Only this module is imported by the
config checks: it imports neither Optuna nor torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.run.errors import ConfigError

EXAMPLE = "finetune -m +classification=digits_search"
PRUNED_REASON = "pruned"  # why a trial was PRUNED (the pruner's record, or the divergence message): the trial's
# user attr and its run's metrics.json key
STUDY_RECORD = "study.json"  # in a search's sweep directory: the study's storage and name, its trials, the best


class TrialPruned(Exception):
    """The study's pruner stopped this trial (``pruning.TrialPruning``): no test, no export. ``record``
    (metrics.json ``pruned``): the epoch (1-based, counted across phases), phase, monitor and value."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(
            f"pruned at epoch {record['epoch']} (phase {record['phase']!r}): {record['monitor']}="
            f"{record['value']:.4g} is worse than the pruner allows"
        )
        self.record = record

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        """Picklable with its record: a launcher that runs trials in other processes (submitit) sends it back."""
        return type(self), (self.record,)


class TrialWithoutScore(RuntimeError):
    """A finished run whose validation monitor never had a value; the sweeper records a failed trial
    (not a FinetuneError: that would end the whole study)."""


def direction(monitor: str) -> str:
    """``minimize`` for a loss (``monitor=loss``, ``val/loss``), else ``maximize``: the rule the
    checkpoint callback follows. ``monitor=auto`` never resolves to a loss."""
    return "minimize" if str(monitor).endswith("loss") else "maximize"


def is_search(hydra_cfg: DictConfig) -> bool:
    """True when the sweeper optimises the number a run returns (it has a ``direction``)."""
    return "direction" in hydra_cfg.sweeper


def check_search(hydra_cfg: DictConfig, cfg: DictConfig) -> None:
    """Refuse, before any training, a search that cannot mean what it says: not under ``-m``, with
    ``plan=true``, or pushing the monitor the wrong way."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        raise ConfigError(
            f"a search (hydra/sweeper=search) runs only under -m (multirun); without it this would "
            f"be one plain run with the defaults: e.g. {EXAMPLE}"
        )
    if cfg.plan:
        raise ConfigError(
            "plan=true trains nothing, so a search has no score to optimise: drop -m to print "
            "the plan of one run (finetune plan <overrides>)"
        )
    got = getattr(hydra_cfg.sweeper.direction, "name", hydra_cfg.sweeper.direction)  # Direction enum or str
    wanted = direction(cfg.monitor)
    if not isinstance(got, str):
        raise ConfigError(
            f"hydra.sweeper.direction={list(got)}: each trial reports one number (the validation "
            f"monitor); give one direction: hydra.sweeper.direction={wanted}"
        )
    if got != wanted:
        better = "lower" if wanted == "minimize" else "higher"
        raise ConfigError(
            f"hydra.sweeper.direction={got}, but trials report monitor={cfg.monitor}, where {better} "
            f"is better: set hydra.sweeper.direction={wanted} (the default, direction: "
            "${search_direction:${monitor}}, follows the monitor)"
        )


def objective(metrics: dict[str, Any]) -> float:
    """The number a trial reports: the best validation score, the one that picked the checkpoint."""
    record = metrics.get("checkpoint") or {}
    if record.get("best") is None:
        raise TrialWithoutScore(
            f"{record.get('monitor') or 'the validation monitor'} never had a value in this "
            "run (metrics.json checkpoint.best is null), so the trial has no score"
        )
    return float(record["best"])


def shown_value(value: Any) -> str:
    """A parameter's value as people read it: a float (or a float's text, as an override holds it) to 3
    significant digits (``0.0012520653814999472`` -> ``0.00125``); anything else as it is. study.json, the
    study and the overrides a trial runs with keep the full value."""
    if isinstance(value, str):
        try:
            return value if value.lstrip("+-").isdigit() else shown_value(float(value))
        except ValueError:
            return value
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """Each key's name in a narrow table or line: its last dotted part (``schedule.phases.1.layer_decay`` ->
    ``layer_decay``) where no other key ends the same way, else the key in full."""
    keys = list(dict.fromkeys(keys))
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def shown_params(params: Mapping[str, Any]) -> str:
    """``lr=0.00125 layer_decay=0.8``: parameters by their short names, floats to 3 significant digits."""
    names = short_keys(params)
    return " ".join(f"{names[k]}={shown_value(v)}" for k, v in params.items())


def best_text(trial: int, value: float, metric: str, params: Mapping[str, Any]) -> str:
    """``trial 3: val/acc=0.9123 (lr=0.00125 label_smoothing=0.1)``: a study's best trial, as printed and in the
    sweep summary."""
    return f"trial {trial}: {metric}={value:.4f}" + (f" ({shown_params(params)})" if params else "")
