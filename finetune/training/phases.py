"""Run a schedule's phases. Each phase gets its own Trainer, optimizer, scheduler and frozen set;
a resumed run continues in the phase its checkpoint was written in."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy
from omegaconf import DictConfig

from finetune.models.freezing import FineTuneModel
from finetune.models.summary import count_layers, roll_up
from finetune.run.checkpointing import AtomicCheckpointIO
from finetune.run.errors import FinetuneError
from finetune.run.records import model_state
from finetune.run.rundir import log_version
from finetune.run.schedule import PHASE_KEY, Phase, PhaseOptim
from finetune.run.strategies import is_fsdp
from finetune.training.averaging import ema_callbacks
from finetune.training.best_weights import BestWeights, monitor_mode
from finetune.training.display import EpochLog, ThrottledRichProgressBar, console, stage_table
from finetune.training.distributed import RankConsistency, TimmSyncBatchNorm, is_global_zero
from finetune.training.divergence import StopOnDivergence
from finetune.training.epoch_lines import progress_callbacks
from finetune.training.features import FeatureDataModule, use_feature_cache
from finetune.training.interrupts import StopOnSignal, slurm_plugins
from finetune.training.loggers import LOGGERS, LogContext
from finetune.training.search.pruning import trial_pruning
from finetune.training.sharding import fsdp_strategy, shard_a_copy, take_phase_weights


@dataclass(frozen=True)
class PlannedPhase:
    """A phase with the stages it freezes."""

    phase: Phase
    frozen: tuple[str, ...]


def resume_point(checkpoint: Path | None) -> int:
    """Index of the phase a checkpoint was written in (0 without a checkpoint)."""
    if checkpoint is None:
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if PHASE_KEY not in state:
        raise FinetuneError(f"{checkpoint} was not written by finetune (no phase record); resume=<run dir>")
    return int(state[PHASE_KEY])


TaskFactory = Callable[[PhaseOptim, int, bool], L.LightningModule]
Best = ModelCheckpoint | BestWeights  # what picks the tested weights: a checkpoint, or a copy in memory (keep=none)
IN_MEMORY = "best weights in memory"  # metrics.json's checkpoint.tested of a checkpoints.keep=none run


def run_phases(
    cfg: DictConfig,
    run_dir: Path,
    model: FineTuneModel,
    data: L.LightningDataModule,
    plan: list[PlannedPhase],
    make_task: TaskFactory,
    monitor: str,
    resume_from: Path | None = None,
    retest: bool = False,
    mixes_inputs: bool = False,
) -> tuple[Best, dict]:
    """Fit every phase in order (from the resumed one). ``make_task(optim, phase index, cached
    features)`` builds each phase's LightningModule (the task's); the best
    epoch maximises ``monitor`` (minimises it for a loss). ``retest`` (a finished run resumed,
    see ``finished_run``): nothing is fitted, the best record is read from ``resume_from``.
    ``mixes_inputs`` (``Task.mixes_inputs``): the task mixes training images, no phase caches features.

    Returns the callback that picked the best epoch (checkpoints best/last; ``checkpoints.keep=none``: the
    best weights in memory, no checkpoint written) and, under DDP, the per-rank parameter checksums taken
    at the end of each phase.
    """
    consistency = RankConsistency()
    if retest and resume_from is not None:
        checkpoint = best_checkpoint(run_dir, monitor)
        restore_best_record(checkpoint, resume_from, run_dir)
        return checkpoint, consistency.checksums
    checkpoint = BestWeights(monitor) if checkpoints_keep(cfg) == "none" else best_checkpoint(run_dir, monitor)
    start = resume_point(resume_from)
    # Units and connections do not depend on freezing: one counting pass serves every phase table.
    input_shape = (data.in_chans, *data.preprocessing.size)
    counts = roll_up(count_layers(model, input_shape), model.stage_of) if is_global_zero() else None
    t = cfg.trainer
    model.set_device_options(t.channels_last, t.compile_backend if t.compile else None)
    sharded = is_fsdp(t.strategy)  # each phase shards a copy; parameters differ by rank, no consistency check
    pruning = trial_pruning(cfg.search, monitor)  # a search's trial: one callback for every phase (epochs run on)
    for index, planned in enumerate(plan):
        if index < start:
            continue
        phase = planned.phase
        model.set_frozen(planned.frozen, cfg.backbone.bn)
        if is_global_zero():
            console.print(
                stage_table(
                    model,
                    counts,
                    f"phase {index + 1}/{len(plan)} {phase.name!r}: {phase.epochs} epoch(s), freeze={phase.freeze}",
                )
            )
        trainer = make_trainer(
            cfg,
            run_dir,
            phase.name,
            phase.epochs,
            [checkpoint, *([] if sharded else [consistency]), *early_stopping(cfg, monitor, phase.name)]
            + ema_callbacks(cfg)
            + pruning,
            fsdp_strategy(model, t.precision) if sharded else None,
        )
        # A task that mixes images before the backbone (mixup, cutmix) cannot mix cached features, so a
        # head-only phase trains on images (the task refuses data.cache_features=true with mixing).
        cached = use_feature_cache("false" if mixes_inputs else cfg.data.cache_features, model, data)
        phase_data = FeatureDataModule.extract(model, data, trainer.strategy.root_device, trainer) if cached else data
        if cached and is_global_zero():
            console.print(f"phase {phase.name!r}: backbone frozen → training the head on cached features")
        task = make_task(phase.optim, index, cached)
        if sharded:
            shard_a_copy(task)
        trainer.fit(task, datamodule=phase_data, ckpt_path=resume_from if index == start else None)
        if sharded:
            take_phase_weights(model, run_dir)
    return checkpoint, consistency.checksums


class PhaseCheckpoint(ModelCheckpoint):
    """One checkpoint callback for every phase's Trainer: ``best.ckpt`` competes across phases (the
    best score carries over) and ``last.ckpt`` is written at the end of every epoch of every phase.

    Lightning skips a save when ``trainer.global_step`` equals the step it last saved at; each phase's
    new Trainer restarts at step 0, so a phase whose first epoch ends at the step where the previous
    phase ended would silently not be checkpointed. The step record is reset for every Trainer.
    Lightning also writes ``last.ckpt`` only in an epoch that saved a top-k checkpoint; an epoch that
    did not improve the monitor still gets its ``last.ckpt`` here (resume never loses an epoch).
    """

    @property
    def state_key(self) -> str:
        """Lightning's own key: checkpoints written before this class existed resume with their best score."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._last_global_step_saved = 0  # a new Trainer (phase): no step of it has been saved yet

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # nothing saved at this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def finished_run(run_dir: Path, plan: list[PlannedPhase]) -> dict | None:
    """The metrics.json of a finished run whose record shows every phase of ``plan`` trained (resuming
    it re-tests, ``resume_finished=true``); None when there is none, or when ``plan`` has phases the
    run never trained (resuming it continues training)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    trained = {p["name"] for p in metrics.get("phases", []) if p.get("epochs_run")}
    return metrics if {planned.phase.name for planned in plan} <= trained else None


def restore_best_record(checkpoint: ModelCheckpoint, saved: Path, run_dir: Path) -> None:
    """A finished run is re-tested, never trained further (``fit`` from ``best.ckpt``, which is all a
    ``checkpoints.keep=best`` run keeps, would train again from the best epoch): ``checkpoint`` takes
    the best score and path recorded in the ``saved`` checkpoint, the path in this run directory."""
    state = torch.load(saved, map_location="cpu", weights_only=True, mmap=True)
    record = next((v for k, v in state.get("callbacks", {}).items() if k.startswith(ModelCheckpoint.__qualname__)), {})
    checkpoint.best_model_score = record.get("best_model_score")
    best = run_dir / "checkpoints" / "best.ckpt"
    checkpoint.best_model_path = str(best) if best.is_file() else ""


def best_checkpoint(run_dir: Path, monitor: str) -> ModelCheckpoint:
    """``checkpoints/best.ckpt`` (the best ``monitor``: lowest for a loss, else highest) and ``last.ckpt``."""
    return PhaseCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=monitor_mode(monitor),
        save_last=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )


class PhaseEarlyStopping(EarlyStopping):
    """``schedule.early_stop``: end the phase when ``monitor`` has not improved by ``min_delta`` for
    ``patience`` validations; the next phase starts as usual (each phase gets its own callback, so
    its own count and best value).

    Its state is saved in every checkpoint. A run resumed from the last checkpoint of a phase that
    had stopped early (killed before the next phase wrote one) must not train that phase further:
    Lightning does not save ``trainer.should_stop``, so it is set again from the restored state.
    """

    def __init__(self, monitor: str, patience: int, min_delta: float, phase: str) -> None:
        super().__init__(monitor=monitor, patience=patience, min_delta=min_delta, mode=monitor_mode(monitor))
        self.phase = phase

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.wait_count >= self.patience:  # restored from a checkpoint written when this phase stopped
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.wait_count >= self.patience and trainer.is_global_zero:
            console.print(
                f"phase {self.phase!r}: early stop after epoch {trainer.current_epoch} of "
                f"{trainer.max_epochs} ({self.monitor} did not improve by more than "
                f"{self.min_delta:g} in {self.patience} epoch(s))"
            )


def early_stopping(cfg: DictConfig, monitor: str, phase: str) -> list[PhaseEarlyStopping]:
    """The phase's early-stopping callback (``schedule.early_stop.patience``), or none."""
    patience = cfg.schedule.early_stop.patience
    if patience is None:
        return []
    return [PhaseEarlyStopping(monitor, patience, cfg.schedule.early_stop.min_delta, phase)]


class ClampLogInterval(L.Callback):
    """Log steps (loss, ``lr/*``) at least once per epoch: ``trainer.log_every_n_steps`` is lowered to
    the epoch's optimizer steps (training batches / ``accumulate_grad_batches``, rounded up) when it is
    larger (a small dataset would otherwise log no step)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        if isinstance(batches, int) and batches > 0:
            steps = math.ceil(batches / trainer.accumulate_grad_batches)
            if steps < trainer.log_every_n_steps:
                trainer.log_every_n_steps = steps


class KeepCheckpoints(L.Callback):
    """``checkpoints.keep``: once the test has run, ``best`` (the default) removes ``last.ckpt``, which exists
    to resume an unfinished run; ``last`` removes ``best.ckpt`` (the run tested the final weights); ``both``
    keeps them. The checkpoint kept is the one exports, reports and ``explain`` read. ``none`` writes none."""

    def __init__(self, run_dir: Path, keep: str) -> None:
        self.run_dir, self.keep = run_dir, keep

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.keep in ("best", "last"):
            dropped = "last.ckpt" if self.keep == "best" else "best.ckpt"
            (self.run_dir / "checkpoints" / dropped).unlink(missing_ok=True)


def tested_checkpoint(run_dir: Path, checkpoint: ModelCheckpoint, keep: str) -> Path:
    """The checkpoint a finished run tests: the final weights for ``checkpoints.keep=last``, else the
    best validation epoch."""
    if keep == "last":
        return run_dir / "checkpoints" / "last.ckpt"
    return Path(checkpoint.best_model_path or run_dir / "checkpoints" / "best.ckpt")


def tested_state(run_dir: Path, best: Best, keep: str) -> tuple[dict[str, torch.Tensor], str]:
    """The LightningModule ``state_dict`` a finished run tests and the name metrics.json gives it:
    ``tested_checkpoint``'s, or (``checkpoints.keep=none``) the best epoch's copy in memory."""
    if isinstance(best, BestWeights):
        if best.state is None:
            raise FinetuneError(
                f"checkpoints.keep=none: no validation epoch logged {best.monitor}, so no epoch was picked to test "
                "(is it a metric the task logs? does trainer.check_val_every_n_epoch exceed the epochs run?); use "
                "checkpoints.keep=last to test the final weights"
            )
        return best.state, IN_MEMORY
    tested = tested_checkpoint(run_dir, best, keep)
    return model_state(tested), tested.name  # a tampered best.ckpt: one line, never the unsafe advice


def checkpoints_keep(cfg: DictConfig) -> str:
    """``checkpoints.keep`` (``best`` for a config written before the key existed)."""
    return cfg.checkpoints.keep


def make_loggers(cfg: DictConfig, run_dir: Path, name: str) -> list[Logger]:
    """The loggers of ``LOGGERS`` the ``logger`` group switches on (``logger.<name>``), in its order: CSV
    always (``logs/<name>``; a resumed phase logs to ``logs/<name>/attempt-<n>``, every attempt kept),
    first, so ``trainer.logger`` is the CSV one."""
    context = LogContext(run_dir, name, log_version(run_dir / "logs", name), cfg.logger)
    return [kind.build(context) for kind in LOGGERS.values() if kind.always or getattr(cfg.logger, kind.name)]


def make_trainer(
    cfg: DictConfig, run_dir: Path, name: str, epochs: int, callbacks: list, strategy: Strategy | None = None
) -> L.Trainer:
    """A Lightning Trainer for one phase (or the test): its own loggers (``logs/<name>``), gradient
    accumulation and clipping (``trainer.accumulate_grad_batches``, ``trainer.gradient_clip_val``:
    the global L2 norm). ``strategy``: a phase's FSDP strategy (``trainer=fsdp``; its test runs under DDP).
    ``trainer.channels_last`` and ``trainer.compile`` are the model's (``run_phases``), not the Trainer's."""
    t = cfg.trainer
    loggers = make_loggers(cfg, run_dir, name)
    clip = t.gradient_clip_val
    progress = [ThrottledRichProgressBar(t.log_every_n_steps, phase=name, leave=True)] if t.progress_bar else []
    progress = progress_callbacks(progress, name)  # finetune.train in a notebook: one line per epoch
    plugins = [AtomicCheckpointIO(), *([TimmSyncBatchNorm()] if t.sync_batchnorm else []), *slurm_plugins()]
    return L.Trainer(
        max_epochs=epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy or ("ddp" if is_fsdp(t.strategy) else t.strategy),
        use_distributed_sampler=False,
        precision=t.precision,
        deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        log_every_n_steps=t.log_every_n_steps,
        logger=loggers,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=clip,
        gradient_clip_algorithm=None if clip is None else "norm",
        callbacks=[
            *callbacks,
            LearningRateMonitor(logging_interval="step"),
            ClampLogInterval(),
            KeepCheckpoints(run_dir, checkpoints_keep(cfg)),
            StopOnSignal(name),
            StopOnDivergence(name),
            EpochLog(name),
            *progress,
        ],
        enable_progress_bar=t.progress_bar,
        enable_checkpointing=checkpoints_keep(cfg) != "none",  # keep=none: not even Lightning's default callback
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=plugins,
        default_root_dir=run_dir,
    )
