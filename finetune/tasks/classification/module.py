"""Image classification (binary, multi-class, multi-label; ordinal grades as multi-class) as a
LightningModule, with the MedMNIST benchmark's metrics.

The task type decides the head activation (softmax; sigmoid for multi-label), the loss
(cross-entropy; BCE for multi-label) and the metrics. Metrics are fed probabilities, never raw
logits (torchmetrics would guess from the value range whether to apply softmax/sigmoid), except
the AUC, which ranks by the log-odds of those probabilities (``auc.py``: float32 probabilities
saturate at 1 and would tie confident images, making the AUC depend on the logits' scale):
- scores: ``auc`` (binary: AUC of the positive class, index 1; multi-class: one-vs-rest macro;
  multi-label: mean over labels — as MedMNIST's evaluator), ``acc_top5`` (> 5 classes, test);
- decisions: ``acc``, ``balanced_acc`` (mean per-class recall; multi-label: mean over labels of
  (TPR + TNR) / 2), ``f1_macro``, and in the test also per-class ``precision`` / ``recall`` and the
  ``confusion`` matrix. Binary and multi-label decisions use ``threshold`` on the positive-class
  probability (default 0.5, the same as argmax for two classes); ``fit_on_validation`` picks it on
  the validation split (maximal balanced accuracy), never on the test split. With a threshold
  other than the default, the test also reports ``acc_at_0.5``, ``balanced_acc_at_0.5`` and
  ``f1_macro_at_0.5`` (the benchmark's decision).

Before the test (``fit_on_validation``, on the validation split): a temperature T (``calibration=
temperature``; see ``calibration.py``), then the threshold on the calibrated probabilities. The test
divides its logits by T (1 without calibration), reports ``ece`` / ``adaptive_ece`` of the
probabilities it decided with, and keeps the errors before and after T with reliability bins in
``calibration``. Test-time augmentation (``tta``) averages the logits of the image and its flips,
in the test and in what is fitted on validation (per-epoch validation stays un-augmented).

Training options (off by default): label smoothing (``loss.label_smoothing``: cross-entropy against
1 - e + e/K on the class and e/K elsewhere; multi-label: BCE against y(1 - e) + e/2, timm's
definition) and mixup / cutmix of training batches (``mix.*``, single-label only, timm's ``Mixup``
with soft-target cross-entropy). Both change the training loss only: validation and test report
the plain loss, and training accuracy is counted against each image's own label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchmetrics import CatMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelConfusionMatrix,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
    MultilabelStatScores,
)

from finetune.data.sources import TASK_TYPES
from finetune.data.transforms import FLIP_AXES
from finetune.models.freezing import FineTuneModel
from finetune.run.errors import FinetuneError
from finetune.run.schedule import PhaseOptim
from finetune.tasks.classification.auc import LogOddsAUROC, log_odds
from finetune.tasks.classification.calibration import (
    calibration_errors,
    confidences,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from finetune.tasks.classification.mixing import BatchMixer
from finetune.tasks.phased import PhasedTask

log = logging.getLogger(__name__)

THRESHOLD_TASKS = ("binary", "multi-label")  # tasks whose decision is a threshold on a probability


def task_type(num_classes: int, multilabel: bool, task: str | None = None) -> str:
    """The task: as given, else multi-label / binary (2 classes) / multi-class."""
    if task is None:
        task = "multi-label" if multilabel else ("binary" if num_classes == 2 else "multi-class")
    if task not in TASK_TYPES:
        raise ValueError(f"task={task!r}; use one of {TASK_TYPES}")
    if (task == "multi-label") != multilabel:
        raise ValueError(f"task={task!r} disagrees with multilabel={multilabel}")
    if task == "binary" and num_classes != 2:
        raise ValueError(f"a binary task has 2 classes, not {num_classes}")
    return task


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """The head activation: sigmoid per label for multi-label, softmax over classes otherwise."""
    logits = logits.float()
    return logits.sigmoid() if task == "multi-label" else logits.softmax(dim=-1)


def decide(
    probs: torch.Tensor, task: str, threshold: float | Sequence[float] | torch.Tensor | None = None
) -> torch.Tensor:
    """Predicted labels: argmax (multi-class), p(class 1) >= threshold (binary), multi-hot
    p >= threshold per label (multi-label; a scalar or one threshold per label)."""
    if task in ("multi-class", "ordinal-regression"):
        return probs.argmax(dim=-1)
    t = torch.as_tensor(0.5 if threshold is None else threshold, dtype=probs.dtype, device=probs.device)
    if task == "binary":
        return (probs[:, 1] >= t).long()
    return (probs >= t).int()


class MultilabelBalancedAccuracy(MultilabelStatScores):
    """Mean over labels of (TPR + TNR) / 2 (a label without positives or negatives counts its one side)."""

    def __init__(self, num_labels: int, **kwargs) -> None:
        super().__init__(num_labels=num_labels, average=None, **kwargs)

    def compute(self) -> torch.Tensor:
        tp, fp, tn, fn = self._final_state()
        tpr = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.nan)
        tnr = torch.where(tn + fp > 0, tn / (tn + fp).clamp(min=1), torch.nan)
        return torch.stack([tpr.float(), tnr.float()]).nanmean(dim=0).nanmean()


class ClassificationMetrics(nn.Module):
    """Score metrics (the AUC from log-odds, the others from probabilities) and decision metrics (from
    predicted labels) of one split."""

    def __init__(
        self, num_classes: int, task: str, full: bool, auc: bool = True, prefix: str = "", only_acc: bool = False
    ) -> None:
        super().__init__()
        self.task, self.prefix = task, prefix
        scores: dict[str, nn.Module] = {}
        if task == "multi-label":
            kw = {"num_labels": num_classes}
            if auc:
                scores["auc"] = LogOddsAUROC()
            decisions = {
                "acc": MultilabelAccuracy(**kw),
                "balanced_acc": MultilabelBalancedAccuracy(**kw),
                "f1_macro": MultilabelF1Score(average="macro", **kw),
            }
            if full:
                decisions |= {
                    "precision": MultilabelPrecision(average=None, **kw),
                    "recall": MultilabelRecall(average=None, **kw),
                    "confusion": MultilabelConfusionMatrix(**kw),
                }
        else:
            kw = {"num_classes": num_classes}
            if auc:
                scores["auc"] = LogOddsAUROC()
            if full and num_classes > 5:
                scores["acc_top5"] = MulticlassAccuracy(average="micro", top_k=5, **kw)
            decisions = {
                "acc": MulticlassAccuracy(average="micro", **kw),
                "balanced_acc": MulticlassRecall(average="macro", **kw),
                "f1_macro": MulticlassF1Score(average="macro", **kw),
            }
            if full:
                decisions |= {
                    "precision": MulticlassPrecision(average=None, **kw),
                    "recall": MulticlassRecall(average=None, **kw),
                    "confusion": MulticlassConfusionMatrix(**kw),
                }
        self.scores = MetricCollection(scores, compute_groups=False) if scores else None
        if only_acc:  # training: one cheap running metric per step (the benchmarks' largest overhead)
            decisions = {"acc": decisions["acc"]}
        self.decisions = MetricCollection(decisions)

    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, threshold: float | Sequence[float] | None = None
    ) -> None:
        probs = probabilities(logits.detach(), self.task)
        targets = targets.int() if self.task == "multi-label" else targets.long()
        if self.scores is not None:
            for name, metric in self.scores.items():
                metric.update(log_odds(logits.detach(), self.task) if name == "auc" else probs, targets)
        self.decisions.update(decide(probs, self.task, threshold), targets)

    def compute(self) -> dict[str, torch.Tensor]:
        values = dict(self.decisions.compute())
        if self.scores is not None:
            values |= {name: metric.compute() for name, metric in self.scores.items()}
        return {f"{self.prefix}{k}": v for k, v in values.items()}

    def reset(self) -> None:
        self.decisions.reset()
        if self.scores is not None:
            for metric in self.scores.values():
                metric.reset()


def classification_metrics(
    num_classes: int,
    multilabel: bool,
    full: bool,
    task: str | None = None,
    auc: bool = True,
    prefix: str = "",
    only_acc: bool = False,
) -> ClassificationMetrics:
    """Metrics of one split (see the module docstring); ``full`` adds the per-class ones,
    ``only_acc`` keeps accuracy alone (the training split)."""
    return ClassificationMetrics(num_classes, task_type(num_classes, multilabel, task), full, auc, prefix, only_acc)


def monitor_metric(task: str, threshold_tuned: bool, choice: str = "auto") -> str:
    """The validation metric that picks the best checkpoint: ``val/<choice>``, or for ``auto`` the
    AUC when the decision threshold is tuned after training or the task is multi-label (accuracy at
    0.5 is then not the decision the run will make; AUC is threshold-free and, on a small val
    split, far less coarse), else the accuracy."""
    if choice == "auto":
        choice = "auc" if task == "multi-label" or (task == "binary" and threshold_tuned) else "acc"
    return f"val/{choice}"


def balanced_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t on ``scores`` (predict positive when score >= t) that maximises balanced
    accuracy on (scores, labels): midpoints between distinct scores are tried; ties go to the one
    nearest 0.5. Without both positives and negatives: 0.5."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = np.sort(scores[labels]), np.sort(scores[~labels])
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-6]])
    tpr = (len(pos) - np.searchsorted(pos, candidates, side="left")) / len(pos)
    tnr = np.searchsorted(neg, candidates, side="left") / len(neg)
    balanced = (tpr + tnr) / 2
    best = np.flatnonzero(np.isclose(balanced, balanced.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def tune_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, task: str, min_per_class: int = 1
) -> float | list[float]:
    """Binary: one threshold on p(class 1); multi-label: one per label (each maximising balanced
    accuracy on the given split — pass the validation split, never the test split). A label with fewer
    than ``min_per_class`` (config ``threshold_tune_min``) images of either class keeps 0.5, and one
    warning (global rank zero only) names every such label."""
    probs, targets = probs.detach().cpu().numpy(), targets.detach().cpu().numpy()
    labels = _threshold_labels(targets, task)
    scores = [probs[:, 1]] if task == "binary" else list(probs.T)
    kept = kept_at_half(targets, task, min_per_class)
    if kept and rank_zero_only.rank == 0:
        log.warning(
            "threshold=tune kept the threshold%s at 0.5: %s, fewer than threshold_tune_min=%d (a threshold tuned "
            "on fewer follows single images); set threshold=0.5 to silence this",
            "" if task == "binary" else f"s of {len(kept)} label(s)",
            ", ".join(kept.values()),
            min_per_class,
        )
    thresholds = [
        0.5 if k in kept else balanced_accuracy_threshold(s, y) for k, (s, y) in enumerate(zip(scores, labels))
    ]
    return thresholds[0] if task == "binary" else thresholds


def kept_at_half(targets: np.ndarray, task: str, min_per_class: int) -> dict[int, str]:
    """The thresholds ``tune_thresholds`` keeps at 0.5 (index 0: binary; the label: multi-label), each with
    why: its scarcer side, e.g. "21 val image(s) of class 0" (binary), "3 positive val image(s) of label 4"."""
    kept = {}
    for k, labels in enumerate(_threshold_labels(np.asarray(targets), task)):
        positives, negatives = int(labels.sum()), int((~labels).sum())
        if min(positives, negatives) < min_per_class:
            positive = positives <= negatives
            count = positives if positive else negatives
            if task == "binary":
                kept[k] = f"{count} val image(s) of class {int(positive)}"
            else:
                kept[k] = f"{count} {'positive' if positive else 'negative'} val image(s) of label {k}"
    return kept


def _threshold_labels(targets: np.ndarray, task: str) -> list[np.ndarray]:
    """The boolean labels each threshold decides: class 1 (binary), each label (multi-label)."""
    if task == "binary":
        return [targets == 1]
    if task == "multi-label":
        return [targets[:, k] > 0.5 for k in range(targets.shape[1])]
    raise ValueError(f"a {task} task decides by argmax; thresholds apply to binary / multi-label tasks")


def flip_averaged(
    forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, flips: Sequence[str]
) -> torch.Tensor:
    """Test-time augmentation: the mean of ``forward`` over the batch and its ``flips`` (``FLIP_AXES``)."""
    views = [forward(inputs), *(forward(inputs.flip(FLIP_AXES[f])) for f in flips)]
    return views[0] if len(views) == 1 else torch.stack(views).mean(dim=0)


class ClassificationTask(PhasedTask):
    """Trains a ``FineTuneModel``; one instance per phase, sharing the same model.

    Each phase's ``configure_optimizers`` builds a fresh optimizer and scheduler over the stages
    trainable in that phase: no param group is ever added to a live optimizer.
    """

    def __init__(
        self,
        model: FineTuneModel,
        num_classes: int,
        multilabel: bool = False,
        optim: PhaseOptim = PhaseOptim(),
        class_weights: torch.Tensor | None = None,
        phase_index: int = 0,
        features_input: bool = False,
        task: str | None = None,
        threshold: float | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mix_prob: float = 1.0,
        seed: int = 0,
        tta: Sequence[str] = (),
    ) -> None:
        """``class_weights``: cross-entropy class weights, or for multi-label the BCE ``pos_weight``
        per label (ClassificationDataModule.class_weights gives either); not saved in checkpoints.
        ``task``: binary | multi-class | multi-label | ordinal-regression (default: from
        ``multilabel`` and the class count). ``threshold``: decision threshold of binary /
        multi-label tasks (default 0.5; see ``fit_on_validation``). ``label_smoothing``, ``mixup``,
        ``cutmix`` (Beta alphas, 0: off), ``mix_prob``: the training options of the module
        docstring; ``seed`` seeds the mixing draws. ``tta``: flips (``FLIP_AXES``) whose logits are
        averaged with the image's own in the test and in what is fitted on validation before it."""
        super().__init__(model, optim, phase_index)
        self.multilabel = multilabel
        self.task = task_type(num_classes, multilabel, task)
        self.threshold = threshold
        self.features_input = features_input  # batches hold cached backbone features, not images
        self.loss_fn = _loss(self.task, class_weights)  # validation and test: the plain loss
        self.label_smoothing = float(label_smoothing)
        self.mixer = None
        if (mixup or cutmix) and mix_prob:
            if self.multilabel:
                raise FinetuneError(
                    "mix.mixup / mix.cutmix: the dataset is multi-label, and mixing is defined "
                    "here for one label per image; leave mix.mixup=0 mix.cutmix=0"
                )
            if features_input:
                raise FinetuneError(
                    "mix.mixup / mix.cutmix mix images: they cannot train on cached features "
                    "(use data.cache_features=auto or false)"
                )
            self.mixer = BatchMixer(num_classes, mixup, cutmix, mix_prob, self.label_smoothing, seed)
        # Training: label smoothing in the loss; with mixing it is in Mixup's soft targets, and
        # multi-label smooths its targets in _step.
        in_loss = 0.0 if self.mixer or self.multilabel else self.label_smoothing
        self.train_loss_fn = _loss(self.task, class_weights, in_loss)
        self.train_metrics = classification_metrics(
            num_classes, multilabel, False, self.task, auc=False, prefix="train/", only_acc=True
        )
        self.val_metrics = classification_metrics(num_classes, multilabel, False, self.task, prefix="val/")
        self.test_metrics = classification_metrics(num_classes, multilabel, True, self.task)
        # With a tuned threshold, the decisions at 0.5 too: the MedMNIST benchmark's ACC is at 0.5.
        self.default_test_metrics = (
            classification_metrics(num_classes, multilabel, False, self.task, auc=False)
            if self.task in THRESHOLD_TASKS
            else None
        )
        self.tta = tuple(tta)
        self.temperature = 1.0  # fit_on_validation(temperature=True) sets it; the test divides logits by it
        self.test_logits, self.test_targets = CatMetric(), CatMetric()  # uncalibrated, for the calibration record
        self.test_results: dict[str, torch.Tensor] = {}
        self.calibration: dict = {}  # metrics.json "calibration": temperature, errors before / after, bins
        self.threshold_tuning: dict = {}  # metrics.json: whether threshold=tune tuned, or why a label kept 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.head(inputs) if self.features_input else self.model(inputs)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], train_batch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, hard targets). A training batch (``train_batch``: its index) gets the
        training options: mixing and label smoothing; validation and test the plain loss."""
        inputs, targets = batch
        soft, loss_fn = (targets.float() if self.multilabel else targets), self.loss_fn
        if train_batch is not None:
            loss_fn = self.train_loss_fn
            if self.mixer is not None:
                inputs, soft = self.mixer(
                    inputs, targets, self.phase_index, self.current_epoch, train_batch, self.global_rank
                )
            elif self.multilabel:  # timm's multi-label smoothing: every label moves towards 0.5
                soft = soft * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        logits = self._logits(inputs)
        return loss_fn(logits, soft), logits.detach(), targets.int() if self.multilabel else targets

    def eval_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of the test: the mean over the image and its ``tta`` flips."""
        return flip_averaged(self._logits, inputs, self.tta)

    @torch.no_grad()
    def predict_logits(self, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncalibrated ``eval_logits``, targets) of every (inputs, targets) batch, model in eval mode,
        on the model's device; the model's train/eval mode is restored afterwards."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        logits, targets = [], []
        try:
            for inputs, target in batches:
                logits.append(self.eval_logits(inputs.to(device)).float().cpu())
                targets.append(target.cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(logits), torch.cat(targets)

    def fit_on_validation(
        self, val_batches: Iterable, temperature: bool, threshold: bool, min_per_class: int = 1
    ) -> None:
        """Fix, on the validation batches (e.g. ``data.eval_dataloader("val")``: every rank sees the whole
        split; never pass test data), what the test then applies: the temperature (``temperature``)
        and, on the calibrated probabilities, the decision threshold maximising balanced accuracy
        (``threshold``; binary and multi-label tasks, argmax tasks keep None; a label with fewer than
        ``min_per_class`` images of a class keeps 0.5, and ``threshold_tuning`` records why)."""
        logits, targets = self.predict_logits(val_batches)
        if temperature:
            self.temperature = fit_temperature(logits, targets, self.multilabel)
            self.calibration["val"] = {
                when: {
                    "nll": round(float(negative_log_likelihood(logits / t, targets, self.multilabel)), 6),
                    **_rounded(
                        calibration_errors(
                            probabilities(logits / t, self.task).numpy(), targets.numpy(), self.multilabel
                        )
                    ),
                }
                for when, t in (("before", 1.0), ("after", self.temperature))
            }
        if threshold and self.task in THRESHOLD_TASKS:
            probs = probabilities(logits / self.temperature, self.task)
            self.threshold = tune_thresholds(probs, targets, self.task, min_per_class)
            kept = list(kept_at_half(targets.numpy(), self.task, min_per_class).values())
            self.threshold_tuning = {"threshold_tuned": not kept, **({"threshold_kept_at_0.5": kept} if kept else {})}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, targets = self._step(batch, batch_idx)
        self.train_metrics.update(logits, targets)  # training decisions: threshold 0.5 / argmax
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        if self._bar_shows_running_metrics():  # the bar's train/acc: this epoch's batches so far
            self.log_dict(self.train_metrics.compute(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def _bar_shows_running_metrics(self) -> bool:
        """Whether each step computes the training metrics for the bar: a bar redrawn during the epoch (not the
        one line per epoch a notebook prints), in one process (under DDP the computation syncs every rank)."""
        return self.trainer.world_size == 1 and isinstance(self.trainer.progress_bar_callback, RichProgressBar)

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), prog_bar=True)
        self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, logits, targets = self._step(batch)
        self.val_metrics.update(logits, targets)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        inputs, targets = batch
        raw = self.eval_logits(inputs)
        logits = raw / self.temperature
        loss = self.loss_fn(logits, targets.float() if self.multilabel else targets)
        targets = targets.int() if self.multilabel else targets
        self.test_metrics.update(logits, targets, self.threshold)
        if self.default_test_metrics is not None:
            self.default_test_metrics.update(logits, targets)
        self.test_logits.update(raw.float())
        self.test_targets.update(targets.float())
        self.log("test/loss", loss, on_epoch=True, batch_size=len(targets), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.test_results = {k: v.detach().cpu() for k, v in self.test_metrics.compute().items()}
        if self.task in THRESHOLD_TASKS:  # recorded: a scalar (binary) or one per label (multi-label)
            threshold = 0.5 if self.threshold is None else self.threshold
            self.test_results["threshold"] = torch.as_tensor(threshold, dtype=torch.float32)
            if torch.as_tensor(threshold).ne(0.5).any():
                at_default = self.default_test_metrics.compute().items()
                self.test_results |= {f"{k}_at_0.5": v.detach().cpu() for k, v in at_default}
            self.default_test_metrics.reset()
        self._record_calibration()
        self.log_dict({f"test/{k}": v for k, v in self.test_results.items() if v.ndim == 0})
        self.test_metrics.reset()

    def _record_calibration(self) -> None:
        """``test/ece`` and ``test/adaptive_ece`` of the probabilities the test decided with, and the
        calibration record: temperature, errors before / after it, reliability-diagram bins."""
        raw, targets = self.test_logits.compute().cpu(), self.test_targets.compute().cpu()
        self.test_logits.reset()
        self.test_targets.reset()
        targets = targets if self.multilabel else targets.long()
        test, bins = {}, {}
        for when, t in (("before", 1.0), ("after", self.temperature)):
            probs = probabilities(raw / t, self.task).numpy()
            test[when] = _rounded(
                {
                    **calibration_errors(probs, targets.numpy(), self.multilabel),
                    "nll": negative_log_likelihood(raw / t, targets, self.multilabel),
                }
            )
            bins[when] = reliability_bins(*confidences(probs, targets.numpy(), self.multilabel)).to_dict()
        self.test_results |= {k: torch.tensor(test["after"][k]) for k in ("ece", "adaptive_ece")}
        self.calibration |= {
            "temperature": round(self.temperature, 6),
            "tta": list(self.tta),
            "test": test,
            "bins": bins,
        }


def _loss(task: str, class_weights: torch.Tensor | None, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy (class weights, label smoothing; it also takes soft targets) or, for
    multi-label, BCE with logits (pos_weight per label). The weights are non-persistent buffers:
    they follow the module's device but stay out of checkpoints, so a task built without them can
    load any checkpoint."""
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    if task == "multi-label":
        loss = nn.BCEWithLogitsLoss(pos_weight=weights)
        loss.register_buffer("pos_weight", weights, persistent=False)
    else:
        loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    loss.register_buffer("weight", None if task == "multi-label" else weights, persistent=False)
    return loss


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in values.items()}
