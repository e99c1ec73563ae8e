"""What every task's LightningModule shares: one instance per phase over the same model, a fresh
optimizer and scheduler per phase (never a param group added to a live optimizer), and the phase
index written into every checkpoint."""

from __future__ import annotations

import lightning as L

from finetune.models.freezing import FineTuneModel, param_groups, stage_learning_rates
from finetune.run import OPTIMIZERS, SCHEDULERS
from finetune.run.schedule import PHASE_KEY, PhaseOptim


class PhasedTask(L.LightningModule):
    """Base of the task modules: ``model`` trained under ``optim`` in phase ``phase_index``."""

    def __init__(self, model: FineTuneModel, optim: PhaseOptim, phase_index: int) -> None:
        super().__init__()
        self.model, self.optim, self.phase_index = model, optim, phase_index

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[PHASE_KEY] = self.phase_index

    def configure_optimizers(self):
        """Param groups named by stage with their real learning rates; the phase's scheduler."""
        o = self.optim
        lrs = stage_learning_rates(self.model, o.lr, o.backbone_lr_mult, o.layer_decay)
        optimizer = OPTIMIZERS.get(o.optimizer).build(param_groups(self.model, lrs, o.weight_decay), o.momentum)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = SCHEDULERS.get(o.scheduler).build(optimizer, total, round(o.warmup_epochs * per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": scheduler | {"name": "lr"}}
