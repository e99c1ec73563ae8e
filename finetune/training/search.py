"""Hyperparameter search (``finetune -m hydra/sweeper=optuna …``): every trial reports the validation
score that picked its checkpoint (metrics.json ``checkpoint.best``), never a test metric, and the
study pushes that score the way the checkpoint callback does: a loss down, every other monitor up.

A sweeper that optimises a number says which way in ``hydra.sweeper.direction`` (Optuna; its default
is ``minimize``). The basic sweeper (grid ``-m``) has no direction and needs no number.
"""

from __future__ import annotations

from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.run.errors import ConfigError

EXAMPLE = "finetune -m +classification=digits_search"


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
    ``plan=true``, or pushing the monitor the wrong way (Optuna's default would minimise accuracy)."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        raise ConfigError(
            f"a search (hydra/sweeper=optuna) runs only under -m (multirun); without it this would "
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
            f"is better: set hydra.sweeper.direction={wanted} (Optuna's default is "
            "minimize; the search recipes set direction: ${search_direction:${monitor}})"
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
