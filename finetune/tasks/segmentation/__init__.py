"""Semantic segmentation (binary or multi-class masks) as a Task."""

from __future__ import annotations

from finetune.data import dataset_kinds
from finetune.models import DECODERS
from finetune.run.errors import ConfigError, choice
from finetune.run.schema import SegmentationSchema
from finetune.run.task import Task
from finetune.tasks.segmentation.choices import LOSSES, MONITORS
from finetune.tasks.segmentation.records import EXPORTED_KEYS, segmentation_record


class Segmentation(Task):
    """An smp decoder on the backbone's feature maps; crops for training, sliding windows on full images."""

    name = "segmentation"
    heads = DECODERS
    datasets = dataset_kinds(name)
    monitors = MONITORS
    dense = True
    input_size_key = "crop_size"  # training crop = sliding-window tile
    folder_layout = "smp"

    def validate(self, cfg: SegmentationSchema) -> None:
        """The values of this task's own keys (conf/task/segmentation.yaml; their types and the keys
        themselves are the schema's, ``finetune.run.schema.SegmentationSchema``)."""
        super().validate(cfg)
        seg = cfg.segmentation
        choice("segmentation.loss", seg.loss, LOSSES)
        if seg.overlays < 0:
            raise ConfigError(f"segmentation.overlays={seg.overlays}: a count of test images >= 0")
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
        from finetune.data import DATASETS
        from finetune.run.registry import resolve

        data_module = DATASETS.get(cfg.dataset.kind).module_for(self.name)
        return resolve(data_module or "finetune.data.segmentation:SegmentationDataModule")(
            cfg.dataset, cfg.augment, cfg.schedule.batch_size, cfg.seed, class_weights=cfg.segmentation.class_weights
        )

    def build_model(self, cfg, weights, in_chans, num_outputs):
        from finetune.models.factory import decoder_model

        return decoder_model(cfg, weights, in_chans, num_outputs)

    def monitor(self, cfg, data) -> str:
        from finetune.tasks.segmentation.module import monitor_metric

        return monitor_metric(data.info.num_classes, cfg.monitor)

    def lightning_module(self, cfg, model, data, optim=None, phase_index=0, features_input=False):
        from finetune.report.page import ReportOptions
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
            keep=(cfg.segmentation.overlays, ReportOptions.worst),
        )

    def data_record(self, cfg, data) -> dict:
        info, d = data.info, data.config
        return {
            "ignore_index": info.ignore_index,
            "pixel_counts_train": info.class_counts,
            "tile": d.crop_size,
            "tile_overlap": d.tile_overlap,
            "scale": d.scale,
        }

    def task_record(self, record):
        return segmentation_record(record)

    def after_test(self, cfg, module, data, run_dir) -> None:
        from finetune.run.console import console
        from finetune.tasks.segmentation.overlays import write_predictions

        if module.tested is not None:  # the report's lowest-scoring masks, without running the model again
            module.tested.save(run_dir, [pair.image.stem for pair in data.splits["test"]])
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

    def export_record(self, task_record):
        return {key: task_record[key] for key in EXPORTED_KEYS if key in task_record}

    def read_image(self, task_record, path, channels):
        from finetune.data.images import read_image

        return read_image(path, channels)

    def check_probing(self, cfg) -> None:
        raise ConfigError(
            f"finetune advise is classification-only for now: it fits one linear probe per image on "
            f"pooled stage features, and task={self.name} predicts per pixel. Advise on a classification "
            "dataset (drop task=…, head=…), or start from the recipes in recipes/segmentation"
        )

    def predict_files(self, exported, paths, options) -> str:
        from finetune.tasks.segmentation.predict_masks import predict_files

        return predict_files(exported, paths, options)

    def predict_arrays(self, exported, images):
        from finetune.run.task import Predictions
        from finetune.tasks.segmentation.predict_masks import predict_mask

        return Predictions(exported.class_names, masks=[predict_mask(exported, image) for image in images])
