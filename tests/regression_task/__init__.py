"""A third task that lives outside finetune: image regression, one number per image.

It shows what adding a task takes: this folder (the Task, its LightningModule, its data module, its
predict, its config group file ``conf/task/regression.yaml`` and its dataset file) and one
``finetune.tasks.registry.register_task(Regression())`` call; no file of finetune changes. The config
group is found by adding ``conf/`` here to Hydra's search path (``hydra.searchpath=[file://<CONF>]``).

The model is a backbone with a head on its pooled features (``finetune.models.factory.pooled_model``)
predicting the standardised target; the task record keeps the training split's mean and standard
deviation, so an export predicts in the target's own units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finetune.run.errors import ConfigError, choice
from finetune.run.schema import FinetuneSchema
from finetune.run.task import Task

CONF = Path(__file__).parent / "conf"  # on Hydra's search path: task/regression.yaml, dataset/values_csv.yaml
LOSSES = ("mse", "l1")


@dataclass
class ValuesDatasetSchema:
    """``dataset=values_csv``: images under ``root`` and ``root/values.csv`` (columns file, value)."""

    kind: str = "values_csv"
    root: str | None = None
    target: str = "value"  # what the number is called (the one "class name" of the model's output)
    image_size: int | None = None
    grayscale: str = "replicate"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    num_workers: int = 0


@dataclass
class RegressionOptionsSchema:
    loss: str = "mse"  # mse | l1


@dataclass
class RegressionSchema(FinetuneSchema):
    """``task=regression``: the shared keys, its dataset's and its own ``regression`` block."""

    dataset: ValuesDatasetSchema = field(default_factory=ValuesDatasetSchema)
    regression: RegressionOptionsSchema = field(default_factory=RegressionOptionsSchema)


class Regression(Task):
    """One number per image from a new head on the pooled backbone features."""

    name = "regression"
    heads = ("linear", "mlp")
    datasets = ("values_csv",)
    monitors = ("loss", "r2")
    folder_layout = "timm"  # a linear head with one output is timm's classifier with num_classes=1
    config_schema = RegressionSchema

    def validate(self, cfg) -> None:
        super().validate(cfg)
        choice("regression.loss", cfg.regression.loss, LOSSES, "mse: squared error, l1: absolute error")
        if not cfg.dataset.root:
            raise ConfigError("dataset.root is not set: the folder holding values.csv and its images")

    def data_module(self, cfg):
        from tests.regression_task.data import ValuesDataModule

        return ValuesDataModule(cfg.dataset, cfg.schedule.batch_size, cfg.seed)

    def input_size(self, cfg):
        return cfg.dataset.image_size

    def build_model(self, cfg, weights, in_chans, num_outputs):
        from finetune.models.factory import pooled_model

        return pooled_model(cfg, weights, in_chans, num_outputs, self.input_size(cfg))

    def monitor(self, cfg, data) -> str:
        return "val/" + ("loss" if cfg.monitor == "auto" else cfg.monitor)

    def lightning_module(self, cfg, model, data, optim=None, phase_index=0, features_input=False):
        from finetune.run.schedule import PhaseOptim
        from tests.regression_task.module import RegressionModule

        return RegressionModule(
            model, optim or PhaseOptim(), phase_index, cfg.regression.loss, data.target_std, features_input
        )

    def data_record(self, cfg, data) -> dict:
        return {
            "target": data.info.class_names[0],
            "target_mean": data.target_mean,
            "target_std": data.target_std,
            "target_range": data.target_range,
        }

    def report_sections(self, run, data, model, options):
        from finetune.report.page import TaskSections

        record = self.task_record(run.data)
        low, high = record["target_range"]
        return TaskSections(
            data=[
                f"<h2>Target</h2><p>{record['target']}: train mean {record['target_mean']:.3g}, "
                f"std {record['target_std']:.3g}, range {low:.3g} to {high:.3g}</p>"
            ]
        )

    def parity_images(self, data, n):
        return [data.raw_image("val", i) for i in range(min(n, len(data.splits["val"])))]

    def export_record(self, task_record):
        return {key: task_record[key] for key in ("target", "target_mean", "target_std")}

    def read_image(self, task_record, path, channels):
        from finetune.data.images import read_image

        return read_image(path, channels)

    def predict_files(self, exported, paths, options) -> str:
        from tests.regression_task.predict_values import predict_files

        return predict_files(exported, paths, options)

    def predict_arrays(self, exported, images):
        from tests.regression_task.predict_values import predict_arrays

        return predict_arrays(exported, images)
