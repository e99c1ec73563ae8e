"""``ema.decay``: an exponential moving average of the weights, validated, tested and exported.

Lightning's ``WeightAveraging`` callback does the bookkeeping: it keeps an ``AveragedModel``, swaps
the average in for every validation (so the best checkpoint is picked by the average's score),
writes the average into each checkpoint's ``state_dict`` (the training weights go to
``current_model_state``, from which a resumed run continues) and copies the average into the model
when a phase ends. Two things differ from Lightning's ``EMAWeightAveraging``:

- the update is a ``lerp`` over parameters and buffers (timm ``ModelEmaV3``'s), which leaves a
  value that did not change bit-identical: frozen stages and their BatchNorm statistics stay exactly
  the pretrained ones (``decay * p + (1 - decay) * p`` would not); integer buffers are copied;
- the decay warms up as timm's does, ``1 - (1 + n) ** -2/3`` after n updates, capped at ``ema.decay``:
  a fine-tune of a few hundred steps would otherwise return weights close to where it started.

Each phase averages its own steps, starting from the weights the previous phase ended with (its
average).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import DictConfig

WARMUP_POWER = 2 / 3  # timm ModelEmaV3's default warmup


def ema_decay(decay: float, updates: int, warmup: bool = True) -> float:
    """The decay of update number ``updates + 1``: ``decay``, or during warmup the smaller
    ``1 - (1 + updates) ** -WARMUP_POWER``."""
    if not warmup:
        return decay
    return min(decay, 1.0 - (1.0 + updates) ** -WARMUP_POWER)


class WeightsEMA(WeightAveraging):
    """Lightning's weight averaging with the exact, warmed-up EMA update of the module docstring."""

    def __init__(self, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        super().__init__(use_buffers=True, multi_avg_fn=self._update)

    def _update(
        self, averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        weight = 1.0 - ema_decay(self.decay, int(num_averaged), self.warmup)
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(list(averaged), list(current), weight)
        else:  # e.g. BatchNorm's num_batches_tracked
            for avg, cur in zip(averaged, current):
                avg.copy_(cur)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._device = trainer.strategy.root_device  # the average lives where the model trains
        super().setup(trainer, pl_module, stage)


def ema_callbacks(cfg: DictConfig) -> list[WeightsEMA]:
    """The phase's EMA callback (``ema.decay``), or none."""
    decay = cfg.ema.decay
    if decay is None:
        return []
    return [WeightsEMA(float(decay), cfg.ema.warmup)]
