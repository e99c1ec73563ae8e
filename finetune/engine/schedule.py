"""A schedule as a list of phases, read from the ``schedule`` config group (no torch import)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from finetune.errors import ConfigError

PHASE_KEY = "finetune_phase"  # checkpoint entry: index of the phase that wrote it


@dataclass(frozen=True)
class PhaseOptim:
    """How one phase optimises: optimizer, real base lr of the head, backbone multiplier, schedule."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    layer_decay: float | None = None
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: str = "warmup_cosine"
    warmup_epochs: float = 0.0


_PHASE_OPTIM_KEYS = {f.name for f in fields(PhaseOptim)}


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
