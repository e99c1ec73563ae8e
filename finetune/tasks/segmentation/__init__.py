"""Semantic segmentation (binary or multi-class masks) as a Task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from finetune.data import SEGMENTATION_DATASETS
from finetune.models import DECODERS
from finetune.run.errors import ConfigError, choice
from finetune.tasks.base import Task
from finetune.tasks.segmentation.choices import LOSSES, MONITORS

EXPORTED_KEYS = ("tile", "tile_overlap", "scale", "ignore_index")  # data.json entries an export keeps


class Segmentation(Task):
    """An smp decoder on the backbone's feature maps; crops for training, sliding windows on full images."""

    name = "segmentation"
    heads = DECODERS
    datasets = SEGMENTATION_DATASETS
    monitors = MONITORS
    dense = True
    unsupported: Mapping[str, tuple[Any, str]] = {
        "init_from": (
            None,
            "a decoder has no per-class rows to copy by name; start from the pretrained "
            "encoder (leave init_from unset)",
        ),
        "threshold": (
            0.5,
            "masks are decided by argmax over classes; to favour the foreground pick the "
            "checkpoint by monitor=dice or weight it with segmentation.class_weights=true",
        ),
        "imbalance": ("none", "use segmentation.class_weights=true (weights from pixel frequencies)"),
    }

    def validate(self, cfg: DictConfig) -> None:
        super().validate(cfg)
        seg = cfg.segmentation
        choice("segmentation.loss", seg.loss, LOSSES)
        if not isinstance(seg.overlays, int) or seg.overlays < 0:
            raise ConfigError(f"segmentation.overlays={seg.overlays!r}: a count of test images >= 0")
        if str(cfg.data.cache_features).lower() == "true":
            raise ConfigError(
                "data.cache_features=true: segmentation trains on random crops, so backbone "
                "features cannot be cached; use data.cache_features=auto"
            )
        if cfg.head.kind == "deeplabv3plus" and cfg.schedule.batch_size < 2:
            raise ConfigError(
                "head=deeplabv3plus needs schedule.batch_size >= 2 (its image-pooling branch "
                "normalizes over the batch); use a larger batch or head=unet"
            )

    def data_module(self, cfg):
        from finetune.data.segmentation import SegmentationDataModule

        return SegmentationDataModule(
            cfg.dataset, cfg.augment, cfg.schedule.batch_size, cfg.seed, class_weights=cfg.segmentation.class_weights
        )

    def input_size(self, cfg):
        return cfg.dataset.crop_size

    def monitor(self, cfg, data) -> str:
        from finetune.tasks.segmentation.module import monitor_metric

        return monitor_metric(data.info.num_classes, cfg.monitor)

    def lightning_module(self, cfg, model, data, optim=None, phase_index=0, features_input=False):
        from finetune.run.schedule import PhaseOptim
        from finetune.tasks.segmentation.module import SegmentationTask

        d = data.config
        return SegmentationTask(
            model,
            data.info.num_classes,
            data.info.ignore_index,
            d.crop_size,
            optim or PhaseOptim(),
            phase_index,
            cfg.segmentation.loss,
            data.class_weights,
            d.tile_overlap,
            d.scale,
        )

    def data_record(self, cfg, data) -> dict:
        info, d = data.info, data.config
        return {
            "task": "segmentation",
            "class_names": info.class_names,
            "ignore_index": info.ignore_index,
            "pixel_counts_train": info.class_counts,
            "image_channels": info.image_channels,
            "model_in_chans": data.in_chans,
            "preprocessing": data.preprocessing.to_dict(),
            "tile": d.crop_size,
            "tile_overlap": d.tile_overlap,
            "scale": d.scale,
            "split_sizes": data.split_sizes,
        }

    def after_test(self, cfg, module, data, run_dir) -> None:
        from finetune.run.console import console
        from finetune.tasks.segmentation.predictions import write_predictions

        written = write_predictions(module, data, "test", cfg.segmentation.overlays, run_dir / "predictions")
        console.print(f"predicted masks and overlays of {written} test image(s): {run_dir / 'predictions'}")

    def report_sections(self, run, data, model, options):
        from finetune.tasks.segmentation.report import report_sections

        return report_sections(run, data, model, options)

    def explainer(self, run):
        from finetune.tasks.segmentation.report import SegmentationExplainer

        return SegmentationExplainer(run)

    def parity_images(self, data, n):
        return [data.raw_pair("val", i)[0] for i in range(min(n, len(data.splits["val"])))]

    def export_metadata(self, data_record):
        return {"segmentation": {k: data_record[k] for k in EXPORTED_KEYS}}

    def predict_files(self, exported, paths, options) -> str:
        from finetune.tasks.segmentation.predict import predict_files

        return predict_files(exported, paths, options)

    def predict_arrays(self, exported, images):
        from finetune.tasks.base import Predictions
        from finetune.tasks.segmentation.predict import predict_mask

        return Predictions(exported.class_names, masks=[predict_mask(exported, image) for image in images])
