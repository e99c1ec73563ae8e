"""Pruning a trial of a search from its validations: after each validation the trial reports the monitor to
its study (the step is the epoch counted across phases: a phase's new Trainer restarts its own count) and
asks the study's pruner; a trial to prune stops there (``TrialPruned``: no test, no export), and the sweeper
tells the study it was PRUNED. Under DDP rank 0 reports and every rank stops together."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L

from finetune.run.schema import SearchSchema
from finetune.training.interrupts import log_to_run_file
from finetune.training.search import TrialPruned
from finetune.training.search.storage import open_storage, trial_id_of
from finetune.training.search.study import study_pruner

if TYPE_CHECKING:
    from optuna.trial import Trial


class TrialPruning(L.Callback):
    """One callback shared by every phase's Trainer of a trial (its epoch count runs across phases)."""

    def __init__(self, search: SearchSchema, monitor: str) -> None:
        self.search, self.monitor = search, monitor
        self.epoch = 0  # validations done so far, every phase
        self._trial: Trial | None = None
        self.detached = False  # the study finished the trial meanwhile: the run goes on, unpruned

    def trial(self) -> Trial:
        """The trial this run is, in its study (opened on first use, rank 0 only)."""
        if self._trial is None:
            import optuna

            storage = open_storage(self.search.storage)
            study = optuna.load_study(study_name=self.search.study, storage=storage)
            study.pruner = study_pruner(study)
            self._trial = optuna.trial.Trial(study, trial_id_of(storage, self.search.study, self.search.trial))
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step, self.epoch = self.epoch, self.epoch + 1
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if trainer.is_global_zero and value is not None and math.isfinite(float(value)) and not self.detached:
            prune = self._report(float(value), step, Path(trainer.default_root_dir))
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            phase = str(trainer.logger.version).split("/")[0] if trainer.logger is not None else "?"  # logs/<phase>
            record = {"epoch": self.epoch, "phase": phase, "monitor": self.monitor, "value": float(value or 0)}
            error = TrialPruned(record)
            if trainer.is_global_zero:
                log_to_run_file(Path(trainer.default_root_dir), f"trial {self.search.trial} {error}")
            raise error

    def _report(self, value: float, step: int, run_dir: Path) -> bool:
        """Report to the trial; True when the pruner stops it. A trial the study finished meanwhile (failed and
        re-queued: its heartbeat lapsed, or its launcher gave up on the job) gets no more reports."""
        from optuna.exceptions import UpdateFinishedTrialError

        trial = self.trial()
        try:
            trial.report(value, step)
        except UpdateFinishedTrialError:
            self.detached = True
            log_to_run_file(
                run_dir,
                f"trial {self.search.trial} was finished in its study meanwhile (failed and re-queued): this run "
                "goes on unpruned, and the study does not see it",
            )
            return False
        return trial.should_prune()


def trial_pruning(search: SearchSchema, monitor: str) -> list[TrialPruning]:
    """The pruning callback of a search's trial (``search.study`` set by the sweeper), else none. A run that is no
    live trial (a resumed trial directory) had its ``search`` cleared first (``commands.train.detach_from_study``)."""
    return [TrialPruning(search, monitor)] if search.study is not None else []
