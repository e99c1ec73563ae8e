"""Probabilities a user can trust: temperature scaling fitted on the validation split, and the
calibration error (ECE) with the bins of a reliability diagram.

Temperature scaling (Guo et al., 2017) divides the logits by one number T > 0 chosen to minimise the
validation negative log-likelihood. It changes no decision: argmax is unchanged, a binary or
per-label probability crosses 0.5 where the logit crosses 0, and a threshold tuned on validation
is tuned on the calibrated probabilities. It changes how far the probabilities can be trusted.

Calibration error compares confidence with frequency, in bins of the confidence:
- single-label: the top-label confidence (largest probability) against whether that label is right;
- multi-label: every label's probability against whether the label is present.
``ece`` uses 15 equal-width bins; ``adaptive_ece`` equal-mass bins (each holds the same number of
predictions), which do not leave most bins empty when a model is confident. Both weight a bin by
its share of the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

N_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """Per non-empty bin: mean confidence, observed frequency, number of predictions."""

    confidence: np.ndarray
    frequency: np.ndarray
    count: np.ndarray

    @property
    def error(self) -> float:
        """The calibration error: sum over bins of share * |frequency - confidence|."""
        return float(np.sum(self.count / self.count.sum() * np.abs(self.frequency - self.confidence)))

    def to_dict(self) -> dict:
        return {
            "confidence": np.round(self.confidence, 6).tolist(),
            "frequency": np.round(self.frequency, 6).tolist(),
            "count": self.count.astype(int).tolist(),
        }


def confidences(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome in {0, 1}) pairs as the module docstring defines them."""
    probs = np.asarray(probs, dtype=np.float64)
    if multilabel:
        return probs.ravel(), (np.asarray(targets) > 0.5).astype(np.float64).ravel()
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(targets)).astype(np.float64)


def reliability_bins(
    conf: np.ndarray, outcome: np.ndarray, adaptive: bool = False, n_bins: int = N_BINS
) -> ReliabilityBins:
    """Bins of equal width over [0, 1] (a confidence on an edge goes to the bin below it, as
    torchmetrics'), or of equal mass (``adaptive``: sorted confidences in ``n_bins`` near-equal runs)."""
    if adaptive:
        order = np.argsort(conf, kind="stable")
        groups = [g for g in np.array_split(order, min(n_bins, len(conf))) if len(g)]
    else:
        index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
        groups = [np.flatnonzero(index == b) for b in range(n_bins)]
        groups = [g for g in groups if len(g)]
    return ReliabilityBins(
        np.array([conf[g].mean() for g in groups]),
        np.array([outcome[g].mean() for g in groups]),
        np.array([len(g) for g in groups], dtype=np.float64),
    )


def calibration_errors(probs: np.ndarray, targets: np.ndarray, multilabel: bool) -> dict[str, float]:
    """``ece`` and ``adaptive_ece`` of probabilities against targets."""
    conf, outcome = confidences(probs, targets, multilabel)
    return {"ece": reliability_bins(conf, outcome).error, "adaptive_ece": reliability_bins(conf, outcome, True).error}


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Mean cross-entropy (binary cross-entropy per label for multi-label) of raw logits."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets.long())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> float:
    """The T > 0 minimising the NLL of ``logits / T`` (pass validation logits, never test): L-BFGS on
    log T, from T = 1."""
    logits, targets = logits.detach().double().cpu(), targets.detach().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = negative_log_likelihood(logits / log_t.exp(), targets, multilabel)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
