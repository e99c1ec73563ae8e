"""A schedule as a list of phases, read from the ``schedule`` config group (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from finetune.run.errors import ConfigError

PHASE_KEY = "finetune_phase"  # checkpoint entry: index of the phase that wrote it
DEBUG_EPOCHS = 1  # trainer.debug (trainer=debug): the epochs of every phase


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
    """The schedule's phases; each phase may override any optimiser key of the schedule. A debug run
    (``trainer.debug``) runs ``DEBUG_EPOCHS`` of each."""
    schedule = cfg.schedule
    if not schedule.phases:
        raise ConfigError("schedule.phases is empty: give at least one phase, e.g. schedule=finetune")
    base = {k: schedule[k] for k in _PHASE_OPTIM_KEYS}
    phases = []
    for i, raw in enumerate(schedule.phases):
        raw = OmegaConf.to_container(raw, resolve=True)
        unknown = set(raw) - _PHASE_OPTIM_KEYS - {"name", "epochs", "freeze"}
        if unknown:
            raise ConfigError(
                f"schedule.phases[{i}] has unknown keys {sorted(unknown)}; allowed: "
                f"name, epochs, freeze, {', '.join(sorted(_PHASE_OPTIM_KEYS))}"
            )
        epochs = raw.get("epochs")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"schedule.phases[{i}].epochs={epochs!r}: must be a whole number >= 1")
        optim = PhaseOptim(**(base | {k: raw[k] for k in _PHASE_OPTIM_KEYS & set(raw)}))
        name = raw.get("name") or f"phase{i + 1}"
        epochs = DEBUG_EPOCHS if cfg.trainer.debug else epochs
        phase = Phase(name, epochs, raw.get("freeze", cfg.backbone.freeze), optim)
        if phase.freeze != "all" and not optim.backbone_lr_mult:
            raise ConfigError(
                f"schedule.phases[{i}] ({phase.name!r}) trains backbone stages (freeze={phase.freeze}) with "
                "backbone_lr_mult=0: their weights would not learn while their BatchNorm statistics still drift. "
                "Set schedule.backbone_lr_mult (e.g. 0.1; schedule=linear_probe sets 0) or freeze: all in this phase"
            )
        phases.append(phase)
    return phases


def phase_index(phases: list[Phase], key: str) -> int:
    """The phase called ``key``, or at index ``key`` of ``schedule.phases`` (from 0); a ConfigError
    lists the phases."""
    names = [p.name for p in phases]
    if key in names:
        return names.index(key)
    if key.isdigit() and int(key) < len(phases):
        return int(key)
    listed = ", ".join(f"{i}={name}" for i, name in enumerate(names))
    raise ConfigError(f"phase={key!r}: this schedule has no such phase; choose a name or an index from 0 ({listed})")


def lr_key(cfg: DictConfig, index: int) -> str:
    """The override that sets the base (head) lr of phase ``index`` and of no other phase.

    A phase with its own ``lr`` has ``schedule.phases.<index>.lr``; a phase that reads ``schedule.lr``
    (the schema's ``${schedule.lr}``) has that key when it is the only one reading it, else
    ``++schedule.phases.<index>.lr`` (gives the phase its own lr)."""
    raw = cfg.schedule.phases

    def own(phase: DictConfig) -> bool:
        return "lr" in phase and not OmegaConf.is_interpolation(phase, "lr")

    if own(raw[index]):
        return f"schedule.phases.{index}.lr"
    shared = any(not own(p) for i, p in enumerate(raw) if i != index)
    return f"++schedule.phases.{index}.lr" if shared else "schedule.lr"
