"""The classification AUC ranks images by their logits, not by float32 probabilities: a softmax / sigmoid
saturates at p = 1.0 for a logit gap above ~17, tying confident images, so the AUC would change with the
temperature that divides the logits (it cannot reorder them)."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score
from torchmetrics.classification import MulticlassAUROC, MultilabelAUROC

from finetune.tasks.classification.module import classification_metrics, probabilities

TEMPERATURES = (0.5, 2.0, 5.0)


def interleaved(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n confident scores 20..40 (distinct, 0.25 apart) with labels shuffled so positives and negatives interleave."""
    rng = np.random.default_rng(seed)
    scores = 20 + 0.25 * rng.permutation(n)
    labels = (rng.random(n) < (scores - 15) / 30).astype(np.int64)  # higher scores: more often positive
    labels[:2] = (0, 1)
    return scores, labels


def auc(logits: torch.Tensor, targets: torch.Tensor, num_classes: int, multilabel: bool) -> float:
    metrics = classification_metrics(num_classes, multilabel, full=False)
    half = len(logits) // 2  # accumulated over two batches
    metrics.update(logits[:half], targets[:half])
    metrics.update(logits[half:], targets[half:])
    return float(metrics.compute()["auc"])


def assert_scale_free(logits: torch.Tensor, targets: torch.Tensor, num_classes: int, multilabel: bool, expected):
    base = auc(logits, targets, num_classes, multilabel)
    assert base == pytest.approx(expected, abs=1e-6)
    for t in TEMPERATURES:
        assert auc(logits / t, targets, num_classes, multilabel) == base


def test_binary_auc_ranks_by_the_logit_gap():
    gap, y = interleaved(80, seed=0)
    logits = torch.tensor(np.stack([np.zeros_like(gap), gap], 1), dtype=torch.float32)
    expected = roc_auc_score(y, gap)
    saturated = roc_auc_score(y, probabilities(logits, "binary")[:, 1].numpy())
    assert abs(saturated - expected) > 0.05  # the float32 probabilities tie: the bug this guards against
    assert_scale_free(logits, torch.tensor(y), 2, False, expected)


def exact_ovr_auc(logits: np.ndarray, y: np.ndarray) -> float:
    """sklearn's one-vs-rest macro AUC of the exact (float64) softmax, ranked by its log-odds."""
    log_odds = np.stack([logits[:, k] - logsumexp(np.delete(logits, k, axis=1), axis=1) for k in range(3)], 1)
    return float(np.mean([roc_auc_score(y == k, log_odds[:, k]) for k in range(3)]))


def test_multiclass_auc_is_one_vs_rest_of_the_exact_probabilities():
    """A temperature can reorder one class's probability across images (softmax over several classes), so the
    multi-class AUC may change with T: it is that of the exact probabilities of logits / T, never of saturated ones."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(0, 1, (90, 3))
    gap = 20 + 0.25 * rng.permutation(90)
    winner = np.where(rng.random(90) < (gap - 15) / 30, y, (y + 1) % 3)  # confident; the larger gaps more often right
    logits[np.arange(90), winner] += gap
    logits32 = torch.tensor(logits, dtype=torch.float32)
    saturated = roc_auc_score(y, probabilities(logits32, "multi-class").numpy().astype(np.float64), multi_class="ovr")
    assert abs(saturated - exact_ovr_auc(logits32.double().numpy(), y)) > 0.02
    for t in (1.0, *TEMPERATURES):
        scaled = logits32 / t
        expected = exact_ovr_auc(scaled.double().numpy(), y)
        assert auc(scaled, torch.tensor(y), 3, False) == pytest.approx(expected, abs=1e-6)


def test_multilabel_auc_ranks_by_each_logit():
    columns = [interleaved(60, seed) for seed in (2, 3, 4)]
    logits = np.stack([s * (1 if k != 1 else -1) for k, (s, _) in enumerate(columns)], 1)  # label 1: negative side
    y = np.stack([labels if k != 1 else 1 - labels for k, (_, labels) in enumerate(columns)], 1)
    expected = np.mean([roc_auc_score(y[:, k], logits[:, k]) for k in range(3)])
    assert_scale_free(torch.tensor(logits, dtype=torch.float32), torch.tensor(y), 3, True, expected)


@pytest.mark.filterwarnings("ignore:No positive samples in targets")
def test_unsaturated_auc_and_absent_classes_match_torchmetrics():
    """Where probabilities do not saturate, the AUC is torchmetrics' own, including a class without images."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(40, 4, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)  # class 3 never occurs
    reference = MulticlassAUROC(4, average="macro")
    reference.update(logits.softmax(1), y)
    assert auc(logits, y, 4, False) == pytest.approx(float(reference.compute()), abs=1e-6)
    ym = torch.randint(0, 2, (40, 4), generator=gen)
    ym[:, 2] = 0  # a label without positives
    reference = MultilabelAUROC(4, average="macro")
    reference.update(logits.sigmoid(), ym)
    assert auc(logits, ym, 4, True) == pytest.approx(float(reference.compute()), abs=1e-6)
