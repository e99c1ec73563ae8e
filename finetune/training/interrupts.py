"""Interrupts end a run cleanly and say so: SIGINT (Ctrl-C), SIGTERM (a batch scheduler, ``kill``) and
SIGUSR1 (SLURM's warning before the time limit, ``#SBATCH --signal=SIGUSR1@90``) stop training at the
next batch boundary, print and log one line saying where the run stopped and how to continue, and exit
130 (SIGINT) or 143 (SIGTERM; SIGUSR1 too). Checkpoints are written atomically at epoch ends, so nothing
is half-written; ``finetune resume=<run>`` continues from the last one (``checkpoints.keep=none`` writes none:
the run starts again from its first phase). Under SLURM, SIGUSR1 also
requeues the job (``scontrol requeue``), as Lightning's ``SLURMEnvironment(auto_requeue=True)`` does.

Lightning's own requeue is switched off (``slurm_plugins``): it saves a mid-epoch ``hpc_ckpt_<n>.ckpt``
in the run directory, and under SLURM every later ``Trainer.fit(ckpt_path=None)`` loads it. Each phase is
a new Trainer, so phase 2 would restart from phase 1's mid-epoch weights.

Outside a Trainer's batch loop (building the data and model, between phases, writing results) a signal
stops the run at once. Under DDP every rank stops at the same batch: the decision is reduced across ranks.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from finetune.run.errors import RunInterrupted
from finetune.run.rundir import RESUME_CHECKPOINTS, holds_results
from finetune.run.schedule import PHASE_KEY
from finetune.training.distributed import is_global_zero

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # exit codes: RunInterrupted.exit_code
log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run is, for the line an interrupt prints; the signal received, if any."""

    run_dir: Path
    phases: list[str] = field(default_factory=list)  # known once the config is validated
    where: str = "while preparing the run"
    in_loop: bool = False  # a Trainer's batch loop: it stops at the next batch end (StopOnSignal)
    writes_checkpoints: bool = True  # False for checkpoints.keep=none: resume starts the run again
    signum: int | None = None
    pid: int = field(default_factory=os.getpid)  # the training process (DataLoader workers inherit the handler)

    def interrupted(self, signum: int | None = None) -> RunInterrupted:
        """The exception that ends the run (its line logged to the run's log on rank 0)."""
        signum = signum or self.signum or signal.SIGTERM
        message = interrupt_message(self, signum) if is_global_zero() else None
        if message:
            log_to_run_file(self.run_dir, message)
        return RunInterrupted(message, signum)


_progress: Progress | None = None


@contextmanager
def interruptible(run_dir: Path) -> Iterator[Progress]:
    """Handle SIGINT, SIGTERM and SIGUSR1 while a run trains in this process (the previous handlers come
    back afterwards); a SIGTERM Lightning turned into its ``SIGTERMException`` becomes ``RunInterrupted``."""
    global _progress
    _progress = Progress(run_dir)
    previous = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    try:
        yield _progress
    except SIGTERMException:
        raise _progress.interrupted() from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _progress = None


def _on_signal(signum: int, frame: object) -> None:
    """Record the first signal; outside a batch loop stop at once. A second signal stops at once wherever
    the run is (a hung loader or collective never reaches a batch end). DataLoader workers, which inherit
    this handler (Ctrl-C reaches the terminal's whole process group), leave it to the training process."""
    progress = _progress
    if progress is None or os.getpid() != progress.pid:
        return
    if progress.signum is not None:
        raise progress.interrupted(progress.signum)
    progress.signum = signum
    if signum == signal.SIGUSR1 and is_global_zero():
        requeue_slurm_job()
    if not progress.in_loop:
        raise progress.interrupted()


class StopOnSignal(L.Callback):
    """Tells the interrupt handler where the run is (phase, epoch, testing) and ends a Trainer's loop at the
    first batch end after a signal, with every rank at the same batch."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _take_back_sigterm()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enter(f"in phase {self.name!r}, epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        self._stop_if_signalled(trainer)  # a signal while the previous epoch's checkpoint was written

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)
        self._leave(f"after phase {self.name!r}")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _take_back_sigterm()
        self._enter("while testing")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)
        self._leave("while writing the results")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._stop_if_signalled(trainer)

    # Evaluation shards are not padded, so ranks may run different numbers of eval batches: a collective per
    # eval batch would hang. One process stops at the next eval batch; several decide once the loop ends.
    def on_validation_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.world_size == 1:
            self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.world_size == 1:
            self._stop_if_signalled(trainer)

    @staticmethod
    def _enter(where: str) -> None:
        if _progress is not None:
            _progress.where, _progress.in_loop = where, True

    @staticmethod
    def _leave(where: str) -> None:
        if _progress is not None:
            _progress.where, _progress.in_loop = where, False

    @staticmethod
    def _stop_if_signalled(trainer: L.Trainer) -> None:
        signalled = _progress is not None and _progress.signum is not None
        if trainer.world_size > 1:  # every rank stops at this batch if any rank was signalled
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if signalled and _progress is not None:
            raise _progress.interrupted()


def _take_back_sigterm() -> None:
    """Handle SIGTERM here, not in the handler Lightning installed when its loop started (it comes back when
    the loop ends): under DDP Lightning's handler runs ``dist.broadcast`` inside the signal handler, which
    meets another rank's gradient all-reduce (seen: gloo "Connection closed by peer" on rank 1, and
    torchrun's SIGKILL 30 s later). ``StopOnSignal`` stops every rank at one batch end instead."""
    if _progress is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)


def interrupt_message(progress: Progress, signum: int) -> str:
    """``interrupted in phase 'top', epoch 2/3 (SIGTERM); `finetune resume=RUN` continues from …``."""
    stopped = f"interrupted {progress.where} ({signal.Signals(signum).name})"
    run = progress.run_dir
    if (run / "metrics.json").is_file():
        return (
            f"{stopped}, after the test; `finetune resume={run} resume_finished=true` tests the run again "
            "and rewrites its results"
        )
    if not holds_results(run):
        return f"{stopped}, before the run wrote anything: start it again"
    checkpoint = next(
        (run / "checkpoints" / n for n in RESUME_CHECKPOINTS if (run / "checkpoints" / n).is_file()), None
    )
    first = f"phase {progress.phases[0]!r}" if progress.phases else "the first phase"
    if checkpoint is None and not progress.writes_checkpoints:
        return (
            f"{stopped}; checkpoints.keep=none writes no checkpoint: `finetune resume={run}` starts the run again "
            f"from {first}"
        )
    if checkpoint is None:
        return f"{stopped}; no checkpoint was written yet: `finetune resume={run}` starts {first} from the beginning"
    return f"{stopped}; `finetune resume={run}` continues from {checkpoint_epoch(checkpoint, progress.phases)}"


def checkpoint_epoch(checkpoint: Path, phases: list[str]) -> str:
    """``the checkpoint of phase 'probe', epoch 2`` (read from the checkpoint, loaded lazily)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    index = int(state.get(PHASE_KEY, 0))
    phase = phases[index] if index < len(phases) else f"phase {index + 1}"
    return f"the checkpoint of phase {phase!r}, epoch {int(state.get('epoch', 0)) + 1}"


def log_to_run_file(run_dir: Path, message: str) -> None:
    """Write ``message`` to the run's log file only (the console gets it once, from the command): Hydra's
    file handler in the process that composed the config, else the run's ``finetune.log`` (a DDP worker)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    record = log.makeRecord(log.name, logging.WARNING, __file__, 0, message, None, None)
    for handler in files:
        handler.handle(record)
    if not files and (run_dir / "finetune.log").is_file():
        with open(run_dir / "finetune.log", "a") as f:
            f.write(f"WARNING: {message}\n")


def slurm_job_id() -> str | None:
    """The SLURM job to requeue (``<array job>_<task>`` for an array task), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> None:
    """``scontrol requeue <job>`` (as Lightning's SLURM handler does): the job starts again later, and its
    script's ``finetune resume=<run>`` continues from the last checkpoint. Outside SLURM, nothing."""
    job = slurm_job_id()
    if job is None or not re.fullmatch(r"[0-9_]+", job):
        return
    try:
        code = subprocess.call(["scontrol", "requeue", job])
    except OSError as err:
        code = err.errno
    log.warning("SLURM job %s %s", job, "requeued" if code == 0 else f"not requeued (scontrol exit code {code})")


def slurm_plugins() -> list[SLURMEnvironment]:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue (see the module docstring). Not for
    workers torchrun started inside a SLURM job (``srun torchrun …``): SLURM's variables count the launchers
    there, and Lightning's own choice, torchrun's environment, is the right one."""
    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]
