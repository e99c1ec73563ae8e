"""Optimizers and learning-rate schedules built fresh for every phase.

Per-group learning rates are the real ``lr`` of each param group (see ``freezing.param_groups``);
schedules are multiplicative factors on those base rates, so they work with any torch optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from finetune.run import SCHEDULERS

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "adamw": lambda groups, momentum: torch.optim.AdamW(groups),
    "sgd": lambda groups, momentum: torch.optim.SGD(groups, momentum=momentum, nesterov=momentum > 0),
}


def build_optimizer(name: str, groups: list[dict], momentum: float = 0.9) -> Optimizer:
    """``adamw`` or ``sgd`` (Nesterov momentum) over named param groups with their own lr."""
    if name not in OPTIMIZERS:
        raise ValueError(f"schedule.optimizer={name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](groups, momentum)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _step_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """×0.1 after one third and again after two thirds of the steps."""
    return 0.1 ** (3 * step // max(1, total_steps))


FACTORS: dict[str, Callable[[int, int, int], float]] = {
    "constant": lambda step, total, warmup: 1.0,
    "cosine": lambda step, total, warmup: warmup_cosine_factor(step, total, 0),
    "warmup_cosine": warmup_cosine_factor,
    "step": _step_factor,
}


def build_scheduler(name: str, optimizer: Optimizer, total_steps: int, warmup_steps: int) -> dict:
    """A Lightning ``lr_scheduler`` config: step-wise schedules, or plateau on ``val/loss`` per epoch."""
    if name in FACTORS:
        factor = FACTORS[name]
        scheduler = LambdaLR(optimizer, lambda step: factor(step, total_steps, warmup_steps))
        return {"scheduler": scheduler, "interval": "step"}
    if name == "onecycle":
        scheduler = OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(1, total_steps),
            pct_start=min(0.5, max(0.01, warmup_steps / max(1, total_steps))),
        )
        return {"scheduler": scheduler, "interval": "step"}
    if name == "plateau":
        return {
            "scheduler": ReduceLROnPlateau(optimizer, factor=0.1, patience=2),
            "interval": "epoch",
            "monitor": "val/loss",
        }
    raise ValueError(f"schedule.scheduler={name!r}: choose one of {', '.join(SCHEDULERS)}")
