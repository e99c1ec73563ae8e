"""Checks on a composed config that fail fast, before any data or weights are touched.

Hydra already rejects unknown keys and unknown group options (with the list of valid choices);
this module checks values, asks the task to check its own keys, and turns the ``schedule`` group
into a list of phases. It imports no torch: a bad config is reported in about a second.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from finetune.data import IMBALANCE_CHOICES
from finetune.engine import CACHE_CHOICES, OPTIMIZERS, SCHEDULERS
from finetune.engine.schedule import Phase, phases_from
from finetune.errors import ConfigError, choice
from finetune.models import BN_POLICIES

from finetune.tasks.base import Task

# checkpoints.keep: what a finished run keeps, and so which checkpoint it tests (exports, report and
# explain read the one kept; both: best).
KEEP_CHOICES = ("best", "last", "both")


def validate(cfg: DictConfig, task: Task) -> list[Phase]:
    """Check every value that can be checked without data or weights (``task`` checks its own
    keys); return the phases."""
    task.validate(cfg)
    choice("backbone.bn", cfg.backbone.bn, BN_POLICIES)
    choice("imbalance", cfg.imbalance, IMBALANCE_CHOICES)
    if cfg.schedule.batch_size < 1:
        raise ConfigError(f"schedule.batch_size={cfg.schedule.batch_size}: must be >= 1")
    choice("data.cache_features", str(cfg.data.cache_features).lower(), CACHE_CHOICES)
    choice("checkpoints.keep", OmegaConf.select(cfg, "checkpoints.keep", default="best"), KEEP_CHOICES,
           "best: test the best validation epoch, then remove last.ckpt; last: test the final weights, then "
           "remove best.ckpt; both: test best.ckpt and keep both (to continue training later)")
    t = cfg.trainer
    if str(t.strategy).startswith("ddp") and not (isinstance(t.devices, int) and t.devices >= 1):
        raise ConfigError(f"trainer.devices={t.devices!r}: with strategy={t.strategy} give the number of "
                          "devices per node, e.g. trainer.devices=2")
    phases = phases_from(cfg)
    for phase in phases:
        choice(f"optimizer of phase {phase.name!r}", phase.optim.optimizer, OPTIMIZERS)
        choice(f"scheduler of phase {phase.name!r}", phase.optim.scheduler, SCHEDULERS)
        if phase.optim.lr <= 0:
            raise ConfigError(f"lr of phase {phase.name!r} is {phase.optim.lr}: must be > 0")
    return phases

