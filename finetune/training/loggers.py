"""The Lightning loggers of every phase's Trainer (the ``logger`` group): one registry entry per logger,
with the package it needs and its builder.

``LOGGERS`` is read by the config checks, so this module imports no Lightning at import time: each
builder imports its logger when it is called (``"finetune.training.loggers:<builder>"``, resolved on
first use). Every builder takes the run directory, the phase (or ``test``), the log version
(``rundir.log_version``: ``<phase>`` or ``<phase>/attempt-<n>``) and ``logger.experiment``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.run.registry import Entry, Registry, resolve

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

MLFLOW_DB = (
    "mlflow.db"  # logger=mlflow: the run directory's tracking database (mlflow ui --backend-store-uri sqlite:///…)
)


@dataclass(frozen=True)
class LoggerKind(Entry):
    """A Lightning logger, switched on by ``logger.<name>=true`` unless ``always``."""

    builder: str  # "module:function": (run_dir, phase, version, experiment) -> Logger
    package: str | None = None  # the Python package it needs beyond Lightning (checked before a run)
    install: str | None = None  # the pip argument that installs it (default: ``package``)
    always: bool = False  # on in every run (no switch): the curves, report.html and resume read it

    def build(self, run_dir: Path, phase: str, version: str, experiment: str) -> Logger:
        return resolve(self.builder)(run_dir, phase, version, experiment)


def csv_logger(run_dir: Path, phase: str, version: str, experiment: str) -> Logger:
    """``logs/<version>/metrics.csv``."""
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(run_dir, name="logs", version=version)


def tensorboard_logger(run_dir: Path, phase: str, version: str, experiment: str) -> Logger:
    """``tensorboard/<version>``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(run_dir, name="tensorboard", version=version, default_hp_metric=False)


def mlflow_logger(run_dir: Path, phase: str, version: str, experiment: str) -> Logger:
    """A local store in the run directory: the SQLite database ``mlflow.db``, artifacts in ``mlruns/``
    (MLflow 3 refuses its old file store); one MLflow run per phase (and the test)."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(
        experiment_name=experiment,
        run_name=f"{run_dir.name}/{version}",
        tracking_uri=f"sqlite:///{(run_dir / MLFLOW_DB).absolute()}",
        artifact_location=(run_dir / "mlruns").absolute().as_uri(),
        tags={"finetune_run": str(run_dir), "phase": phase},
    )


def wandb_logger(run_dir: Path, phase: str, version: str, experiment: str) -> Logger:
    """Weights & Biases, offline, in the run directory; one W&B run per phase (and the test)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    if wandb.run is not None:  # the previous phase's run
        wandb.finish()
    return WandbLogger(
        project=experiment,
        name=f"{run_dir.name}/{version}",
        group=run_dir.name,
        job_type=phase,
        save_dir=str(run_dir),
        offline=True,
    )


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
            "MLflow, a local SQLite store (mlflow.db) and mlruns/ in the run directory",
            "finetune.training.loggers:mlflow_logger",
            package="mlflow",
            install="'finetune[mlflow]'",
        ),
        LoggerKind(
            "wandb", "Weights & Biases, offline, in wandb/", "finetune.training.loggers:wandb_logger", package="wandb"
        ),
    ],
)
