"""Image classification (multi-class or multi-label) as a LightningModule."""
from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score, MulticlassPrecision,
    MulticlassRecall, MultilabelAccuracy, MultilabelConfusionMatrix, MultilabelF1Score,
    MultilabelPrecision, MultilabelRecall,
)

from ..freezing import FineTuneModel, param_groups, stage_learning_rates
from ..optim import build_optimizer, build_scheduler

PHASE_KEY = "finetune_phase"  # checkpoint entry: index of the phase that wrote it


@dataclass(frozen=True)
class PhaseOptim:
    """How one phase optimises: optimizer, real base lr of the head, backbone multiplier, schedule."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr_mult: float = 0.1
    layer_decay: float | None = None
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: str = "warmup_cosine"
    warmup_epochs: float = 0.0


def classification_metrics(num_classes: int, multilabel: bool, full: bool) -> MetricCollection:
    """Accuracy and macro F1; with ``full`` also top-5, per-class precision/recall and confusion."""
    if multilabel:
        kw = {"num_labels": num_classes}
        metrics = {"acc": MultilabelAccuracy(**kw), "f1_macro": MultilabelF1Score(average="macro", **kw)}
        if full:
            metrics |= {"precision": MultilabelPrecision(average=None, **kw),
                        "recall": MultilabelRecall(average=None, **kw),
                        "confusion": MultilabelConfusionMatrix(**kw)}
        return MetricCollection(metrics)
    kw = {"num_classes": num_classes}
    metrics = {"acc": MulticlassAccuracy(average="micro", **kw),
               "f1_macro": MulticlassF1Score(average="macro", **kw)}
    if full:
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(average="micro", top_k=5, **kw)
        metrics |= {"precision": MulticlassPrecision(average=None, **kw),
                    "recall": MulticlassRecall(average=None, **kw),
                    "confusion": MulticlassConfusionMatrix(**kw)}
    return MetricCollection(metrics)


class ClassificationTask(L.LightningModule):
    """Trains a ``FineTuneModel``; one instance per phase, sharing the same model.

    Each phase's ``configure_optimizers`` builds a fresh optimizer and scheduler over the stages
    trainable in that phase: no param group is ever added to a live optimizer.
    """

    def __init__(self, model: FineTuneModel, num_classes: int, multilabel: bool = False,
                 optim: PhaseOptim = PhaseOptim(), class_weights: torch.Tensor | None = None,
                 phase_index: int = 0, features_input: bool = False) -> None:
        super().__init__()
        self.model = model
        self.multilabel = multilabel
        self.optim = optim
        self.phase_index = phase_index
        self.features_input = features_input  # batches hold cached backbone features, not images
        self.loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss(weight=class_weights)
        self.train_metrics = classification_metrics(num_classes, multilabel, full=False).clone(prefix="train/")
        self.val_metrics = classification_metrics(num_classes, multilabel, full=False).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes, multilabel, full=True)
        self.test_results: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        logits = self.model.head(inputs) if self.features_input else self.model(inputs)
        loss = self.loss_fn(logits, targets)
        return loss, logits.detach(), targets.int() if self.multilabel else targets

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, logits, targets = self._step(batch)
        self.train_metrics.update(logits, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

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
        loss, logits, targets = self._step(batch)
        self.test_metrics.update(logits, targets)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(targets), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.test_results = {k: v.detach().cpu() for k, v in self.test_metrics.compute().items()}
        self.log_dict({f"test/{k}": v for k, v in self.test_results.items() if v.ndim == 0})
        self.test_metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[PHASE_KEY] = self.phase_index

    def configure_optimizers(self):
        o = self.optim
        lrs = stage_learning_rates(self.model, o.lr, o.backbone_lr_mult, o.layer_decay)
        optimizer = build_optimizer(o.optimizer, param_groups(self.model, lrs, o.weight_decay), o.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(o.scheduler, optimizer, total, round(o.warmup_epochs * per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": scheduler | {"name": "lr"}}
