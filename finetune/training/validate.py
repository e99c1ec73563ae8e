"""Checks on a composed config that fail fast, before any data or weights are touched: the values the
schema cannot judge alone (ranges, choices, keys that go together), the task's own keys, the adapter
and training options; the ``schedule`` group turned into phases. Types, unknown keys and keys of another
task were refused when the config was composed (``finetune.run.schema``). It imports no torch: a bad
config is reported in about a second."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from omegaconf import OmegaConf

from finetune.models import ADAPTERS, BN_POLICIES
from finetune.run import CACHE_CHOICES, OPTIMIZERS, SCHEDULERS
from finetune.run.config import KEEP_CHOICES, check_task_schema
from finetune.run.errors import ConfigError, choice
from finetune.run.schedule import Phase, phases_from
from finetune.run.schema import DECODER_WORDS, FinetuneSchema, TrainerSchema
from finetune.run.strategies import NO_GPU_VISIBLE, STRATEGIES, STRATEGY_HINT, is_distributed, is_fsdp, needs_cuda
from finetune.run.task import Task
from finetune.training.loggers import LOGGERS


def validate(cfg: FinetuneSchema, task: Task) -> list[Phase]:
    """Check every value that can be checked without data or weights (``task`` checks its own
    keys); return the phases."""
    check_task_schema(cfg)  # before the task reads keys its schema has
    task.validate(cfg)
    _validate_decoder_options(cfg)
    choice("backbone.bn", cfg.backbone.bn, BN_POLICIES)
    _validate_adapter(cfg)
    if cfg.schedule.batch_size < 1:
        raise ConfigError(f"schedule.batch_size={cfg.schedule.batch_size}: must be >= 1")
    choice("data.cache_features", str(cfg.data.cache_features).lower(), CACHE_CHOICES)
    choice(
        "checkpoints.keep",
        cfg.checkpoints.keep,
        KEEP_CHOICES,
        "best: test the best validation epoch, then remove last.ckpt; last: test the final weights, then "
        "remove best.ckpt; both: test best.ckpt and keep both (to continue training later); none: write no "
        "checkpoint, test and export the best epoch's weights held in memory (sweeps: the disk keeps the exports only)",
    )
    _validate_trainer(cfg.trainer)
    if cfg.checkpoints.keep == "none" and cfg.trainer.limit_val_batches == 0:
        raise ConfigError(
            "checkpoints.keep=none with trainer.limit_val_batches=0: no validation picks the best epoch whose "
            "weights it keeps; use checkpoints.keep=last (tests the final weights), or let validation run"
        )
    _validate_training_options(cfg)
    _validate_sharding(cfg)
    phases = phases_from(cfg)
    for index, phase in enumerate(phases):
        OPTIMIZERS.get(phase.optim.optimizer, key=f"optimizer of phase {phase.name!r}")
        SCHEDULERS.get(phase.optim.scheduler, key=f"scheduler of phase {phase.name!r}")
        if phase.optim.lr <= 0:
            raise ConfigError(f"lr of phase {phase.name!r} is {phase.optim.lr}: must be > 0")
        if not _is_depth(phase.freeze):
            raise ConfigError(
                f"{_freeze_key(cfg, index)}={phase.freeze!r} (phase {phase.name!r}) is not a depth: use a "
                "whole number of stages (0: train all, k: freeze stem + first k, -k: train only the last k) or all "
                "(linear probe)"
            )
    return phases


def _freeze_key(cfg: FinetuneSchema, index: int) -> str:
    """The key the freeze depth of phase ``index`` was set by: the phase's own, or the key its ``${…}`` names
    (``backbone.freeze``, which a phase reads unless it sets one)."""
    raw = OmegaConf.to_container(cfg.schedule.phases[index], resolve=False).get("freeze")
    reference = re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", raw) if isinstance(raw, str) else None
    return reference.group(1) if reference else f"schedule.phases[{index}].freeze"


def _validate_decoder_options(cfg: FinetuneSchema) -> None:
    """The decoder options smp would refuse (one of its words, ``DECODER_WORDS``; three ASPP rates); null
    leaves smp's default."""
    for key, words in DECODER_WORDS.items():
        value = cfg.head.get(key)
        if value is not None:
            choice(f"head.{key}", value, words, "or null: smp's default")
    rates = cfg.head.get("decoder_atrous_rates")
    if rates is not None and (len(rates) != 3 or min(rates) < 1):
        raise ConfigError(
            f"head.decoder_atrous_rates=[{','.join(map(str, rates))}]: the dilations of the three ASPP branches, "
            "three whole numbers >= 1 (e.g. [6,12,18]), or null for smp's [12,24,36]"
        )


def _validate_adapter(cfg: FinetuneSchema) -> None:
    """``backbone.adapter`` and its rank, alpha and targets."""
    b = cfg.backbone
    ADAPTERS.get(
        b.adapter,
        hint="lora / dora: low-rank updates of Linear and conv layers, bitfit: "
        "biases and norm parameters; the pretrained weights stay fixed",
    )
    if b.adapter_rank < 1:
        raise ConfigError(
            f"backbone.adapter_rank={b.adapter_rank}: the rank of the low-rank update B·A, a whole number >= 1 (e.g. 8)"
        )
    if b.adapter_alpha <= 0:
        raise ConfigError(
            f"backbone.adapter_alpha={b.adapter_alpha:g}: the update is scaled by alpha / rank, a number > 0 (e.g. 16)"
        )
    if b.adapter_targets is None:
        return
    if not (b.adapter_targets and all(t.strip() for t in b.adapter_targets)):
        raise ConfigError(
            f"backbone.adapter_targets={list(b.adapter_targets)}: a list of module-name patterns, e.g. "
            "'[qkv,fc2]' or '[layer4.*.conv2]', or null for the default per architecture"
        )
    if b.adapter not in ("lora", "dora"):
        raise ConfigError(
            f"backbone.adapter_targets is set but backbone.adapter={b.adapter}: targets choose the "
            "modules LoRA / DoRA adapt; use backbone.adapter=lora|dora, or adapter_targets=null"
        )


def check_devices(t: TrainerSchema) -> None:
    """What the trainer group asks of this machine: ``trainer=fsdp`` needs a CUDA GPU this process may use.
    Asked of torch (imported only for fsdp): device files and drivers differ between machines and containers.
    Not part of ``validate``: a config is valid on any machine."""
    if not is_fsdp(t.strategy):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(needs_cuda(NO_GPU_VISIBLE))


def _validate_trainer(t: TrainerSchema) -> None:
    """The trainer keys that take a number or a word, and the ones that go together."""
    choice("trainer.strategy", t.strategy, STRATEGIES, STRATEGY_HINT)
    if is_fsdp(t.strategy) and t.accelerator not in ("auto", "gpu", "cuda"):
        raise ConfigError(needs_cuda(f"trainer.accelerator={t.accelerator}"))
    if is_distributed(t.strategy) and not (_whole(t.devices) and t.devices >= 1):
        raise ConfigError(
            f"trainer.devices={t.devices!r}: with strategy={t.strategy} give the number of "
            "devices per node, e.g. trainer.devices=2"
        )
    for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        limit = t[name]
        if limit is not None and not ((_whole(limit) and limit >= 0) or (isinstance(limit, float) and 0 <= limit <= 1)):
            raise ConfigError(
                f"trainer.{name}={limit!r}: a number of batches (a whole number, e.g. 2), a fraction of "
                "them (a number in [0, 1], e.g. 0.25), or null for all"
            )
    if t.deterministic not in (True, False, "warn"):
        raise ConfigError(f"trainer.deterministic={t.deterministic!r}: true, false or warn")
    if t.accumulate_grad_batches < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={t.accumulate_grad_batches}: a whole number of batches per "
            "optimizer step >= 1 (1: a step every batch)"
        )
    if t.gradient_clip_val is not None and t.gradient_clip_val <= 0:
        raise ConfigError(
            f"trainer.gradient_clip_val={t.gradient_clip_val:g}: the largest gradient norm, a number > 0 "
            "(e.g. 1.0), or null for no clipping"
        )


def _validate_training_options(cfg: FinetuneSchema) -> None:
    """Early stopping, EMA, loggers."""
    early = cfg.schedule.early_stop
    if early.patience is not None and early.patience < 1:
        raise ConfigError(
            f"schedule.early_stop.patience={early.patience}: a whole number of epochs >= 1 "
            "(e.g. 3), or null to turn early stopping off"
        )
    if early.min_delta < 0:
        raise ConfigError(
            f"schedule.early_stop.min_delta={early.min_delta:g}: the smallest change of the monitored "
            "metric that counts as an improvement, a number >= 0 (e.g. 0.001)"
        )
    decay = cfg.ema.decay
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(
            f"ema.decay={decay:g}: the EMA decay per optimizer step, a number in (0, 1) such as "
            "0.999 (about the last 1,000 steps averaged), or null to turn the average off"
        )
    if not cfg.logger.experiment.strip():
        raise ConfigError(
            f"logger.experiment={cfg.logger.experiment!r}: a name for the MLflow experiment / W&B project, "
            "e.g. logger.experiment=digits"
        )
    for logger in LOGGERS.values():
        key, package = logger.name, logger.package
        on = logger.always or cfg.logger[key]
        if on and package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger.{key}=true needs the {package} package, which is not installed: "
                f"pip install {logger.install or package} (or logger=tensorboard, the default)"
            )


def _validate_sharding(cfg: FinetuneSchema) -> None:
    """What Lightning 2.6's FSDP cannot do, refused before a run starts instead of failing mid-phase."""
    if not is_fsdp(cfg.trainer.strategy):
        return
    clip = cfg.trainer.gradient_clip_val
    if clip is not None:  # FSDPPrecision.clip_grad_by_norm raises at the first optimizer step
        raise ConfigError(
            f"trainer.gradient_clip_val={clip:g} with trainer=fsdp: Lightning cannot clip sharded gradients by norm "
            "(each rank holds a shard); use trainer.gradient_clip_val=null, or trainer=ddp to clip"
        )
    if cfg.checkpoints.keep == "none":  # each sharded phase hands its weights to the next through last.ckpt
        raise ConfigError(
            "checkpoints.keep=none with trainer=fsdp: sharded phases hand their weights on through last.ckpt; use "
            "checkpoints.keep=best, or trainer=ddp to keep no checkpoint"
        )
    if cfg.ema.decay is not None:  # Lightning's weight averaging does not support sharded models
        raise ConfigError(
            f"ema.decay={cfg.ema.decay:g} with trainer=fsdp: Lightning cannot average sharded weights; use "
            "ema.decay=null, or trainer=ddp for a weight average"
        )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_depth(freeze: object) -> bool:
    """A freeze depth as ``models.freezing`` reads it (its range needs the backbone: checked when built)."""
    if isinstance(freeze, str):
        return freeze.strip().lower() == "all" or freeze.strip().lstrip("-").isdigit()
    return isinstance(freeze, int) and not isinstance(freeze, bool)
