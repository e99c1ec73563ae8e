"""What a segmentation run writes after its test: predicted masks and overlays of test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from finetune.data.segmentation import SegmentationDataModule
from finetune.models.freezing import FineTuneModel
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
    for i in range(count):
        prediction = kept.get(i)
        if prediction is None:
            prediction = predict_mask(task.model, data, split, i)
        raw, truth = data.raw_pair(split, i)
        stem = data.splits[split][i].image.stem
        save_mask(prediction, colors, out / f"{stem}_pred.png")
        save_overlay(
            raw, truth, prediction, colors, out / f"{stem}_overlay.png", background=0 if data.info.binary else None
        )
    return count


@torch.no_grad()
def predict_mask(model: FineTuneModel, data: SegmentationDataModule, split: str, i: int) -> np.ndarray:
    """The predicted class indices (H×W uint8) of image ``i`` of ``split``, as the test predicts them
    (sliding windows at the training scale)."""
    was_training = model.training
    model.eval()
    try:
        image, _ = data.eval_dataloader(split).dataset[i]  # the loader's dataset: no worker is started
        ref, d = next(model.parameters()), data.config
        logits = full_image_logits(model, image[None].to(ref.device, ref.dtype), d.crop_size, d.tile_overlap, d.scale)
    finally:
        model.train(was_training)
    return logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
