"""Optimizers and learning-rate schedules built fresh for every phase: the builders of
``finetune.run.OPTIMIZERS`` and ``finetune.run.SCHEDULERS``.

Per-group learning rates are the real ``lr`` of each param group (see ``freezing.param_groups``);
schedules are multiplicative factors on those base rates, so they work with any torch optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

Factor = Callable[[int, int, int], float]  # (step, total steps, warm-up steps) -> multiple of the base lr


def adamw(groups: list[dict], momentum: float) -> Optimizer:
    """AdamW over named param groups with their own lr (``momentum`` is SGD's)."""
    return torch.optim.AdamW(groups)


def sgd(groups: list[dict], momentum: float) -> Optimizer:
    """SGD, Nesterov when ``momentum`` > 0."""
    return torch.optim.SGD(groups, momentum=momentum, nesterov=momentum > 0)


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _factor_schedule(factor: Factor) -> Callable[[Optimizer, int, int], LRScheduler]:
    """A scheduler builder multiplying every base lr by ``factor(step, total_steps, warmup_steps)``."""

    def build(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
        return LambdaLR(optimizer, lambda step: factor(step, total_steps, warmup_steps))

    return build


constant = _factor_schedule(lambda step, total, warmup: 1.0)
cosine = _factor_schedule(lambda step, total, warmup: warmup_cosine_factor(step, total, 0))
warmup_cosine = _factor_schedule(warmup_cosine_factor)
step = _factor_schedule(lambda step, total, warmup: 0.1 ** (3 * step // max(1, total)))  # x0.1 at 1/3 and 2/3


def onecycle(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
    """torch's one-cycle policy peaking at each group's lr; the warm-up (1-50 % of the steps) is its rise.

    The rise takes at least 2 steps and the cycle at least twice the rise: torch divides by zero when the rise
    ends on step 0 (a 1-step rise, e.g. 1 % of 100 steps) or the run has under 3 steps; a run that short stops
    within its cycle."""
    rise = max(2, min(max(warmup_steps, math.ceil(0.01 * total_steps)), total_steps // 2))
    cycle = max(total_steps, 2 * rise)
    return OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=cycle, pct_start=rise / cycle
    )


def plateau(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> ReduceLROnPlateau:
    """x0.1 after 2 epochs without improvement of the monitored metric."""
    return ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
