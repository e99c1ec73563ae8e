"""What a segmentation run writes after its test: predicted masks and overlays of test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finetune.data.segmentation import SegmentationDataModule
from finetune.report.plots import class_colors, save_mask, save_overlay
from finetune.tasks.segmentation.module import SegmentationTask


@torch.no_grad()
def write_predictions(task: SegmentationTask, data: SegmentationDataModule, split: str, count: int, out: Path) -> int:
    """Predicted masks (palette PNG of class indices) and image | truth | prediction overlays for
    the first ``count`` images of ``split``; returns how many were written."""
    task.model.eval()
    device = next(task.model.parameters()).device
    colors = class_colors(data.info.num_classes)
    loader = data.eval_dataloader(split)
    written = 0
    for i, (image, _) in enumerate(loader):
        if i >= count:
            break
        prediction = task.predict_logits(image.to(device)).argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        raw, truth = data.raw_pair(split, i)
        stem = data.splits[split][i].image.stem
        save_mask(prediction, colors, out / f"{stem}_pred.png")
        save_overlay(
            raw, truth, prediction, colors, out / f"{stem}_overlay.png", background=0 if data.info.binary else None
        )
        written += 1
    return written
