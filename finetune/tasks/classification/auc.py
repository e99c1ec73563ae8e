"""The classification AUC from scores that keep the logits' order.

A float32 softmax / sigmoid saturates at p = 1.0 once a logit gap exceeds ~17: confident images tie, and an
AUC computed from probabilities then changes with the scale of the logits (e.g. the temperature of
``calibration=temperature``, which cannot reorder them). The AUC therefore ranks by the log-odds
log(p / (1 - p)), computed from the logits without forming p: binary, the logit gap of class 1; multi-class
(one-vs-rest), l_k - logsumexp over the other classes; multi-label, each logit. They stay exact in float32,
so no float64 is needed (MPS has none).
"""

from __future__ import annotations

import torch
from torch.nn.functional import one_hot
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat


def log_odds(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Per class log(p / (1 - p)) of the head's probabilities p (``probabilities``); binary: of class 1 only."""
    logits = logits.float()
    if task == "multi-label":
        return logits
    if task == "binary":
        return logits[:, 1] - logits[:, 0]
    total = logits.logsumexp(dim=-1, keepdim=True)
    rest = total + torch.log1p(-(logits - total).exp())  # log(1 - p): accurate where p < 1/2, every class but the top
    top = logits.argmax(dim=-1, keepdim=True)
    rest_of_top = logits.scatter(-1, top, -torch.inf).logsumexp(dim=-1, keepdim=True)
    return logits - rest.scatter(-1, top, rest_of_top)


class LogOddsAUROC(Metric):
    """ROC AUC of raw scores (``log_odds``), never squashed: binary (1-d scores) or the macro mean over
    columns (multi-class one-vs-rest with class targets, multi-label with multi-hot targets). Each column is
    torchmetrics' exact ``BinaryAUROC`` with its sigmoid switched off; as in ``MulticlassAUROC`` /
    ``MultilabelAUROC``, a column without positives scores 0 (with torchmetrics' warning)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores)
        self.targets.append(targets)

    def compute(self) -> torch.Tensor:
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        if scores.ndim == 1:
            return self._column(scores, targets)
        indicator = targets if targets.ndim == 2 else one_hot(targets.long(), scores.shape[1])
        aucs = torch.stack([self._column(scores[:, k], indicator[:, k]) for k in range(scores.shape[1])])
        return aucs[~aucs.isnan()].mean()

    def _column(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        metric = BinaryAUROC(normalization=None, sync_on_compute=False).to(scores.device)  # already gathered
        metric.update(scores, targets.long())
        return metric.compute()
