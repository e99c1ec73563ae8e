"""Mixup / CutMix of training batches (``mix.*``): timm's ``Mixup``, drawn reproducibly."""

from __future__ import annotations

import numpy as np
import torch


class BatchMixer:
    """timm's ``Mixup`` (mixup and / or cutmix, one draw per batch) on a training batch: the mixed
    inputs and soft targets (label smoothing included). The inputs are copied, never mixed in place.

    Every draw is seeded from (seed, phase, epoch, batch, rank) rather than numpy's global state, so a
    resumed run mixes exactly as an uninterrupted one. timm mixes pairs (i, n-1-i) and asserts an
    even batch; an odd last batch leaves its last image unmixed (smoothed one-hot target).
    """

    def __init__(
        self, num_classes: int, mixup: float, cutmix: float, prob: float, label_smoothing: float, seed: int
    ) -> None:
        from timm.data import Mixup

        self.num_classes, self.label_smoothing, self.seed = num_classes, label_smoothing, seed
        self.mixup = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=prob,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target

        inputs, even = inputs.clone(), len(inputs) - len(inputs) % 2
        state = np.random.get_state()  # timm draws from numpy's global generator
        np.random.seed(np.random.SeedSequence([self.seed, *key]).generate_state(1)[0])
        try:
            soft = [self.mixup(inputs[:even], targets[:even])[1]] if even else []  # mixes the view in place
        finally:
            np.random.set_state(state)
        if even < len(inputs):
            soft.append(mixup_target(targets[even:], self.num_classes, 1.0, self.label_smoothing))
        return inputs, torch.cat(soft)
