"""Segmentation predict: one class-index mask per full-size image, by sliding the export's tile."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from finetune.export.loading import LoadedExport
from finetune.export.predict_io import PredictOptions, console, refuse_existing
from finetune.report.plots import class_colors, save_mask
from finetune.run.errors import FinetuneError
from finetune.tasks.segmentation.module import full_image_logits

DEFAULT_OUT = "predicted_masks"


def predict_masks(exported: LoadedExport, paths: Sequence[Path], out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Class-index masks of full-size images (sliding window over the export), as palette PNGs."""
    targets = [out_dir / f"{p.stem}_mask.png" for p in paths]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise FinetuneError(
            f"several inputs would write {clashes[0]}: predict images with distinct names, or one folder at a time"
        )
    refuse_existing([t for t in targets if t.exists()], overwrite)
    colors = class_colors(len(exported.class_names))
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("segmenting", total=len(paths))
        for path, target in zip(paths, targets):
            save_mask(predict_mask(exported, exported.read(path)), colors, target)
            progress.advance(task)
    return targets


def predict_mask(exported: LoadedExport, image: np.ndarray) -> np.ndarray:
    """The [H, W] uint8 class-index mask of one HWC uint8 image at its own size: the export's tile
    slid over the image (resized by the run's ``scale`` for the model, as in training)."""
    tile, overlap, scale = (exported.task_record[k] for k in ("tile", "tile_overlap", "scale"))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(exported.forward(x.numpy()))

    batch = torch.from_numpy(exported.preprocess([image]))
    return full_image_logits(forward, batch, tile, overlap, scale).argmax(dim=1)[0].numpy().astype(np.uint8)


def predict_files(exported: LoadedExport, paths: Sequence[Path], options: PredictOptions) -> str:
    """Masks of ``paths`` into the folder ``options.out`` (default ./predicted_masks); the summary line."""
    out_dir = Path(options.out or DEFAULT_OUT).expanduser()
    masks = predict_masks(exported, paths, out_dir, options.overwrite)
    return f"{len(masks)} mask(s) from {exported.path.name} → [bold]{out_dir}[/bold]"
