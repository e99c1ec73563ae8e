"""Orchestration of ``task=segmentation``: the same phases, weights and freezing as classification,
with a decoder head, crops for training and sliding-window evaluation on full images."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from finetune.engine.config import validate
from finetune.data.segmentation import SegmentationDataModule
from finetune.engine.display import console, print_results
from finetune.engine.distributed import is_global_zero
from finetune.export.formats import PARITY_IMAGES, export_run
from finetune.export.formats import print_results as print_exports
from finetune.engine.phases import PlannedPhase, make_trainer, run_phases
from finetune.engine.plan import print_plan
from finetune.report.plots import class_colors, save_mask, save_overlay
from finetune.engine.runs import build_model
from finetune.engine.train import frozen_for, model_preprocessing, preprocessing_overrides, write_results, write_run_record
from finetune.tasks.base import PhaseOptim
from finetune.tasks.segmentation import SegmentationTask, monitor_metric
from finetune.models.weights import resolve_weights


def train_segmentation(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None) -> dict:
    """Fine-tune an encoder + decoder as ``cfg`` says; write the run directory; return its metrics."""
    started = time.perf_counter()
    phases = validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = SegmentationDataModule(cfg.dataset, cfg.augment, cfg.schedule.batch_size, cfg.seed)
    record = resolve_weights(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.pretrained,
                             preprocessing=preprocessing_overrides(cfg))
    info = data.info
    monitor = monitor_metric(info.num_classes, cfg.monitor)
    if cfg.plan:  # no weights are loaded: the model is built on the meta device
        with torch.device("meta"):
            model = build_model(cfg, dataclasses.replace(record, source="random"), data.in_chans, info.num_classes)
    else:
        model = build_model(cfg, record, data.in_chans, info.num_classes)
    plan = [PlannedPhase(p, frozen_for(model.stage_map, p, cfg.backbone.name)) for p in phases]
    data.set_preprocessing(model_preprocessing(model.timm_model, data.config.crop_size, data.in_chans))
    if cfg.plan:
        print_plan(cfg, model, data, plan, record)
        return {}
    seg = cfg.segmentation
    class_weights = data.class_weights() if seg.class_weights else None

    def make_task(optim: PhaseOptim = PhaseOptim(), index: int = 0, cached: bool = False) -> SegmentationTask:
        return SegmentationTask(model, info.num_classes, info.ignore_index, data.config.crop_size, optim, index,
                                seg.loss, class_weights, data.config.tile_overlap, data.config.scale)

    if is_global_zero():
        write_run_record(cfg, run_dir, record.to_dict(), _data_record(data))
    checkpoint, checksums = run_phases(cfg, run_dir, model, data, plan, resume_from, make_task, monitor)
    best_path = checkpoint.best_model_path or str(run_dir / "checkpoints" / "best.ckpt")
    task = make_task()
    task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    make_trainer(cfg, run_dir, "test", 1, []).test(task, datamodule=data, verbose=False)
    if not is_global_zero():
        return {}
    results = write_results(run_dir, task.test_results, info.class_names, phases, time.perf_counter() - started,
                            {"param_checksums_per_rank": checksums}, checkpoint)
    print_results(results, run_dir)
    written = write_predictions(task, data, "test", seg.overlays, run_dir / "predictions")
    console.print(f"predicted masks and overlays of {written} test image(s): {run_dir / 'predictions'}")
    # The small head export needs the pretrained encoder to pin against; random init exports all.
    default_export = "head" if record.source != "random" else "safetensors"
    parity_images = [data.raw_pair("val", i)[0] for i in range(min(PARITY_IMAGES, len(data.splits["val"])))]
    print_exports(export_run(run_dir, (default_export,), overwrite=resume_from is not None,
                             parity_images=parity_images), console)
    return results


@torch.no_grad()
def write_predictions(task: SegmentationTask, data: SegmentationDataModule, split: str, count: int,
                      out: Path) -> int:
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
        save_overlay(raw, truth, prediction, colors, out / f"{stem}_overlay.png",
                     background=0 if data.info.binary else None)
        written += 1
    return written


def _data_record(data: SegmentationDataModule) -> dict:
    info = data.info
    return {
        "task": "segmentation", "class_names": info.class_names, "ignore_index": info.ignore_index,
        "pixel_counts_train": info.pixel_counts, "image_channels": info.image_channels,
        "model_in_chans": data.in_chans, "preprocessing": data.preprocessing.to_dict(),
        "tile": data.config.crop_size, "tile_overlap": data.config.tile_overlap, "scale": data.config.scale,
        "split_sizes": data.split_sizes,
    }
