"""Checks on a composed config that fail fast, before any data or weights are touched: values, the
task's own keys, the adapter and training options; the ``schedule`` group turned into phases. It
imports no torch: a bad config is reported in about a second."""

from __future__ import annotations

import importlib.util

from omegaconf import DictConfig, OmegaConf

from finetune.data import IMBALANCE_CHOICES
from finetune.models import ADAPTERS, BN_POLICIES
from finetune.run import CACHE_CHOICES, OPTIMIZERS, SCHEDULERS
from finetune.run.config import KEEP_CHOICES, LOGGER_PACKAGES, TASK_OPTIONS, _number, mixes_batches, setting
from finetune.run.errors import ConfigError, choice
from finetune.run.schedule import Phase, phases_from
from finetune.tasks.base import Task


def validate(cfg: DictConfig, task: Task) -> list[Phase]:
    """Check every value that can be checked without data or weights (``task`` checks its own
    keys); return the phases."""
    task.validate(cfg)
    choice("backbone.bn", cfg.backbone.bn, BN_POLICIES)
    _validate_adapter(cfg)
    choice("imbalance", cfg.imbalance, IMBALANCE_CHOICES)
    if cfg.schedule.batch_size < 1:
        raise ConfigError(f"schedule.batch_size={cfg.schedule.batch_size}: must be >= 1")
    choice("data.cache_features", str(cfg.data.cache_features).lower(), CACHE_CHOICES)
    choice(
        "checkpoints.keep",
        setting(cfg, "checkpoints.keep", "best"),
        KEEP_CHOICES,
        "best: test the best validation epoch, then remove last.ckpt; last: test the final weights, then "
        "remove best.ckpt; both: test best.ckpt and keep both (to continue training later)",
    )
    t = cfg.trainer
    if str(t.strategy).startswith("ddp") and not (isinstance(t.devices, int) and t.devices >= 1):
        raise ConfigError(
            f"trainer.devices={t.devices!r}: with strategy={t.strategy} give the number of "
            "devices per node, e.g. trainer.devices=2"
        )
    _validate_training_options(cfg, task)
    phases = phases_from(cfg)
    for phase in phases:
        choice(f"optimizer of phase {phase.name!r}", phase.optim.optimizer, OPTIMIZERS)
        choice(f"scheduler of phase {phase.name!r}", phase.optim.scheduler, SCHEDULERS)
        if phase.optim.lr <= 0:
            raise ConfigError(f"lr of phase {phase.name!r} is {phase.optim.lr}: must be > 0")
    return phases


def _validate_adapter(cfg: DictConfig) -> None:
    """``backbone.adapter`` and its rank, alpha and targets (a config without the keys: none)."""
    kind = setting(cfg, "backbone.adapter", "none")
    choice(
        "backbone.adapter",
        kind,
        ADAPTERS,
        "lora / dora: low-rank updates of Linear and conv layers, bitfit: "
        "biases and norm parameters; the pretrained weights stay fixed",
    )
    rank = setting(cfg, "backbone.adapter_rank", 8)
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        raise ConfigError(
            f"backbone.adapter_rank={rank!r}: the rank of the low-rank update B·A, a whole number >= 1 (e.g. 8)"
        )
    alpha = setting(cfg, "backbone.adapter_alpha", 16)
    if not (_number(alpha) and alpha > 0):
        raise ConfigError(
            f"backbone.adapter_alpha={alpha!r}: the update is scaled by alpha / rank, a number > 0 (e.g. 16)"
        )
    targets = setting(cfg, "backbone.adapter_targets")
    if targets is None:
        return
    if not (OmegaConf.is_list(targets) and targets and all(isinstance(t, str) and t.strip() for t in targets)):
        raise ConfigError(
            f"backbone.adapter_targets={targets!r}: a list of module-name patterns, e.g. "
            "'[qkv,fc2]' or '[layer4.*.conv2]', or null for the default per architecture"
        )
    if kind not in ("lora", "dora"):
        raise ConfigError(
            f"backbone.adapter_targets is set but backbone.adapter={kind}: targets choose the "
            "modules LoRA / DoRA adapt; use backbone.adapter=lora|dora, or adapter_targets=null"
        )


def _validate_training_options(cfg: DictConfig, task: Task) -> None:
    """Early stopping, gradient accumulation and clipping, label smoothing, mixup / cutmix, EMA, loggers."""
    patience = setting(cfg, "schedule.early_stop.patience")
    if patience is not None and not (isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1):
        raise ConfigError(
            f"schedule.early_stop.patience={patience!r}: a whole number of epochs >= 1 "
            "(e.g. 3), or null to turn early stopping off"
        )
    min_delta = setting(cfg, "schedule.early_stop.min_delta", 0.0)
    if not (_number(min_delta) and min_delta >= 0):
        raise ConfigError(
            f"schedule.early_stop.min_delta={min_delta!r}: the smallest change of the monitored "
            "metric that counts as an improvement, a number >= 0 (e.g. 0.001)"
        )
    accumulate = setting(cfg, "trainer.accumulate_grad_batches", 1)
    if not (isinstance(accumulate, int) and not isinstance(accumulate, bool) and accumulate >= 1):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate!r}: a whole number of batches per "
            "optimizer step >= 1 (1: a step every batch)"
        )
    clip = setting(cfg, "trainer.gradient_clip_val")
    if clip is not None and not (_number(clip) and clip > 0):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip!r}: the largest gradient norm, a number > 0 "
            "(e.g. 1.0), or null for no clipping"
        )
    smoothing = setting(cfg, "loss.label_smoothing", 0.0)
    if not (_number(smoothing) and 0 <= smoothing < 1):
        raise ConfigError(f"loss.label_smoothing={smoothing!r}: a number in [0, 1), e.g. 0.1 (0: off)")
    for key in ("mix.mixup", "mix.cutmix"):
        alpha = setting(cfg, key, 0.0)
        if not (_number(alpha) and alpha >= 0):
            raise ConfigError(
                f"{key}={alpha!r}: a Beta distribution alpha >= 0, e.g. 0.2 for mixup or 1.0 for cutmix (0: off)"
            )
    prob = setting(cfg, "mix.prob", 1.0)
    if not (_number(prob) and 0 <= prob <= 1):
        raise ConfigError(f"mix.prob={prob!r}: the probability that a training batch is mixed, in [0, 1]")
    honoured = task.training_options
    for key, (off, why) in TASK_OPTIONS.items():
        value = setting(cfg, key, off)
        if value != off and key not in honoured:
            raise ConfigError(f"{key}={value!r} is not supported by task={task.name}: {why}")
    if mixes_batches(cfg) and str(cfg.data.cache_features).lower() == "true":
        raise ConfigError(
            "data.cache_features=true cannot be combined with mix.mixup / mix.cutmix: images are "
            "mixed before the backbone, cached features cannot be; use data.cache_features=auto "
            "(phases then train on images)"
        )
    decay = setting(cfg, "ema.decay")
    if decay is not None and not (_number(decay) and 0 < decay < 1):
        raise ConfigError(
            f"ema.decay={decay!r}: the EMA decay per optimizer step, a number in (0, 1) such as "
            "0.999 (about the last 1,000 steps averaged), or null to turn the average off"
        )
    if not isinstance(setting(cfg, "ema.warmup", True), bool):
        raise ConfigError(
            f"ema.warmup={setting(cfg, 'ema.warmup')!r}: true (the decay ramps up over the first "
            "updates, as timm's) or false"
        )
    experiment = setting(cfg, "logger.experiment", "finetune")
    if not (isinstance(experiment, str) and experiment.strip()):
        raise ConfigError(
            f"logger.experiment={experiment!r}: a name for the MLflow experiment / W&B project, "
            "e.g. logger.experiment=digits"
        )
    for key, package in LOGGER_PACKAGES.items():
        on = setting(cfg, f"logger.{key}", key == "tensorboard")
        if not isinstance(on, bool):
            raise ConfigError(
                f"logger.{key}={on!r}: true or false (or pick a preset: logger=csv|tensorboard|mlflow|wandb|many)"
            )
        if on and importlib.util.find_spec(package) is None:
            install = "'finetune[mlflow]'" if key == "mlflow" else package
            raise ConfigError(
                f"logger.{key}=true needs the {package} package, which is not installed: "
                f"pip install {install} (or logger=tensorboard, the default)"
            )
