"""Checks on a composed config that fail fast, before any data or weights are touched.

Hydra already rejects unknown keys and unknown group options (with the list of valid choices);
this module checks values and turns the ``schedule`` group into a list of phases.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from finetune.data.imbalance import IMBALANCE_CHOICES
from finetune.errors import FinetuneError
from finetune.engine.features import CACHE_CHOICES
from finetune.models.freezing import BN_POLICIES
from finetune.data.datasets import LOADERS
from finetune.data.segmentation import LAYOUTS
from finetune.models.heads import HEADS, SEGMENTATION_HEADS
from finetune.engine.optim import OPTIMIZERS, SCHEDULERS
from finetune.tasks.base import PhaseOptim
from finetune.tasks.classification import MONITORS as CLASSIFICATION_MONITORS
from finetune.tasks.segmentation import LOSSES, MONITORS as SEGMENTATION_MONITORS

TASKS = ("classification", "segmentation")
_PHASE_OPTIM_KEYS = {f.name for f in fields(PhaseOptim)}


class ConfigError(FinetuneError):
    """A config value that cannot work."""


@dataclass(frozen=True)
class Phase:
    """One phase of a schedule: how long, which stages are frozen, how it optimises."""

    name: str
    epochs: int
    freeze: int | str
    optim: PhaseOptim


def phases_from(cfg: DictConfig) -> list[Phase]:
    """The schedule's phases; each phase may override any optimiser key of the schedule."""
    schedule = cfg.schedule
    if not schedule.phases:
        raise ConfigError("schedule.phases is empty: give at least one phase, e.g. schedule=finetune")
    base = {k: schedule[k] for k in _PHASE_OPTIM_KEYS}
    phases = []
    for i, raw in enumerate(schedule.phases):
        raw = OmegaConf.to_container(raw, resolve=True)
        unknown = set(raw) - _PHASE_OPTIM_KEYS - {"name", "epochs", "freeze"}
        if unknown:
            raise ConfigError(f"schedule.phases[{i}] has unknown keys {sorted(unknown)}; allowed: "
                              f"name, epochs, freeze, {', '.join(sorted(_PHASE_OPTIM_KEYS))}")
        epochs = raw.get("epochs")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"schedule.phases[{i}].epochs={epochs!r}: must be a whole number >= 1")
        optim = PhaseOptim(**(base | {k: raw[k] for k in _PHASE_OPTIM_KEYS & set(raw)}))
        phases.append(Phase(raw.get("name", f"phase{i + 1}"), epochs, raw.get("freeze", cfg.backbone.freeze), optim))
    return phases


def validate(cfg: DictConfig) -> list[Phase]:
    """Check every value that can be checked without data or weights; return the phases."""
    _choice("task", cfg.task, TASKS)
    segmentation = cfg.task == "segmentation"
    heads, datasets = (SEGMENTATION_HEADS, LAYOUTS) if segmentation else (HEADS, LOADERS)
    _choice("head.kind", cfg.head.kind, heads, f"task={cfg.task} takes head=" + "|".join(heads))
    _choice("dataset.kind", cfg.dataset.kind, datasets, f"task={cfg.task} takes dataset=" + "|".join(datasets))
    if segmentation:
        _validate_segmentation(cfg)
    monitors = SEGMENTATION_MONITORS if segmentation else CLASSIFICATION_MONITORS
    _choice("monitor", cfg.monitor, ("auto", *monitors), f"validation metrics of task={cfg.task}")
    _choice("backbone.bn", cfg.backbone.bn, BN_POLICIES)
    _choice("imbalance", cfg.imbalance, IMBALANCE_CHOICES)
    if cfg.schedule.batch_size < 1:
        raise ConfigError(f"schedule.batch_size={cfg.schedule.batch_size}: must be >= 1")
    if cfg.threshold != "tune" and not (isinstance(cfg.threshold, (int, float)) and 0 < cfg.threshold < 1):
        raise ConfigError(f"threshold={cfg.threshold!r}: use a probability in (0, 1) or threshold=tune "
                          "(tuned on the validation split)")
    _choice("data.cache_features", str(cfg.data.cache_features).lower(), CACHE_CHOICES)
    t = cfg.trainer
    if str(t.strategy).startswith("ddp") and not (isinstance(t.devices, int) and t.devices >= 1):
        raise ConfigError(f"trainer.devices={t.devices!r}: with strategy={t.strategy} give the number of "
                          "devices per node, e.g. trainer.devices=2")
    phases = phases_from(cfg)
    for phase in phases:
        _choice(f"optimizer of phase {phase.name!r}", phase.optim.optimizer, OPTIMIZERS)
        _choice(f"scheduler of phase {phase.name!r}", phase.optim.scheduler, SCHEDULERS)
        if phase.optim.lr <= 0:
            raise ConfigError(f"lr of phase {phase.name!r} is {phase.optim.lr}: must be > 0")
    return phases


def _choice(key: str, value, allowed, hint: str = "") -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known: choose one of {', '.join(map(str, allowed))}"
                          + (f" ({hint})" if hint else ""))


def _validate_segmentation(cfg: DictConfig) -> None:
    """Keys of the ``segmentation`` block, and settings that cannot apply to segmentation."""
    _choice("segmentation.loss", cfg.segmentation.loss, LOSSES)
    if not isinstance(cfg.segmentation.overlays, int) or cfg.segmentation.overlays < 0:
        raise ConfigError(f"segmentation.overlays={cfg.segmentation.overlays!r}: a count of test images >= 0")
    if str(cfg.data.cache_features).lower() == "true":
        raise ConfigError("data.cache_features=true: segmentation trains on random crops, so backbone "
                          "features cannot be cached; use data.cache_features=auto")
    if cfg.imbalance != "none":
        raise ConfigError(f"imbalance={cfg.imbalance} is for classification; for segmentation use "
                          "segmentation.class_weights=true (weights from pixel frequencies)")
    if cfg.head.kind == "deeplabv3plus" and cfg.schedule.batch_size < 2:
        raise ConfigError("head=deeplabv3plus needs schedule.batch_size >= 2 (its image-pooling branch "
                          "normalizes over the batch); use a larger batch or head=unet")
