"""Semantic segmentation as a LightningModule: per-pixel loss, IoU / Dice / pixel accuracy (and
pixel ROC AUC for binary tasks), sliding-window inference on full-size images.

Training sees random crops; validation and test see whole images, tiled into overlapping windows
of the training crop size whose logits are averaged (``sliding_window_logits``). Pixels equal to
``ignore_index`` (void, outside a field of view) count in no loss and no metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassConfusionMatrix

from finetune.models.freezing import FineTuneModel
from finetune.run.errors import FinetuneError
from finetune.run.schedule import PhaseOptim
from finetune.tasks.phased import PhasedTask
from finetune.tasks.segmentation.choices import BINARY_MONITORS, LOSSES
from finetune.tasks.segmentation.tested import TestedImages, iou_and_dice

AUC_THRESHOLDS = 1000  # binned pixel ROC AUC: constant memory, within ~1e-3 of the exact value
DIVISOR = 32  # encoders downsample 32x: inputs are padded to a multiple of it


class SegmentationLoss(nn.Module):
    """``ce`` (optionally class-weighted), ``dice`` (soft Dice over classes), ``ce_dice`` (their
    sum) or ``focal``; all skip ``ignore_index`` pixels."""

    def __init__(self, kind: str, ignore_index: int, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"segmentation.loss={kind!r}: choose one of {', '.join(LOSSES)}")
        self.parts, self.ignore_index = nn.ModuleList(), ignore_index
        if kind in ("ce", "ce_dice"):
            ce = nn.CrossEntropyLoss(ignore_index=ignore_index)
            ce.register_buffer("weight", class_weights, persistent=False)  # follows the device, not saved
            self.parts.append(ce)
        if kind in ("dice", "ce_dice"):
            self.parts.append(smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=ignore_index))
        if kind == "focal":
            self.parts.append(smp.losses.FocalLoss("multiclass", ignore_index=ignore_index))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():  # e.g. a crop outside the field of view: no signal
            return logits.sum() * 0.0
        return sum(part(logits, target) for part in self.parts)


@contextmanager
def bincount_counting() -> Iterator[None]:
    """Let torchmetrics count pixels with ``torch.bincount`` even under ``trainer.deterministic``.

    Its deterministic fallback compares every pixel with every bin (pixels x bins memory: 131 GB
    for one 64 px batch of a binned AUC). Counting integers with bincount has one exact result on
    every device, so nothing deterministic is given up.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class SegmentationMetrics(nn.Module):
    """Per-class IoU and Dice (F1), pixel accuracy, the pixel confusion matrix and, for two
    classes, the foreground's pixel ROC AUC. Means (mIoU, mDice) run over the classes present in
    the split's truth or predictions, so a class absent from a small split does not count as 0."""

    def __init__(self, num_classes: int, ignore_index: int, prefix: str = "") -> None:
        super().__init__()
        kw = {"num_classes": num_classes, "ignore_index": ignore_index}
        self.prefix, self.binary, self.ignore_index = prefix, num_classes == 2, ignore_index
        self.decisions = MetricCollection(
            {
                "pixel_acc": MulticlassAccuracy(average="micro", **kw),
                "confusion": MulticlassConfusionMatrix(**kw),
            }
        )
        self.auc = BinaryAUROC(thresholds=AUC_THRESHOLDS) if self.binary else None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        with bincount_counting():
            self.decisions.update(logits.argmax(dim=1), target)
            if self.auc is not None:
                keep = target != self.ignore_index
                self.auc.update(logits.float().softmax(dim=1)[:, 1][keep], target[keep])

    def compute(self) -> dict[str, torch.Tensor]:
        values = dict(self.decisions.compute())
        iou, dice = iou_and_dice(values["confusion"])
        per_class = {"iou": iou.float(), "dice": dice.float()}
        out = {
            "miou": per_class["iou"].nanmean(),
            "mdice": per_class["dice"].nanmean(),
            "pixel_acc": values["pixel_acc"],
            "iou_per_class": per_class["iou"],
            "dice_per_class": per_class["dice"],
            "confusion": values["confusion"],
        }
        if self.binary:  # the foreground class is the one that matters
            out |= {"dice": per_class["dice"][1], "iou": per_class["iou"][1], "auc": self.auc.compute()}
        return {f"{self.prefix}{k}": v for k, v in out.items()}

    def reset(self) -> None:
        self.decisions.reset()
        if self.auc is not None:
            self.auc.reset()


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    return starts if starts[-1] == max(length - tile, 0) else [*starts, length - tile]


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module, image: torch.Tensor, tile: int, overlap: float = 0.5, batch: int = 8
) -> torch.Tensor:
    """Logits [N, K, H, W] of full images [N, C, H, W]: overlapping ``tile`` windows (the image
    padded to at least one tile and a multiple of 32), logits averaged where windows overlap."""
    n, _, height, width = image.shape
    padded_h = max(tile, -(-height // DIVISOR) * DIVISOR)
    padded_w = max(tile, -(-width // DIVISOR) * DIVISOR)
    x = F.pad(image, (0, padded_w - width, 0, padded_h - height))
    stride = max(DIVISOR, int(tile * (1 - overlap)) // DIVISOR * DIVISOR)
    windows = [(top, left) for top in _starts(padded_h, tile, stride) for left in _starts(padded_w, tile, stride)]
    total = count = None
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        crops = torch.cat([x[:, :, top : top + tile, left : left + tile] for top, left in chunk])
        logits = model(crops).float()
        if total is None:
            total = logits.new_zeros(n, logits.shape[1], padded_h, padded_w)
            count = logits.new_zeros(1, 1, padded_h, padded_w)
        for j, (top, left) in enumerate(chunk):
            total[:, :, top : top + tile, left : left + tile] += logits[j * n : (j + 1) * n]
            count[:, :, top : top + tile, left : left + tile] += 1
    return (total / count)[:, :, :height, :width]


def full_image_logits(
    model: nn.Module, image: torch.Tensor, tile: int, overlap: float = 0.5, scale: float = 1.0
) -> torch.Tensor:
    """Logits of full images at their own resolution: resized by ``scale`` for the model (as in
    training), sliding windows, and the logits resized back (bilinear)."""
    if scale == 1:
        return sliding_window_logits(model, image, tile, overlap)
    scaled = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
    logits = sliding_window_logits(model, scaled, tile, overlap)
    return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


class SegmentationTask(PhasedTask):
    """Trains a ``FineTuneModel`` whose head is a segmentation decoder; one instance per phase."""

    def __init__(
        self,
        model: FineTuneModel,
        num_classes: int,
        ignore_index: int,
        tile: int,
        optim: PhaseOptim = PhaseOptim(),
        phase_index: int = 0,
        loss: str = "ce_dice",
        class_weights: torch.Tensor | None = None,
        tile_overlap: float = 0.5,
        scale: float = 1.0,
        keep: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__(model, optim, phase_index)
        self.tile, self.tile_overlap, self.scale = tile, tile_overlap, scale
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.loss_fn = SegmentationLoss(loss, ignore_index, class_weights)
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index, prefix="val/")
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_results: dict[str, torch.Tensor] = {}
        self.keep = keep  # predicted test masks kept: of the first images, of the lowest-scoring ones
        self.tested: TestedImages | None = None  # what the test kept (a test on one device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of full-size images by sliding window (the model's mode is left as it is)."""
        return full_image_logits(self.model, image, self.tile, self.tile_overlap, self.scale)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.loss_fn(self.model(images), masks)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def _evaluate(self, batch, metrics: SegmentationMetrics, name: str) -> torch.Tensor:
        images, masks = batch
        logits = self.predict_logits(images)
        metrics.update(logits, masks)
        self.log(f"{name}/loss", self.loss_fn(logits, masks), on_epoch=True, batch_size=len(images), sync_dist=True)
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log_dict({k: v for k, v in values.items() if v.ndim == 0}, prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        # The images' order in the split is known on one device only (several shard it).
        self.tested = TestedImages(*self.keep) if self.trainer.world_size == 1 else None

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._evaluate(batch, self.test_metrics, "test")
        if self.tested is not None:
            for truth, prediction in zip(batch[1].cpu(), logits.argmax(dim=1).cpu()):
                self.tested.add(truth, prediction, self.num_classes, self.ignore_index)

    def on_test_epoch_end(self) -> None:
        self.test_results = {k: v.detach().cpu() for k, v in self.test_metrics.compute().items()}
        self.log_dict({f"test/{k}": v for k, v in self.test_results.items() if v.ndim == 0})
        self.test_metrics.reset()


def monitor_metric(num_classes: int, choice: str = "auto") -> str:
    """The validation metric that picks the best checkpoint: ``val/<choice>``, or for ``auto`` the
    foreground Dice (binary) or the mIoU."""
    if choice in BINARY_MONITORS and num_classes != 2:
        raise FinetuneError(
            f"monitor={choice}: a foreground score of binary tasks; this dataset has "
            f"{num_classes} classes: use monitor=miou, mdice, pixel_acc or loss"
        )
    if choice == "auto":
        choice = "dice" if num_classes == 2 else "miou"
    return f"val/{choice}"
