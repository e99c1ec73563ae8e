"""Class imbalance: the top-level ``imbalance`` choice, decided from the train split's class counts.

- ``none``: plain loss, plain shuffling.
- ``weighted_loss``: cross-entropy weights N / (K * n_k) (scikit-learn's "balanced": every class
  carries the same total weight, the average sample weight stays 1); multi-label: BCE
  ``pos_weight`` = negatives / positives per label.
- ``sampler``: class-balanced epochs (samplers.ClassBalancedSampler), plain loss. Single-label only.
- ``auto``: ``weighted_loss`` when the largest class is more than AUTO_RATIO times the smallest,
  else ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from finetune.data import IMBALANCE_CHOICES
from finetune.run.errors import DatasetError

AUTO_RATIO = 3.0


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Largest over smallest class count (inf when a class has no training images)."""
    smallest = min(counts)
    return float("inf") if smallest == 0 else max(counts) / smallest


def resolve_imbalance(mode: str, counts: Sequence[int], multilabel: bool = False) -> str:
    """The handling ``mode`` means for these train counts: none | weighted_loss | sampler."""
    if mode not in IMBALANCE_CHOICES:
        raise DatasetError(f"imbalance={mode!r}; use one of {list(IMBALANCE_CHOICES)}")
    if mode == "sampler" and multilabel:
        raise DatasetError(
            "imbalance=sampler balances single-label classes; for multi-label data use "
            "imbalance=weighted_loss (BCE pos_weight per label)"
        )
    if mode == "auto":
        return "weighted_loss" if imbalance_ratio(counts) > AUTO_RATIO else "none"
    return mode


def loss_weights(counts: Sequence[int], multilabel: bool = False, num_samples: int | None = None) -> torch.Tensor:
    """Cross-entropy class weights N / (K * n_k); multi-label: BCE pos_weight (N - n_k) / n_k.

    ``num_samples`` (N) is needed for multi-label, where counts are positives per label; a class
    or label without training positives gets weight 0 / pos_weight 1 (it cannot be learned anyway).
    """
    n = torch.as_tensor(list(counts), dtype=torch.float32)
    if multilabel:
        if num_samples is None:
            raise ValueError("multi-label pos_weight needs num_samples (the train split's size)")
        return torch.where(n > 0, (num_samples - n) / n.clamp(min=1), torch.ones_like(n))
    total, k = n.sum(), (n > 0).sum()
    return torch.where(n > 0, total / (k * n.clamp(min=1)), torch.zeros_like(n))
