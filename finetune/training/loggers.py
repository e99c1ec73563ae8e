"""The Lightning loggers of every phase's Trainer (the ``logger`` group): one registry entry per logger,
with the package it needs and its builder.

``LOGGERS`` is read by the config checks, so this module imports no Lightning at import time: each
builder imports its logger when it is called (``"finetune.training.loggers:<builder>"``, resolved on
first use). Every builder takes a ``LogContext``: the run directory, the phase (or ``test``), the log
version (``rundir.log_version``: ``<phase>`` or ``<phase>/attempt-<n>``) and the ``logger`` settings.
MLflow and W&B log every phase into the run's one MLflow / W&B run (``training.tracking`` starts and
ends it), each metric prefixed with the phase (``probe/val/acc``; the test's are ``test/…`` already).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.run.registry import Entry, Registry, resolve
from finetune.training.tracking import mlflow_uri, read_record, wandb_init_args

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger


@dataclass(frozen=True)
class LogContext:
    """What a logger of one phase's Trainer is built for."""

    run_dir: Path
    phase: str  # a phase's name, or "test"
    version: str  # rundir.log_version: the phase's log folder under logs/ and tensorboard/
    settings: Any  # the ``logger`` config (LoggerSchema): experiment, mlflow_uri

    @property
    def prefix(self) -> str:
        """The metric prefix of this phase in a run-wide logger ("" for the test: its keys say ``test/``)."""
        return "" if self.phase == "test" else self.phase


@dataclass(frozen=True)
class LoggerKind(Entry):
    """A Lightning logger, switched on by ``logger.<name>=true`` unless ``always``."""

    builder: str  # "module:function": LogContext -> Logger
    package: str | None = None  # the Python package it needs beyond Lightning (checked before a run)
    install: str | None = None  # the pip argument that installs it (default: ``package``)
    always: bool = False  # on in every run (no switch): the curves, report.html and resume read it

    def build(self, context: LogContext) -> Logger:
        return resolve(self.builder)(context)


def csv_logger(context: LogContext) -> Logger:
    """``logs/<version>/metrics.csv``."""
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(context.run_dir, name="logs", version=context.version)


def tensorboard_logger(context: LogContext) -> Logger:
    """``tensorboard/<version>`` (and, at the end, the run's hparams session in ``tensorboard/hparams``)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(context.run_dir, name="tensorboard", version=context.version, default_hp_metric=False)


def mlflow_logger(context: LogContext) -> Logger:
    """The run's MLflow run (its id in tracking.json, which ``tracking.Tracking`` wrote for this store) in the
    run-wide store (``tracking.mlflow_uri``: tracking.json masks its password); the phase's Trainer never ends it
    (``tracking.Tracking`` does, once every phase and the test are logged)."""
    from lightning.pytorch.loggers import MLFlowLogger

    class PhaseMLFlowLogger(MLFlowLogger):
        LOGGER_JOIN_CHAR = "/"  # probe/val/acc

        def finalize(self, status: str = "success") -> None:
            """Lightning ends the MLflow run with each Trainer; the run goes on into the next phase."""

    known = read_record(context.run_dir).get("mlflow") or {}
    return PhaseMLFlowLogger(
        experiment_name=context.settings.experiment,
        tracking_uri=mlflow_uri(context.settings.mlflow_uri, context.run_dir),
        run_id=known.get("run_id"),
        prefix=context.prefix,
    )


def wandb_logger(context: LogContext) -> Logger:
    """The run's W&B run (one id for every phase, tracking.json), online when an API key is configured, else
    offline in the run directory (``tracking.wandb_mode``); grouped by sweep for a ``-m`` job. The next phase
    takes over the W&B run the previous one started (``tracking.Tracking`` finishes it)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    class PhaseWandbLogger(WandbLogger):
        LOGGER_JOIN_CHAR = "/"

    args = wandb_init_args(context.run_dir, context.settings.experiment)
    running = wandb.run
    if running is not None and running.id != args["id"]:  # another finetune run's, left open in this process
        wandb.finish()
        running = None
    return PhaseWandbLogger(experiment=running, prefix=context.prefix, **args)


# In this order: CSV first, so ``trainer.logger`` is the CSV one.
LOGGERS: Registry[LoggerKind] = Registry(
    "logger",
    [
        LoggerKind(
            "csv", "logs/<phase>/metrics.csv, always written", "finetune.training.loggers:csv_logger", always=True
        ),
        LoggerKind(
            "tensorboard",
            "TensorBoard event files in tensorboard/<phase>",
            "finetune.training.loggers:tensorboard_logger",
            package="tensorboard",
        ),
        LoggerKind(
            "mlflow",
            "MLflow: one run per finetune run in one store for all runs (default runs/mlflow.db)",
            "finetune.training.loggers:mlflow_logger",
            package="mlflow",
            install="'finetune[mlflow]'",
        ),
        LoggerKind(
            "wandb",
            "Weights & Biases: online when logged in, else offline in wandb/",
            "finetune.training.loggers:wandb_logger",
            package="wandb",
        ),
    ],
)
