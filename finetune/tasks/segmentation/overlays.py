"""What a segmentation run writes after its test: predicted masks and overlays of test images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finetune.data.segmentation import SegmentationDataModule
from finetune.report.plots import class_colors, save_mask, save_overlay
from finetune.tasks.segmentation.module import SegmentationTask, full_image_logits


@torch.no_grad()
def write_predictions(task: SegmentationTask, data: SegmentationDataModule, split: str, count: int, out: Path) -> int:
    """Predicted masks (palette PNG of class indices) and image | truth | prediction overlays for
    the first ``count`` images of ``split``; returns how many were written. The masks the test kept
    (``task.tested``) are used as they are; only the others are predicted (sliding windows, as the test)."""
    kept = task.tested.masks if split == "test" and task.tested is not None else {}
    colors = class_colors(data.info.num_classes)
    count = min(count, len(data.splits[split]))
    fresh = predicted_masks(task.model, data, split, [i for i in range(count) if i not in kept])
    for i in range(count):
        prediction = kept[i] if i in kept else next(fresh)[0]
        raw, truth = data.raw_pair(split, i)
        stem = data.splits[split][i].image.stem
        save_mask(prediction, colors, out / f"{stem}_pred.png")
        save_overlay(
            raw, truth, prediction, colors, out / f"{stem}_overlay.png", background=0 if data.info.binary else None
        )
    return count


def predicted_masks(
    model: nn.Module, data: SegmentationDataModule, split: str, indices: Sequence[int]
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """For each image ``i`` of ``split`` in ``indices``, in that order: its class indices (H×W uint8) predicted
    as the test predicts them and its truth (H×W int64). The model is in its own mode whenever one is handed out
    (a caller may leave the rest unread). One dataset serves them all, read in this process (no worker)."""
    dataset = data.eval_dataloader(split).dataset
    for i in indices:
        image, truth = dataset[i]
        yield _predicted_mask(model, image, data), truth


@torch.no_grad()
def _predicted_mask(model: nn.Module, image: torch.Tensor, data: SegmentationDataModule) -> np.ndarray:
    """The class indices (H×W uint8) of one preprocessed image (C×H×W), predicted in eval mode with sliding
    windows at the training scale, as the test predicts them; the model's mode is given back before it returns."""
    ref, d = next(model.parameters()), data.config
    was_training = model.training
    model.eval()
    try:
        logits = full_image_logits(model, image[None].to(ref.device, ref.dtype), d.crop_size, d.tile_overlap, d.scale)
    finally:
        model.train(was_training)
    return logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
