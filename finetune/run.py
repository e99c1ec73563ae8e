"""Orchestration only: build the pieces, run the phases, write the run directory."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
import numpy as np
import timm
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from . import __version__
from .artifacts import atomic_path, write_json, write_text
from .checkpointing import AtomicCheckpointIO
from .config import Phase, validate
from .data.datamodule import ClassificationDataModule, Preprocessing, gray_preprocessing
from .errors import FinetuneError
from .freezing import FineTuneModel, FreezeError, frozen_stages, stage_status
from .runs import build_model
from .plots import epoch_history, plot_confusion, plot_curves
from .tasks.classification import ClassificationTask
from .weights import resolve_weights

console = Console()


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Fine-tune as ``cfg`` says; write everything to ``run_dir``; return the test metrics."""
    started = time.perf_counter()
    phases = validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    record = resolve_weights(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.pretrained,
                             preprocessing=_preprocessing_overrides(cfg))
    data = ClassificationDataModule(cfg.dataset, cfg.augment, cfg.schedule.batch_size,
                                    cfg.dataset.num_workers, cfg.seed)
    in_chans = 1 if data.info.image_channels == 1 and cfg.dataset.grayscale == "adapt" else 3
    model = build_model(cfg, record, in_chans, data.info.num_classes)
    frozen_per_phase = [_frozen(model.stage_map, p, cfg.backbone.name) for p in phases]
    preprocessing = model_preprocessing(model.backbone, cfg.dataset.image_size, in_chans)
    data.set_preprocessing(preprocessing)

    _write_run_record(cfg, run_dir, record.to_dict(), data, preprocessing, in_chans)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/acc",
                                 mode="max", save_last=True, enable_version_counter=False,
                                 auto_insert_metric_name=False)
    trainer = None
    for phase, frozen in zip(phases, frozen_per_phase):
        model.set_frozen(frozen, cfg.backbone.bn)
        print_stage_table(model, f"phase {phase.name!r}: {phase.epochs} epoch(s), freeze={phase.freeze}")
        task = ClassificationTask(model, data.info.num_classes, data.info.multilabel, phase.optim)
        trainer = make_trainer(cfg, run_dir, phase, [checkpoint])
        trainer.fit(task, datamodule=data)
    trainer.test(task, datamodule=data, ckpt_path=checkpoint.best_model_path or None, verbose=False,
                 weights_only=False)
    results = _write_results(run_dir, task.test_results, data.info.class_names, phases,
                             time.perf_counter() - started)
    print_results(results, run_dir)
    return results


def _preprocessing_overrides(cfg: DictConfig) -> dict:
    pre = cfg.backbone.preprocessing
    return {k: (tuple(v) if k != "interpolation" else v) for k, v in pre.items() if v is not None}


def _frozen(stage_map, phase: Phase, name: str) -> tuple[str, ...]:
    try:
        return frozen_stages(stage_map, phase.freeze, name)
    except FreezeError as err:
        raise FinetuneError(f"phase {phase.name!r}: {err}") from None


def model_preprocessing(backbone: torch.nn.Module, image_size: int | None, in_chans: int) -> Preprocessing:
    """What the backbone's pretrained config expects (timm ``resolve_data_config``), at ``image_size``."""
    data_cfg = timm.data.resolve_data_config(model=backbone)
    _, height, width = data_cfg["input_size"]
    size = (image_size, image_size) if image_size else (height, width)
    mean, std = tuple(data_cfg["mean"]), tuple(data_cfg["std"])
    if in_chans == 1:
        mean, std = gray_preprocessing(mean, std)
    return Preprocessing(size=size, mean=mean, std=std, interpolation=data_cfg["interpolation"], in_chans=in_chans)


def make_trainer(cfg: DictConfig, run_dir: Path, phase: Phase, callbacks: list) -> L.Trainer:
    """A Lightning Trainer for one phase: its own loggers (``logs/<phase>``), shared checkpoints."""
    t = cfg.trainer
    loggers = [CSVLogger(run_dir, name="logs", version=phase.name),
               TensorBoardLogger(run_dir, name="tensorboard", version=phase.name, default_hp_metric=False)]
    extra = [RichProgressBar(leave=True)] if t.progress_bar else []
    return L.Trainer(
        max_epochs=phase.epochs, accelerator=t.accelerator, devices=t.devices, precision=t.precision,
        deterministic=t.deterministic, limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, limit_test_batches=t.limit_test_batches,
        log_every_n_steps=t.log_every_n_steps, logger=loggers,
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="step"), *extra],
        enable_progress_bar=t.progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], default_root_dir=run_dir,
    )


def print_stage_table(model: FineTuneModel, title: str) -> None:
    """Stem … head: parameters, trainable or frozen, BatchNorm mode."""
    table = Table(title=title, title_justify="left")
    for column in ("stage", "params", "trainable", "status", "norm layers", "BN mode"):
        table.add_column(column, justify="right" if column in ("params", "trainable", "norm layers") else "left")
    for row in stage_status(model):
        style = "dim" if row.status == "frozen" else None
        table.add_row(row.stage, f"{row.params:,}", f"{row.trainable:,}", row.status, str(row.norm_layers),
                      row.bn_mode, style=style)
    console.print(table)


def _write_run_record(cfg: DictConfig, run_dir: Path, weights: dict, data, pre: Preprocessing,
                      in_chans: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(run_dir / "weights.json", weights)
    info = data.info
    write_json(run_dir / "data.json", {
        "class_names": info.class_names, "class_counts_train": info.class_counts,
        "image_channels": info.image_channels, "multilabel": info.multilabel,
        "grayscale": (cfg.dataset.grayscale if info.image_channels == 1 else "n/a (RGB images)"),
        "model_in_chans": in_chans, "preprocessing": pre.to_dict(),
    })


def _write_results(run_dir: Path, results: dict[str, torch.Tensor], class_names: list[str],
                   phases: list[Phase], seconds: float) -> dict:
    scalars = {k: round(float(v), 6) for k, v in results.items() if v.ndim == 0}
    per_class = {k: dict(zip(class_names, (round(float(x), 6) for x in v)))
                 for k, v in results.items() if v.ndim == 1}
    plots = run_dir / "plots"
    if "confusion" in results and results["confusion"].ndim == 2:
        matrix = results["confusion"].numpy().astype(np.int64)
        _write_confusion_csv(run_dir / "confusion_matrix.csv", matrix, class_names)
        plot_confusion(matrix, class_names, plots / "confusion_matrix.png")
    logs = [run_dir / "logs" / p.name / "metrics.csv" for p in phases]
    plot_curves(epoch_history([p for p in logs if p.exists()]), plots / "curves.png")
    metrics = {"test": scalars, "test_per_class": per_class, "wall_time_s": round(seconds, 1),
               "phases": [{"name": p.name, "epochs": p.epochs, "freeze": p.freeze} for p in phases],
               "finetune_version": __version__}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _write_confusion_csv(path: Path, matrix: np.ndarray, class_names: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix):
            writer.writerow([name, *row.tolist()])


def print_results(metrics: dict, run_dir: Path) -> None:
    """The test metrics as a table, then where everything was written."""
    table = Table(title="test results", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics["test"].items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("wall time", f"{metrics['wall_time_s']:.0f} s")
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/bold]")
