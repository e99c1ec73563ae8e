"""The task seam: everything that differs between tasks sits behind one interface.

``training.train`` drives every task through these methods and never asks which task it runs. A
task's config checks (``validate``) import no torch; every other method imports its heavy
modules when called, so ``finetune --help`` and config errors stay fast.

This module is the interface training (above the tasks) and the layers below them (``export``,
``report``) are handed; it imports none of them (it sits on the floor, beside ``run/``), so the
hooks that take their objects name those types in their docstrings (the model is a ``models.freezing.FineTuneModel``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from finetune.run.errors import ConfigError, FinetuneError, choice

if TYPE_CHECKING:
    import lightning as L
    import numpy as np
    from torch import nn

    from finetune.run.schedule import PhaseOptim


@dataclass(frozen=True)
class Predictions:
    """What ``finetune.load(...).predict(images)`` returns, one entry per image."""

    class_names: list[str]
    labels: list[str] | None = None  # classification: the decided label (multi-label: ";"-joined)
    probabilities: Any = None  # classification: [N, classes] float64, softmax (sigmoid per label: multi-label)
    masks: list | None = None  # segmentation: one [H, W] uint8 class-index mask at the image's own size


class Task:
    """One kind of prediction (classification, segmentation): data, model, training module,
    checkpoint metric, what is written after the test, export metadata and predict."""

    name: str = ""
    heads: tuple[str, ...] = ()  # head.kind choices
    datasets: tuple[str, ...] = ()  # dataset.kind choices
    monitors: tuple[str, ...] = ()  # validation metrics that can pick the checkpoint
    dense: bool = False  # one prediction per pixel: exports keep height and width dynamic
    # Top-level keys this task does not read: key -> (the value that means "unused", why / what instead)
    unsupported: Mapping[str, tuple[Any, str]] = {}
    # Training options (run/config.py) this task honours; a config turning on another is refused
    training_options: tuple[str, ...] = ()

    def validate(self, cfg: DictConfig) -> None:
        """Refuse choices and keys this task cannot honour, by name, before any heavy work."""
        choice("head.kind", cfg.head.kind, self.heads, f"task={self.name} takes head=" + "|".join(self.heads))
        choice(
            "dataset.kind",
            cfg.dataset.kind,
            self.datasets,
            f"task={self.name} takes dataset=" + "|".join(self.datasets),
        )
        choice("monitor", cfg.monitor, ("auto", *self.monitors), f"validation metrics of task={self.name}")
        for key, (unused, why) in self.unsupported.items():
            value = OmegaConf.select(cfg, key)
            if value != unused:
                raise ConfigError(f"{key}={value!r} is not supported by task={self.name}: {why}")

    def data_module(self, cfg: DictConfig) -> L.LightningDataModule:
        """The data module of ``cfg.dataset`` (scanned and checked; no preprocessing yet)."""
        raise NotImplementedError

    def input_size(self, cfg: DictConfig) -> int | None:
        """Side of the model's training input (None: the backbone's pretrained size)."""
        raise NotImplementedError

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
        """``data.json``: what a run directory needs to rebuild, export and report the model."""
        raise NotImplementedError

    def before_test(self, cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule) -> None:
        """Decisions fixed on validation data before the test (e.g. a tuned threshold)."""

    def test_record(self, cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule) -> dict:
        """Entries of metrics.json besides the test scalars (e.g. classification's calibration)."""
        return {}

    def after_test(
        self, cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule, run_dir: Path
    ) -> None:
        """Files written after the test besides metrics.json (e.g. predicted masks)."""

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

    def export_metadata(self, data_record: Mapping) -> dict:
        """Task-specific keys an export carries (from the run's ``data.json``)."""
        return {}

    def predict_files(self, exported: Any, paths: Sequence[Path], options: Any) -> str:
        """``finetune predict``: predict image files with an ``export.loading.LoadedExport`` of this
        task, write the results where ``options.out`` (``export.predict.PredictOptions``) says, or
        this task's default, and return the one-line summary."""
        raise NotImplementedError

    def predict_arrays(self, exported: Any, images: Sequence[np.ndarray]) -> Predictions:
        """The Python API's ``predict``: decoded HWC uint8 images through an ``export.loading.LoadedExport``."""
        raise NotImplementedError
