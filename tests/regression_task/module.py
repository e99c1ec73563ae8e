"""Image regression as a LightningModule: the model predicts the standardised target; the loss is the
squared (``mse``) or absolute (``l1``) error; validation and test report the loss, the mean absolute
error in the target's units (``mae``), R² and, for the test, the error of always predicting the
training split's mean (``mae_of_train_mean``: the bar a model must clear)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune.models.freezing import FineTuneModel
from finetune.run.schedule import PhaseOptim
from finetune.tasks.phased import PhasedTask


class RegressionModule(PhasedTask):
    """One phase (or the test) of a ``FineTuneModel`` with one output."""

    def __init__(
        self,
        model: FineTuneModel,
        optim: PhaseOptim,
        phase_index: int,
        loss: str,
        target_std: float,
        features_input: bool = False,
    ) -> None:
        super().__init__(model, optim, phase_index)
        self.loss_fn = F.mse_loss if loss == "mse" else F.l1_loss
        self.target_std = target_std
        self.features_input = features_input  # batches hold cached backbone features, not images
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_results: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _predict(self, inputs: torch.Tensor) -> torch.Tensor:
        return (self.model.head(inputs) if self.features_input else self.model(inputs))[:, 0]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self.loss_fn(self._predict(inputs), targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(targets))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, targets = batch
        self.outputs.append((self._predict(inputs).detach().cpu(), targets.cpu()))

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _scores(self) -> dict[str, torch.Tensor]:
        predicted, targets = (torch.cat(parts) for parts in zip(*self.outputs))
        self.outputs = []
        residual = ((targets - predicted) ** 2).sum()
        return {
            "loss": self.loss_fn(predicted, targets),
            "mae": (predicted - targets).abs().mean() * self.target_std,
            "r2": 1 - residual / ((targets - targets.mean()) ** 2).sum().clamp_min(1e-12),
            "mae_of_train_mean": targets.abs().mean() * self.target_std,  # predicting 0: the train mean
        }

    def on_validation_epoch_end(self) -> None:
        if self.outputs:
            self.log_dict({f"val/{k}": v for k, v in self._scores().items() if k != "mae_of_train_mean"})

    def on_test_epoch_end(self) -> None:
        self.test_results = self._scores()
        self.log_dict({f"test/{k}": v for k, v in self.test_results.items()})
