"""The run contract every layer may use: config, schedule, run records, run directory and lock, console,
optimizers, errors.

This file holds the registries the config checks read (no torch import); each entry names its builder
in ``finetune.run.optim``, imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from finetune.run.registry import Entry, Registry, resolve

if TYPE_CHECKING:
    from torch.optim import Optimizer

CACHE_CHOICES = ("auto", "true", "false")  # data.cache_features (finetune.training.features)


@dataclass(frozen=True)
class OptimizerKind(Entry):
    """A torch optimizer (``schedule.optimizer=<name>``) over named param groups with their own lr."""

    builder: str  # (param groups, momentum) -> Optimizer

    def build(self, groups: list[dict], momentum: float = 0.9) -> Optimizer:
        return resolve(self.builder)(groups, momentum)


@dataclass(frozen=True)
class SchedulerKind(Entry):
    """A learning-rate schedule (``schedule.scheduler=<name>``) and how Lightning steps it."""

    builder: str  # (optimizer, total steps, warm-up steps) -> a torch LR scheduler
    interval: str = "step"  # Lightning steps it every optimizer "step" or every "epoch"
    monitor: str | None = None  # the metric it is stepped with (plateau schedules)

    def build(self, optimizer: Optimizer, total_steps: int, warmup_steps: int) -> dict:
        """A Lightning ``lr_scheduler`` config over ``optimizer`` for a phase of ``total_steps``."""
        scheduler = resolve(self.builder)(optimizer, total_steps, warmup_steps)
        return {
            "scheduler": scheduler,
            "interval": self.interval,
            **({"monitor": self.monitor} if self.monitor else {}),
        }


OPTIMIZERS: Registry[OptimizerKind] = Registry(
    "schedule.optimizer",
    [
        OptimizerKind("adamw", "AdamW (decoupled weight decay)", "finetune.run.optim:adamw"),
        OptimizerKind("sgd", "SGD with Nesterov momentum (schedule.momentum)", "finetune.run.optim:sgd"),
    ],
)
SCHEDULERS: Registry[SchedulerKind] = Registry(
    "schedule.scheduler",
    [
        SchedulerKind("constant", "the base learning rates throughout", "finetune.run.optim:constant"),
        SchedulerKind("cosine", "cosine decay to 0, no warm-up", "finetune.run.optim:cosine"),
        SchedulerKind("warmup_cosine", "linear warm-up, then cosine decay to 0", "finetune.run.optim:warmup_cosine"),
        SchedulerKind(
            "step", "x0.1 after one third and again after two thirds of the steps", "finetune.run.optim:step"
        ),
        SchedulerKind(
            "onecycle", "torch's one-cycle policy, warm-up as its rising part", "finetune.run.optim:onecycle"
        ),
        SchedulerKind(
            "plateau",
            "x0.1 when val/loss has not improved for 2 epochs",
            "finetune.run.optim:plateau",
            interval="epoch",
            monitor="val/loss",
        ),
    ],
)
