"""Several processes in a run: keep ranks honest, sync BatchNorm, end the process group (the launching itself:
finetune.training.launch)."""

from __future__ import annotations

import lightning as L
import timm
import torch
from lightning.pytorch.plugins.layer_sync import LayerSync

from finetune.training.launch import DIVERGED_MARKER, check_layout, is_global_zero, launched_by_a_launcher

__all__ = [  # the launch helpers the training modules and the worker import from here
    "DIVERGED_MARKER",
    "RankConsistency",
    "TimmSyncBatchNorm",
    "check_layout",
    "end_process_group",
    "is_global_zero",
    "launched_by_a_launcher",
]


def end_process_group() -> None:
    """Destroy the default process group once a rank's run has finished, while the interpreter is still
    whole. Lightning leaves it alive; destroyed at interpreter exit instead, gloo's threads can abort the
    process ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489). Not
    called after an error: the other ranks may still be in a collective."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class TimmSyncBatchNorm(LayerSync):
    """SyncBatchNorm via timm, which keeps BatchNormAct layers' activations (torch's drops them)."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return timm.layers.convert_sync_batchnorm(model)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # SyncBatchNorm behaves as BatchNorm outside a process group


class RankConsistency(L.Callback):
    """After each phase, all ranks must hold identical parameters and buffers (else: fail loudly)."""

    def __init__(self) -> None:
        self.checksums: dict[str, list[float]] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        tensors = [*pl_module.parameters(), *pl_module.buffers()]
        local = torch.stack([t.detach().double().sum() for t in tensors if t.is_floating_point()]).sum()
        gathered = pl_module.all_gather(local).flatten().tolist()
        phase = trainer.logger.version if trainer.logger else str(len(self.checksums))
        self.checksums[str(phase)] = gathered
        if max(gathered) - min(gathered) > 1e-9 * max(1.0, abs(gathered[0])):
            raise RuntimeError(f"ranks diverged after phase {phase}: parameter checksums {gathered}")
