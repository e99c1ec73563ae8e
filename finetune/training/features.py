"""Feature cache: when a phase trains only the head, run the frozen backbone once per image.

Valid only when the backbone cannot change and sees the same input every epoch: every stage
frozen, BatchNorm frozen (eval mode) and a deterministic training transform (augment=none).
Features are extracted at the start of each phase that uses them, from the backbone as it is then: a
head-only phase after one that trained adapters (``backbone.adapter``) or stages sees the backbone as
trained, and no cache outlives its phase.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from finetune.data.base import FinetuneDataModule
from finetune.data.datamodule import TrainBatches
from finetune.data.samplers import split_sampler, trainer_shard
from finetune.models.freezing import FineTuneModel
from finetune.run import CACHE_CHOICES
from finetune.run.errors import FinetuneError


def cache_blockers(model: FineTuneModel, data: FinetuneDataModule) -> list[str]:
    """Why the current phase cannot use cached features (empty: it can)."""
    reasons = []
    if set(model.frozen) != set(model.stage_map.stages):
        what = f"the {model.adapter.kind} adapters of some" if model.adapter else "some"
        reasons.append(f"{what} backbone stages train in this phase (cache needs freeze=all)")
    if model.bn_policy != "frozen":
        reasons.append("backbone.bn=train updates BatchNorm statistics (cache needs bn=frozen)")
    if not data.train_transform_is_deterministic:
        reasons.append("training inputs are random (augment ops or segmentation crops; cache needs augment=none)")
    return reasons


def use_feature_cache(setting: str | bool, model: FineTuneModel, data: FinetuneDataModule) -> bool:
    """Decide ``data.cache_features=auto|true|false`` for the current phase."""
    setting = str(setting).lower()
    if setting not in CACHE_CHOICES:
        raise FinetuneError(f"data.cache_features={setting!r}: choose one of {', '.join(CACHE_CHOICES)}")
    blockers = cache_blockers(model, data)
    if setting == "true" and blockers:
        raise FinetuneError(
            "data.cache_features=true but features cannot be cached: "
            + "; ".join(blockers)
            + ". Use data.cache_features=auto to cache only where it is exact."
        )
    return setting != "false" and not blockers


@torch.no_grad()
def extract_features(model: FineTuneModel, loader: DataLoader, device: torch.device) -> TensorDataset:
    """Pooled backbone features and targets of every batch, in loader order."""
    was_training = model.training
    model.eval()
    backbone = model.backbone.to(device)
    features, targets = [], []
    for images, target in loader:
        features.append(backbone(images.to(device)).cpu())
        targets.append(target)
    model.train(was_training)
    return TensorDataset(torch.cat(features), torch.cat(targets))


class FeatureDataModule(L.LightningDataModule):
    """Cached features served exactly like the image loaders (same batch size, same epoch order)."""

    def __init__(self, data: FinetuneDataModule, datasets: dict[str, TensorDataset]) -> None:
        super().__init__()
        self.batch_size, self.seed, self.data, self.datasets = data.batch_size, data.seed, data, datasets

    @classmethod
    def extract(cls, model: FineTuneModel, data: FinetuneDataModule, device: torch.device) -> FeatureDataModule:
        """Run the frozen backbone once over the train and val images (eval transforms)."""
        return cls(
            data,
            {
                "train": extract_features(model, data.eval_dataloader("train"), device),
                "val": extract_features(model, data.val_dataloader(), device),
            },
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        rank, world = trainer_shard(self.trainer)
        if split == "train" and shuffle:  # imbalance=sampler too; the same batches as the image loader
            return DataLoader(
                dataset, batch_sampler=TrainBatches(self.data.train_sampler(rank, world), self.batch_size)
            )
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=split_sampler(len(dataset), shuffle, self.seed, rank, world)
        )
