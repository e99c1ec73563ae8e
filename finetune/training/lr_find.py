"""A learning-rate range test (Lightning's ``Tuner.lr_find``) on one phase of a schedule: the run is
built as training builds it, with the phase's frozen set, BatchNorm policy, optimizer and per-stage
learning rates; the suggestion is the phase's base (head) lr."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.tuner import lr_finder as lightning_lr_finder
from lightning.pytorch.utilities.types import LRSchedulerConfig
from omegaconf import DictConfig
from torch.optim import Optimizer

from finetune.models.freezing import HEAD
from finetune.report.plots import plot_lr_scan
from finetune.run.artifacts import write_json
from finetune.run.schedule import lr_key
from finetune.run.task import Task
from finetune.training.features import FeatureDataModule, use_feature_cache
from finetune.training.phases import PlannedPhase
from finetune.training.train import build
from finetune.version import __version__

JSON_NAME, PLOT_NAME = "lr_find.json", "lr_find.png"


class _RatioScan(lightning_lr_finder._ExponentialLR):
    """Lightning's exponential scan of one value from ``min_lr`` to ``max_lr``, applied to each param
    group times its ``ratio``. ``.lr`` (what Lightning's finder records) stays the scanned value."""

    def __init__(self, optimizer: Optimizer, end_lr: float, num_iter: int, ratios: list[float]) -> None:
        self.ratios = ratios
        super().__init__(optimizer, end_lr, num_iter)

    def get_lr(self) -> list[float]:
        return [lr * ratio for lr, ratio in zip(super().get_lr(), self.ratios)]


class RatioLRFinder(lightning_lr_finder._LRFinder):
    """Lightning's range test that keeps the ratios between param groups' learning rates.

    Lightning's ``_LRFinder`` sets every param group to ``min_lr`` and scans them all to the same
    value: the head and every backbone stage would share one lr, and the per-stage rates of the phase
    (``backbone_lr_mult``, ``layer_decay``) would be lost. Here the scanned value is the head's lr
    (the phase's base lr) and every group runs at that value times its lr / the head's lr, as the
    phase's optimizer set them, at every step of the scan. ``beta`` is the smoothing of Lightning's
    loss record (see ``debiased``).
    """

    ratios: dict[str, float] = {}
    beta: float = 0.0

    def _exchange_scheduler(self, trainer: L.Trainer) -> None:
        self.ratios = lr_ratios(trainer.strategy.optimizers[0])  # before Lightning sets every group to min_lr
        self.beta = trainer.callbacks[0].beta  # Lightning's _LRCallback: the only callback during the scan
        super()._exchange_scheduler(trainer)
        scan = _RatioScan(trainer.strategy.optimizers[0], self.lr_max, self.num_training, list(self.ratios.values()))
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(scan, interval="step")]


class QuietLRCallback(lightning_lr_finder._LRCallback):
    """Lightning's scan callback without its tqdm bar: the command prints the scan's summary line."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "progress_bar_refresh_rate": 0})


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's INFO lines (devices, "Restoring states from the checkpoint …" of its temporary checkpoint)
    left out inside; its warnings still shown."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lightning_log.setLevel(level)


def range_test(
    trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule, min_lr: float, max_lr: float, steps: int
) -> RatioLRFinder:
    """``Tuner.lr_find`` with ``RatioLRFinder`` in place of Lightning's finder (the model is restored
    after). Lightning's ``_lr_find`` builds its finder from the module global ``_LRFinder``, swapped
    here for the call; a Lightning without it fails loudly here (and in tests/e2e/test_lr_find.py)."""
    with (
        mock.patch.object(lightning_lr_finder, "_LRFinder", RatioLRFinder),
        mock.patch.object(lightning_lr_finder, "_LRCallback", QuietLRCallback),
        quiet_lightning(),
    ):
        return Tuner(trainer).lr_find(
            module, datamodule=data, min_lr=min_lr, max_lr=max_lr, num_training=steps, update_attr=False
        )


def debiased(losses: list[float], beta: float) -> list[float]:
    """Lightning's recorded losses with the bias of its running mean removed.

    ``_LRCallback`` averages ``avg = beta·avg + (1-beta)·loss`` from 0 and divides by ``1 - beta^(s+1)``
    with ``s = trainer.global_step``, which already counts the step just taken: after k steps it
    divides by ``1 - beta^(k+1)`` instead of ``1 - beta^k``, so the first point is about half the loss
    and the curve climbs over the first few dozen steps whatever the lr (Lightning #14167)."""
    return [loss * (1 - beta ** (k + 1)) / (1 - beta**k) for k, loss in enumerate(losses, 1)]


def steepest_descent(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The lr where the loss falls fastest against log10(lr), the first ``skip_begin`` and last
    ``skip_end`` points and non-finite losses left out; None with fewer than 2 points.

    Lightning's ``suggestion()`` takes the slope against lr itself, which on an exponential scan
    weighs each point by 1/lr and so favours the smallest learning rates (Lightning #21141)."""
    points = [
        (lr, loss)
        for lr, loss in zip(lrs[skip_begin : len(lrs) - skip_end], losses[skip_begin : len(losses) - skip_end])
        if math.isfinite(loss)
    ]
    if len(points) < 2:
        return None
    lr, loss = (torch.tensor(values, dtype=torch.float64) for values in zip(*points))
    slope = torch.gradient(loss, spacing=[lr.log10()])[0]
    return points[int(slope.argmin())][0]


def lr_ratios(optimizer: Optimizer) -> dict[str, float]:
    """Each param group's base lr (its scheduler's ``initial_lr``) over the head group's, by group name
    in the optimizer's order."""
    base = {group["name"]: group.get("initial_lr", group["lr"]) for group in optimizer.param_groups}
    head = next(lr for name, lr in base.items() if name.split("/")[0] == HEAD)
    return {name: lr / head for name, lr in base.items()}


@dataclasses.dataclass
class LRScan:
    """What a range test found: the phase, the key that sets its base lr, the scanned (lr, loss)
    points (Lightning's smoothed training loss, debiased) and the suggestion (None: too few points)."""

    phase: str
    phase_index: int
    frozen: list[str]
    lr_key: str
    config_lr: float  # the phase's base lr as configured
    lr_ratios: dict[str, float]  # each param group's lr / the head's, kept during the scan
    suggestion: float | None
    min_lr: float
    max_lr: float
    steps: int
    lrs: list[float]
    losses: list[float]  # inf or NaN where a step diverged
    seconds: float  # building the run (data, weights, model) and the scan
    scan_seconds: float


def default_phase(plan: list[PlannedPhase], stages: tuple[str, ...]) -> int:
    """The first phase that trains backbone stages; the first phase when every one trains the head alone."""
    return next((i for i, p in enumerate(plan) if set(p.frozen) != set(stages)), 0)


def find_lr(
    task: Task, cfg: DictConfig, run_dir: Path, phase: int | None, min_lr: float, max_lr: float, steps: int
) -> LRScan:
    """Scan phase ``phase`` (None: ``default_phase``) of ``cfg`` from ``min_lr`` to ``max_lr`` in
    ``steps`` training steps on one device; Lightning's temporary checkpoint goes to ``run_dir``."""
    started = time.perf_counter()
    built = build(task, cfg)
    model, data = built.model, built.data
    index = default_phase(built.plan, model.stage_map.stages) if phase is None else phase
    planned = built.plan[index]
    model.set_frozen(planned.frozen, cfg.backbone.bn)
    with quiet_lightning():
        trainer = scan_trainer(cfg, run_dir, steps)
    cached = use_feature_cache("false" if task.mixes_inputs(cfg) else cfg.data.cache_features, model, data)
    phase_data = FeatureDataModule.extract(model, data, trainer.strategy.root_device, trainer) if cached else data
    module = task.lightning_module(cfg, model, data, planned.phase.optim, index, cached)
    scan_started = time.perf_counter()
    finder = range_test(trainer, module, phase_data, min_lr, max_lr, steps)
    lrs, losses = [float(lr) for lr in finder.results["lr"]], debiased(finder.results["loss"], finder.beta)
    return LRScan(
        phase=planned.phase.name,
        phase_index=index,
        frozen=list(planned.frozen),
        lr_key=lr_key(cfg, index),
        config_lr=planned.phase.optim.lr,
        lr_ratios=finder.ratios,
        suggestion=steepest_descent(lrs, losses),
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        lrs=lrs,
        losses=losses,
        seconds=time.perf_counter() - started,
        scan_seconds=time.perf_counter() - scan_started,
    )


def scan_trainer(cfg: DictConfig, run_dir: Path, steps: int) -> L.Trainer:
    """A one-device Trainer with the run's precision, accumulation and clipping; no logger, no
    checkpoints (Lightning's finder replaces callbacks and loggers during the scan anyway) and no
    validation (the scan records the training loss; every epoch has a step, so none reaches
    ``check_val_every_n_epoch``)."""
    t = cfg.trainer
    clip = t.gradient_clip_val
    return L.Trainer(
        max_steps=steps,
        accelerator=t.accelerator,
        devices=1,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=clip,
        gradient_clip_algorithm=None if clip is None else "norm",
        limit_train_batches=t.limit_train_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=steps + 1,
        default_root_dir=run_dir,
    )


def write_scan(scan: LRScan, run_dir: Path, command: str) -> tuple[Path, Path]:
    """``lr_find.json`` (the scan, the suggestion, the key to set and ``command``, the training
    command with it) and ``lr_find.png`` (loss against lr, suggestion and configured lr marked)."""
    record = dataclasses.asdict(scan) | {
        "losses": [loss if math.isfinite(loss) else None for loss in scan.losses],  # JSON has no inf / NaN
        "seconds": round(scan.seconds, 1),
        "scan_seconds": round(scan.scan_seconds, 1),
        "command": command,
        "finetune_version": __version__,
    }
    json_path = write_json(run_dir / JSON_NAME, record)
    title = f"phase {scan.phase!r} ({scan.lr_key.lstrip('+')}), {len(scan.lrs)} steps"
    plot_path = plot_lr_scan(scan.lrs, scan.losses, scan.suggestion, scan.config_lr, run_dir / PLOT_NAME, title)
    return json_path, plot_path
