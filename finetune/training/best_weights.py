"""``checkpoints.keep=none``: the weights of the best validation epoch held in memory (a CPU copy), no
checkpoint file written during training, so a sweep's trials never hold a checkpoint on disk.

``BestWeights`` picks the epoch by the rule of ``best.ckpt`` (``phases.best_checkpoint``): the first
validation, then each one whose ``monitor`` is strictly better (``monitor_mode``; NaN is the worst value),
competing across phases (one callback serves every phase's Trainer). With ``ema.decay`` the copy holds the
average, as a checkpoint would (``WeightAveraging.on_save_checkpoint``). Under DDP the decision is reduced
across ranks (every rank copies the same epoch); phases continue from the weights the previous phase ended
with, as with checkpoints.

An interrupted run writes nothing: ``finetune resume=<run>`` starts it again from the first phase. Only a
failure after the test (``save``, called by ``training.train``) writes the copy as ``checkpoints/best.ckpt``,
so the weights the run tested are not lost.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging

from finetune.run.checkpointing import AtomicCheckpointIO
from finetune.run.schedule import PHASE_KEY
from finetune.training.search import direction


def monitor_mode(monitor: str) -> str:
    """``min`` for a loss (``val/loss``), else ``max``: how every callback ranks ``monitor`` (the search's
    ``direction``, in Lightning's words)."""
    return "min" if direction(monitor) == "minimize" else "max"


class BestWeights(L.Callback):
    """The best validation epoch's checkpoint contents (the LightningModule's ``state_dict`` on the CPU, its
    phase record and epoch) and its score."""

    def __init__(self, monitor: str) -> None:
        self.monitor, self.mode = monitor, monitor_mode(monitor)
        self.best_model_score: torch.Tensor | None = None
        self.checkpoint: dict | None = None

    @property
    def state(self) -> dict[str, torch.Tensor] | None:
        """The best epoch's ``state_dict`` (None before a validation logged ``monitor``)."""
        return None if self.checkpoint is None else self.checkpoint["state_dict"]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        current = trainer.callback_metrics.get(self.monitor)
        improved = current is not None and self._improves(float(current))
        if trainer.world_size > 1:  # every rank keeps the same epoch, as ModelCheckpoint decides
            improved = trainer.strategy.reduce_boolean_decision(improved, all=True)
        if improved:
            self.best_model_score = torch.tensor(self._comparable(float(current)))
            checkpoint = checkpoint_state(trainer, pl_module)
            self.checkpoint = {  # not the live weights an average set aside (``current_model_state``)
                "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in checkpoint["state_dict"].items()},
                "epoch": trainer.current_epoch,
                **({PHASE_KEY: checkpoint[PHASE_KEY]} if PHASE_KEY in checkpoint else {}),
            }

    def save(self, path: Path) -> Path:
        """Write the best epoch as a checkpoint, atomically: what ``finetune export run=`` and a re-test
        (``resume_finished=true``) read of a ``best.ckpt``, with the score in ``ModelCheckpoint``'s record."""
        if self.checkpoint is None:
            raise ValueError("no validation has picked an epoch yet")
        record = {"monitor": self.monitor, "best_model_score": self.best_model_score}
        checkpoint = {**self.checkpoint, "callbacks": {ModelCheckpoint.__qualname__: record}}
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        return path

    def _comparable(self, value: float) -> float:
        return value if value == value else float("inf" if self.mode == "min" else "-inf")

    def _improves(self, value: float) -> bool:
        if self.best_model_score is None:
            return True
        best, value = float(self.best_model_score), self._comparable(value)
        return value < best if self.mode == "min" else value > best


def checkpoint_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
    """What a checkpoint written now would hold of the model: its ``state_dict`` (the weight average's under
    ``ema.decay``) and the module's own entries (the phase index, ``PhasedTask.on_save_checkpoint``)."""
    checkpoint = {"state_dict": pl_module.state_dict()}
    pl_module.on_save_checkpoint(checkpoint)
    for callback in trainer.callbacks:
        if isinstance(callback, WeightAveraging):
            callback.on_save_checkpoint(trainer, pl_module, checkpoint)
    return checkpoint
