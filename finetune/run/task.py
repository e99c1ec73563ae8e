"""The task seam: everything that differs between tasks sits behind one interface.

``training.train`` drives every task through these methods and never asks which task it runs. A
task's config checks (``validate``) import no torch; every other method imports its heavy
modules when called, so ``finetune --help`` and config errors stay fast.

This module is the interface training (above the tasks) and the layers below them (``export``,
``report``, ``models``) are handed; it imports none of them (it sits on the floor, beside ``run/``), so
the hooks that take their objects name those types in their docstrings (the model is a
``models.freezing.FineTuneModel``). Where a layer below learns the task from a record (an export's
metadata, a run's config), it is handed the registry (``finetune.tasks.registry.TASKS``) and picks the
task by the recorded name. A task's own records (``task_record`` in data.json and in every export's
metadata) are read by the task alone (``task_record``); shared code never asks which task it holds
(no isinstance or hasattr on a task's objects: tests/unit/test_architecture.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finetune.run.errors import ConfigError, FinetuneError, choice

if TYPE_CHECKING:
    import lightning as L
    import numpy as np
    from torch import nn

    from finetune.run.schedule import PhaseOptim


@dataclass(frozen=True)
class Predictions:
    """What ``finetune.load(...).predict(images)`` returns, one entry per image (a task may return a
    subclass with its own fields)."""

    class_names: list[str]
    labels: list[str] | None = None  # classification: the decided label (multi-label: ";"-joined)
    probabilities: Any = None  # classification: [N, classes] float64, softmax (sigmoid per label: multi-label)
    masks: list | None = None  # segmentation: one [H, W] uint8 class-index mask at the image's own size


@dataclass(frozen=True)
class Scores:
    """What ``Task.score_images`` measured: the task's metrics (name -> value), the model's outputs they
    came from (classification: [N, classes] probabilities), the task's type and decision threshold."""

    metrics: dict[str, float]
    outputs: Any
    kind: str
    threshold: Any = None


@dataclass(frozen=True)
class ProbeLabels:
    """What ``finetune advise``'s linear probes fit per image: one of ``num_classes`` classes, or
    several labels (``multilabel``); ``class_counts``: train images (positives) per class."""

    num_classes: int
    class_counts: list[int]
    multilabel: bool


class Task:
    """One kind of prediction (classification, segmentation): data, model, training module,
    checkpoint metric, what is written after the test, its records, its export layout, probing and predict."""

    name: str = ""
    heads: tuple[str, ...] = ()  # head.kind choices
    datasets: tuple[str, ...] = ()  # dataset.kind choices
    monitors: tuple[str, ...] = ()  # validation metrics that can pick the checkpoint
    dense: bool = False  # one prediction per pixel: exports keep height and width dynamic
    # The dataset key holding the side of the model's input (``input_size`` reads it; ``finetune summary
    # input_size=`` sets it)
    input_size_key: str = "image_size"
    # The layout of this task's format=timm folder export (a name of finetune.export.folders.LAYOUTS:
    # a folder the model's own library opens); None: this task has none, format=timm is refused
    folder_layout: str | None = None
    # The dataclass of this task's config (a finetune.run.schema.FinetuneSchema subclass: the shared keys
    # and its own) that finetune.tasks.registry.register_task makes composable as task=<name>; None: the
    # schema registers it itself (the tasks shipped with finetune)
    config_schema: type | None = None

    def validate(self, cfg: DictConfig) -> None:
        """Refuse choices this task cannot honour, by name, before any heavy work. Its own keys (the
        schema ``conf/task/<name>.yaml`` names) are typed when the config is composed, and another task's
        keys refused there; a task checks their values here."""
        choice("head.kind", cfg.head.kind, self.heads, f"task={self.name} takes head=" + "|".join(self.heads))
        choice(
            "dataset.kind",
            cfg.dataset.kind,
            self.datasets,
            f"task={self.name} takes dataset=" + "|".join(self.datasets),
        )
        choice("monitor", cfg.monitor, ("auto", *self.monitors), f"validation metrics of task={self.name}")

    def data_module(self, cfg: DictConfig) -> L.LightningDataModule:
        """The data module of ``cfg.dataset`` (scanned and checked; no preprocessing yet)."""
        raise NotImplementedError

    def input_size(self, cfg: DictConfig) -> int | None:
        """Side of the model's training input (None: the backbone's pretrained size)."""
        return cfg.dataset[self.input_size_key]

    def build_model(self, cfg: DictConfig, weights: Any, in_chans: int, num_outputs: int) -> nn.Module:
        """The ``models.freezing.FineTuneModel`` this task trains: the backbone the
        ``models.weights.WeightsRecord`` ``weights`` names (its tensors unless its source is "random"),
        ``cfg``'s head for ``num_outputs`` outputs and ``backbone.adapter`` attached. Everything that
        rebuilds a run or an export calls this, so it must depend on the config alone."""
        raise NotImplementedError

    def mixes_inputs(self, cfg: DictConfig) -> bool:
        """True when this task mixes training images before the backbone (e.g. mixup, cutmix): its
        phases then train on images, never on cached backbone features."""
        return False

    def prepare(self, cfg: DictConfig, model: nn.Module, data: L.LightningDataModule) -> None:
        """Anything done to a freshly built model before training (e.g. ``init_from``)."""

    def monitor(self, cfg: DictConfig, data: L.LightningDataModule) -> str:
        """The validation metric that picks the best checkpoint (``val/...``)."""
        raise NotImplementedError

    def lightning_module(
        self,
        cfg: DictConfig,
        model: nn.Module,
        data: L.LightningDataModule,
        optim: PhaseOptim | None = None,
        phase_index: int = 0,
        features_input: bool = False,
    ) -> L.LightningModule:
        """The LightningModule of one phase (or of the test) over ``model``."""
        raise NotImplementedError

    def data_record(self, cfg: DictConfig, data: L.LightningDataModule) -> dict:
        """This task's own part of ``data.json`` (its ``task_record``; the classes, channels and
        preprocessing every task records are written beside it by ``models.saved_runs.run_data_record``)."""
        raise NotImplementedError

    def task_record(self, record: Mapping) -> dict:
        """This task's part of a run's ``data.json`` or an export's metadata (``record``): its
        ``task_record``. A record written before there was one keeps the same keys at its top level;
        a task whose records then held keys of its own overrides this to read them from there."""
        return dict(record.get("task_record") or {})

    def before_test(self, cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule) -> None:
        """Decisions fixed on validation data before the test (e.g. a tuned threshold)."""

    def test_record(self, cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule) -> dict:
        """Entries of metrics.json besides the test scalars (e.g. classification's calibration)."""
        return {}

    def after_test(
        self, cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule, run_dir: Path
    ) -> None:
        """Files written after the test besides metrics.json (e.g. predicted masks)."""

    def test_decisions(self, metrics: Mapping) -> dict:
        """How the run's test turned the model's outputs into its predictions, read from its ``metrics``
        (metrics.json; e.g. a tuned threshold, test-time flips, a temperature): every export records it
        under ``training`` for this task's predict to apply the same."""
        return {}

    def report_sections(self, run: Any, data: L.LightningDataModule, model: nn.Module, options: Any) -> Any:
        """This task's sections of report.html: a ``finetune.report.page.TaskSections`` (HTML about
        its data, placed after the configuration, and about its predictions, after the results) for
        a ``report.page.RunRecord`` under ``report.page.ReportOptions``."""
        raise NotImplementedError

    def explainer(self, run: Any) -> Any:
        """This task's part of ``finetune explain`` for an ``models.saved_runs.LoadedRun``: a
        ``finetune.report.explain.Explainer`` (the model input for an image, what is listed, and the
        target Grad-CAM explains)."""
        raise FinetuneError(f"finetune explain does not support task={self.name} yet")

    def parity_images(self, data: L.LightningDataModule, n: int) -> list[np.ndarray]:
        """Up to ``n`` raw validation images for the export parity check."""
        raise NotImplementedError

    def export_record(self, task_record: Mapping) -> dict:
        """What of the run's ``task_record`` an export keeps (its metadata's ``task_record``), for
        predict to read back with ``task_record``."""
        return {}

    def read_image(self, task_record: Mapping, path: Path, channels: int) -> np.ndarray:
        """One input file as this task's training images were read (HWC uint8 with ``channels``
        channels), by the run's or export's ``task_record`` (e.g. a DICOM window)."""
        raise NotImplementedError

    def check_probing(self, cfg: DictConfig) -> None:
        """Refuse ``finetune advise`` before any heavy work when its linear probes (one per stage, on
        pooled features, one class or several labels per image) do not fit this task."""
        raise ConfigError(
            f"finetune advise does not support task={self.name}: its linear probes predict one class "
            "(or several labels) per image from pooled stage features"
        )

    def probe_labels(self, data: L.LightningDataModule) -> ProbeLabels:
        """The labels ``finetune advise``'s probes fit on ``data`` (after ``check_probing`` passed)."""
        raise NotImplementedError

    def predict_files(self, exported: Any, paths: Sequence[Path], options: Any) -> str:
        """``finetune predict``: predict image files with an ``export.loading.LoadedExport`` of this
        task, write the results where ``options.out`` (``export.predict_io.PredictOptions``) says, or
        this task's default, and return the one-line summary."""
        raise NotImplementedError

    def predict_arrays(self, exported: Any, images: Sequence[np.ndarray]) -> Predictions:
        """The Python API's ``predict``: decoded HWC uint8 images through an ``export.loading.LoadedExport``."""
        raise NotImplementedError

    def score_images(self, exported: Any, images: Sequence[np.ndarray], targets: np.ndarray) -> Scores:
        """``finetune evaluate``: this task's test metrics of decoded HWC uint8 ``images`` against ``targets``
        through an ``export.loading.LoadedExport``, decided as the run's test decided."""
        raise FinetuneError(f"finetune evaluate does not support task={self.name} yet")
