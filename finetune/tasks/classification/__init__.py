"""Image classification (binary, multi-class, multi-label, ordinal) as a Task."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from finetune.data import IMBALANCE_CHOICES, dataset_kinds
from finetune.models import HEADS
from finetune.run.errors import ConfigError, choice
from finetune.run.schema import ClassificationSchema
from finetune.run.task import ProbeLabels, Task
from finetune.tasks.classification.records import NAME, classification_record, tested_decisions

MONITORS = ("acc", "auc", "balanced_acc", "f1_macro", "loss")
CALIBRATIONS = ("none", "temperature")


def tta_flips(cfg: DictConfig, data: Any) -> tuple[str, ...]:
    """``tta=true``: the flips the training augmentation applied (``augment.hflip`` / ``vflip`` as the
    dataset allowed them), and both together when it applied both; refused when it applied none."""
    if not cfg.tta:
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

    name = NAME
    heads = HEADS
    datasets = dataset_kinds(name)
    monitors = MONITORS
    folder_layout = "timm"  # a linear head becomes timm's classifier

    def validate(self, cfg: ClassificationSchema) -> None:
        """The values of this task's own keys (conf/task/classification.yaml; their types and the keys
        themselves are the schema's, ``finetune.run.schema.ClassificationSchema``)."""
        super().validate(cfg)
        choice("imbalance", cfg.imbalance, IMBALANCE_CHOICES)
        choice(
            "calibration",
            cfg.calibration,
            CALIBRATIONS,
            "none: the probabilities as trained; temperature: one temperature fitted on the validation split",
        )
        t = cfg.threshold
        if t != "tune" and not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1):
            raise ConfigError(
                f"threshold={t!r}: use a probability in (0, 1) or threshold=tune (tuned on the validation split)"
            )
        m = cfg.threshold_tune_min
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(
                f"threshold_tune_min={m!r}: threshold=tune needs this many val images of each class (each label's, "
                "multi-label), an integer >= 1, e.g. 50; with fewer a threshold keeps 0.5"
            )
        if not 0 <= cfg.loss.label_smoothing < 1:
            raise ConfigError(
                f"loss.label_smoothing={cfg.loss.label_smoothing:g}: a number in [0, 1), e.g. 0.1 (0: off)"
            )
        for key in ("mixup", "cutmix"):
            if cfg.mix[key] < 0:
                raise ConfigError(
                    f"mix.{key}={cfg.mix[key]:g}: a Beta distribution alpha >= 0, e.g. 0.2 for mixup or 1.0 "
                    "for cutmix (0: off)"
                )
        if not 0 <= cfg.mix.prob <= 1:
            raise ConfigError(f"mix.prob={cfg.mix.prob:g}: the probability that a training batch is mixed, in [0, 1]")
        if self.mixes_inputs(cfg) and str(cfg.data.cache_features).lower() == "true":
            raise ConfigError(
                "data.cache_features=true cannot be combined with mix.mixup / mix.cutmix: images are "
                "mixed before the backbone, cached features cannot be; use data.cache_features=auto "
                "(phases then train on images)"
            )

    def data_module(self, cfg):
        from finetune.data import DATASETS
        from finetune.run.registry import resolve

        data_module = DATASETS.get(cfg.dataset.kind).module_for(self.name)
        data = resolve(data_module or "finetune.data.datamodule:ClassificationDataModule")(
            cfg.dataset,
            cfg.augment,
            cfg.schedule.batch_size,
            cfg.dataset.num_workers,
            cfg.seed,
            imbalance=cfg.imbalance,
        )
        if data.info.multilabel and self.mixes_inputs(cfg):  # known once the labels are read; before any weights
            raise ConfigError(
                "mix.mixup / mix.cutmix: this dataset is multi-label, and mixing is defined here "
                "for one label per image; leave mix.mixup=0 mix.cutmix=0"
            )
        tta_flips(cfg, data)  # refused before any weights when the training never flipped an image
        return data

    def mixes_inputs(self, cfg: ClassificationSchema) -> bool:
        """Mixup or cutmix on (``mix.mixup`` / ``mix.cutmix``) and ``mix.prob`` > 0."""
        mix = cfg.mix
        return bool((mix.mixup or mix.cutmix) and mix.prob)

    def build_model(self, cfg, weights, in_chans, num_outputs):
        from finetune.models.factory import pooled_model

        return pooled_model(cfg, weights, in_chans, num_outputs, self.input_size(cfg))

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
            label_smoothing=cfg.loss.label_smoothing,
            mixup=cfg.mix.mixup,
            cutmix=cfg.mix.cutmix,
            mix_prob=cfg.mix.prob,
            seed=cfg.seed,
            tta=tta_flips(cfg, data),
        )

    def data_record(self, cfg, data) -> dict:
        info, window = data.info, getattr(data.config, "window", None)
        return {
            "type": info.task,
            "multilabel": info.multilabel,
            "class_counts_train": info.class_counts,
            "imbalance": {"asked": cfg.imbalance, "applied": data.imbalance},
            "window": list(window) if window else None,
        }

    def task_record(self, record):
        return classification_record(record)

    def before_test(self, cfg, module, data) -> None:
        calibrate, tune = cfg.calibration == "temperature", cfg.threshold == "tune"
        if calibrate or tune:
            module.fit_on_validation(
                data.eval_dataloader("val"), temperature=calibrate, threshold=tune, min_per_class=cfg.threshold_tune_min
            )

    def test_record(self, cfg, module, data) -> dict:
        # Without a test split (metrics.json test_is_val) a temperature fitted on val is scored in-sample.
        # threshold=tune: threshold_tuned, and threshold_kept_at_0.5 (why) for the labels too few images tuned
        return {
            "calibration": {"method": cfg.calibration, "fitted_on": "val", **module.calibration},
            **module.threshold_tuning,
        }

    def after_test(self, cfg, module, data, run_dir) -> None:
        from finetune.report.page import split_name
        from finetune.report.plots import plot_reliability

        plot_reliability(
            module.calibration["bins"],
            module.temperature,
            run_dir / "plots" / "reliability.png",
            split_name(data.test_is_val),
        )

    def test_decisions(self, metrics):
        return tested_decisions(metrics)

    def report_sections(self, run, data, model, options):
        from finetune.tasks.classification.report import report_sections

        return report_sections(run, data, model, options)

    def explainer(self, run):
        from finetune.tasks.classification.report import ClassificationExplainer

        return ClassificationExplainer(run)

    def parity_images(self, data, n):
        return [image for image, _ in data.sample_images("val", n)]

    def export_record(self, task_record):
        return {"multilabel": bool(task_record.get("multilabel")), "window": task_record.get("window")}

    def read_image(self, task_record, path, channels):
        from finetune.data.images import read_image

        window = task_record.get("window")
        return read_image(path, channels, tuple(window) if window else None)

    def check_probing(self, cfg) -> None:
        """Every classification dataset has per-image classes to probe."""

    def probe_labels(self, data):
        info = data.info
        return ProbeLabels(info.num_classes, list(info.class_counts), info.multilabel)

    def predict_files(self, exported, paths, options) -> str:
        from finetune.tasks.classification.predict_labels import predict_files

        return predict_files(exported, paths, options)

    def predict_arrays(self, exported, images):
        from finetune.tasks.classification.predict_labels import predict_arrays

        return predict_arrays(exported, images)

    def score_images(self, exported, images, targets):
        from finetune.tasks.classification.robustness import score_images

        return score_images(exported, images, targets)
