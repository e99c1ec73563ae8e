"""Image classification (binary, multi-class, multi-label, ordinal) as a Task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from finetune.data import CLASSIFICATION_DATASETS
from finetune.models import HEADS
from finetune.run.config import setting
from finetune.run.errors import ConfigError, choice
from finetune.tasks.base import Task

MONITORS = ("acc", "auc", "balanced_acc", "f1_macro", "loss")
CALIBRATIONS = ("none", "temperature")


def tta_flips(cfg: DictConfig, data: Any) -> tuple[str, ...]:
    """``tta=true``: the flips the training augmentation applied (``augment.hflip`` / ``vflip`` as the
    dataset allowed them), and both together when it applied both; refused when it applied none."""
    if not setting(cfg, "tta", False):
        return ()
    augment = data.augment
    flips = tuple(name for name, p in (("hflip", augment.hflip), ("vflip", augment.vflip)) if p > 0)
    if not flips:
        raise ConfigError(
            "tta=true averages predictions over flipped copies of each image, but this training "
            "augmentation flipped no image (augment.hflip=0 and augment.vflip=0, or "
            "dataset.allow_flips=false): the model never learned that a mirrored image keeps its "
            "label, and for some data it does not (a mirrored chest X-ray, a digit). Turn on "
            "augment.hflip=0.5 where a mirror keeps the label, or leave tta=false"
        )
    return (*flips, "hvflip") if len(flips) == 2 else flips


class Classification(Task):
    """A new head on pooled backbone features; metrics of the MedMNIST benchmark."""

    name = "classification"
    heads = HEADS
    datasets = CLASSIFICATION_DATASETS
    monitors = MONITORS
    # Training options of run.config.TASK_OPTIONS this task honours (label smoothing: every task
    # type; mixup / cutmix: single-label, refused for a multi-label dataset when the module is built).
    training_options = ("loss.label_smoothing", "mix.mixup", "mix.cutmix", "calibration", "tta")
    unsupported: Mapping[str, tuple[Any, str]] = {
        "segmentation.loss": ("ce_dice", "the segmentation block is read by task=segmentation only"),
        "segmentation.class_weights": (False, "for classification use imbalance=weighted_loss"),
        "segmentation.overlays": (4, "the segmentation block is read by task=segmentation only"),
    }

    def validate(self, cfg: DictConfig) -> None:
        super().validate(cfg)
        choice(
            "calibration",
            setting(cfg, "calibration", "none"),
            CALIBRATIONS,
            "none: the probabilities as trained; temperature: one temperature fitted on the validation split",
        )
        if not isinstance(setting(cfg, "tta", False), bool):
            raise ConfigError(
                f"tta={setting(cfg, 'tta')!r}: true (average the test predictions over the flips the "
                "training augmentation used) or false"
            )
        t = cfg.threshold
        if t != "tune" and not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1):
            raise ConfigError(
                f"threshold={t!r}: use a probability in (0, 1) or threshold=tune (tuned on the validation split)"
            )

    def data_module(self, cfg):
        from finetune.data.datamodule import ClassificationDataModule
        from finetune.run.config import mixes_batches

        data = ClassificationDataModule(
            cfg.dataset,
            cfg.augment,
            cfg.schedule.batch_size,
            cfg.dataset.num_workers,
            cfg.seed,
            imbalance=cfg.imbalance,
        )
        if data.info.multilabel and mixes_batches(cfg):  # known once the labels are read; before any weights
            raise ConfigError(
                "mix.mixup / mix.cutmix: this dataset is multi-label, and mixing is defined here "
                "for one label per image; leave mix.mixup=0 mix.cutmix=0"
            )
        tta_flips(cfg, data)  # refused before any weights when the training never flipped an image
        return data

    def input_size(self, cfg):
        return cfg.dataset.image_size

    def prepare(self, cfg, model, data) -> None:
        if not cfg.init_from:
            return
        from finetune.export.init_head import init_head_from
        from finetune.run.console import console

        matched = init_head_from(model, data.info.class_names, cfg.init_from)
        console.print(
            f"head initialised from {cfg.init_from}: {len(matched)}/{data.info.num_classes} classes matched by name"
        )

    def monitor(self, cfg, data) -> str:
        from finetune.tasks.classification.module import monitor_metric

        return monitor_metric(data.info.task, cfg.threshold == "tune", cfg.monitor)

    def lightning_module(self, cfg, model, data, optim=None, phase_index=0, features_input=False):
        from finetune.run.config import setting
        from finetune.run.schedule import PhaseOptim
        from finetune.tasks.classification.module import ClassificationTask

        threshold = None if cfg.threshold == "tune" else float(cfg.threshold)
        return ClassificationTask(
            model,
            data.info.num_classes,
            data.info.multilabel,
            optim or PhaseOptim(),
            class_weights=data.class_weights,
            phase_index=phase_index,
            features_input=features_input,
            task=data.info.task,
            threshold=threshold,
            label_smoothing=setting(cfg, "loss.label_smoothing", 0.0),
            mixup=setting(cfg, "mix.mixup", 0.0),
            cutmix=setting(cfg, "mix.cutmix", 0.0),
            mix_prob=setting(cfg, "mix.prob", 1.0),
            seed=cfg.seed,
            tta=tta_flips(cfg, data),
        )

    def data_record(self, cfg, data) -> dict:
        info = data.info
        return {
            "task": info.task,
            "class_names": info.class_names,
            "class_counts_train": info.class_counts,
            "image_channels": info.image_channels,
            "multilabel": info.multilabel,
            "grayscale": (cfg.dataset.grayscale if info.image_channels == 1 else "n/a (RGB images)"),
            "model_in_chans": data.in_chans,
            "preprocessing": data.preprocessing.to_dict(),
            "imbalance": {"asked": cfg.imbalance, "applied": data.imbalance},
            "split_sizes": data.split_sizes,
            **({"window": list(data.config.window)} if getattr(data.config, "window", None) else {}),
        }

    def before_test(self, cfg, module, data) -> None:
        calibrate, tune = setting(cfg, "calibration", "none") == "temperature", cfg.threshold == "tune"
        if calibrate or tune:
            module.fit_on_validation(data.eval_dataloader("val"), temperature=calibrate, threshold=tune)

    def test_record(self, cfg, module, data) -> dict:
        # Without a test split the test is the val split: a temperature fitted there is scored in-sample.
        return {
            "calibration": {
                "method": setting(cfg, "calibration", "none"),
                "fitted_on": "val",
                "test_is_val": data.splits["test"] is data.splits["val"],
                **module.calibration,
            }
        }

    def after_test(self, cfg, module, data, run_dir) -> None:
        from finetune.report.plots import plot_reliability

        plot_reliability(module.calibration["bins"], module.temperature, run_dir / "plots" / "reliability.png")

    def report_sections(self, run, data, model, options):
        from finetune.tasks.classification.report import report_sections

        return report_sections(run, data, model, options)

    def explainer(self, run):
        from finetune.tasks.classification.report import ClassificationExplainer

        return ClassificationExplainer(run)

    def parity_images(self, data, n):
        return [image for image, _ in data.sample_images("val", n)]

    def export_metadata(self, data_record):
        return {"window": data_record["window"]} if data_record.get("window") else {}

    def predict_files(self, exported, paths, options) -> str:
        from finetune.tasks.classification.predict import predict_files

        return predict_files(exported, paths, options)

    def predict_arrays(self, exported, images):
        from finetune.tasks.classification.predict import predict_arrays

        return predict_arrays(exported, images)
