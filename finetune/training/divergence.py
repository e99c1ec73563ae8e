"""Stop a phase whose training loss diverges, before diverged weights are tested or exported.

The rule (``DivergenceRule``) is applied to every training step's loss: a non-finite loss stops the
phase at once; a loss above ``FACTOR`` times the phase's starting loss (its first step's, taken before
any update of the phase) for ``PATIENCE`` steps in a row stops it too. Under DDP every rank stops at the
same step: the decision is reduced across ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from finetune.run.errors import TrainingDiverged
from finetune.training.distributed import is_global_zero
from finetune.training.interrupts import log_to_run_file

# Measured (issue 25, item 6): step losses logged every step, 20-40 steps per phase, AdamW unless named;
# "sustained" = the largest K that 3 consecutive steps all exceed, as a multiple of the first step's loss.
#   runs that trained: digits (EfficientNet-Lite0 pretrained, 32 px) lr 5e-3 / 3e-2 / 1e-1: 1.02 / 0.995 / 4.34;
#     random resnet10t lr 5e-3 / 1: 0.93 / 10.3; fastai-like two phases lr 5e-3 / 1e-1: 1.0 / 2.1;
#     hymenoptera (64 px) lr 5e-3 / 1e-1: 1.06 / 15.2; breastmnist lr 5e-3 / 1e-1 / SGD lr 1: 0.94 / 8.4 / 9.9
#     (single steps reach 64.6x there and recover: final loss 0.49 from 0.67).
#   runs that ended at chance accuracy without a non-finite loss: digits lr 0.3 / 1, fastai-like lr 1:
#     13.4 / 41.6 / 57.1.
#   diverging: digits lr 10: 129 (single steps 272x, then bounded near chance); lr 1e3: 6.6e4x at step 2, 1e25x
#     later, finite (exit 0, test acc 0.09); lr 1e6: 1.1e8x at step 2, NaN at step 8; lr 1e30: NaN at step 2.
# 100x for 3 steps: 6.6x above every run that trained, 1.75x above the worst that did not, below lr 10's 129.
# The start counts as at least MIN_START: a phase that starts from a trained head (phase 2 of gradual, init_from)
# may start at a loss of 0.01, and a jump to 1-2 while BatchNorm statistics adapt is not divergence; a loss above
# 100 sustained is, for every loss we train with (cross-entropy, BCE, Dice + CE).
FACTOR = 100.0
PATIENCE = 3
MIN_START = 1.0


@dataclass
class DivergenceRule:
    """The divergence test of one phase, fed one step loss at a time."""

    factor: float = FACTOR
    patience: int = PATIENCE
    min_start: float = MIN_START
    start: float | None = None  # the phase's first step loss, at least min_start
    above: int = 0  # consecutive steps above factor x start

    def diverged(self, loss: float) -> bool:
        """True when ``loss`` (the next step's) is non-finite or ends a run of ``patience`` steps above
        ``factor`` times the starting loss (at least ``min_start``)."""
        if not math.isfinite(loss):
            return True
        if self.start is None:
            self.start = max(loss, self.min_start)
            return False
        self.above = self.above + 1 if loss > self.factor * self.start else 0
        return self.above >= self.patience


class StopOnDivergence(L.Callback):
    """Ends the phase (``TrainingDiverged``: no test, no export) when its ``DivergenceRule`` says so;
    the run directory keeps the checkpoints of the epochs before."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.rule, self.lr = DivergenceRule(), "unknown"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rule, self.lr = DivergenceRule(), "unknown"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.lr = largest_lr(trainer)  # the step's lr (a schedule may have annealed it to 0 by the batch end)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        loss = step_loss(outputs)
        diverged = loss is not None and self.rule.diverged(loss)
        weights_lost = False
        if not diverged and batch_idx + 1 >= trainer.num_training_batches:  # no later loss would show it
            diverged = weights_lost = not finite_weights(pl_module)
        if trainer.world_size > 1:  # every rank stops at this step if any rank's loss diverged
            diverged = trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:
            self._stop(trainer, loss, weights_lost)

    def _stop(self, trainer: L.Trainer, loss: float | None, weights_lost: bool = False) -> None:
        message = None
        if is_global_zero():
            shown = "not computed on this rank" if loss is None else f"{loss:.4g}"
            shown += ", then non-finite weights" if weights_lost else ""
            message = (
                f"training diverged in phase {self.phase!r} at step {trainer.global_step} "
                f"(loss {shown}, lr {self.lr}); lower schedule.lr or run finetune lr-find"
            )
            log_to_run_file(Path(trainer.default_root_dir), message)  # make_trainer: the run directory
        raise TrainingDiverged(message)


def finite_weights(module: torch.nn.Module) -> bool:
    """Whether every trainable parameter is finite (one fused norm per tensor, one device sync): the last
    step of an epoch can make them non-finite with a finite loss, and nothing after it would notice."""
    trainable = [p.detach() for p in module.parameters() if p.requires_grad]
    return not trainable or bool(torch.isfinite(torch.stack(torch._foreach_norm(trainable))).all())


def step_loss(outputs) -> float | None:
    """The training step's loss as a float (None when the step returned none)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None


def largest_lr(trainer: L.Trainer) -> str:
    """The largest learning rate of the phase's optimizer and its group's name, e.g. ``1e+06 (head)``."""
    groups = [g for optimizer in trainer.optimizers for g in optimizer.param_groups]
    if not groups:
        return "unknown"
    group = max(groups, key=lambda g: g["lr"])
    return f"{group['lr']:.3g}" + (f" ({group['name']})" if group.get("name") else "")
