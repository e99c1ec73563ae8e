"""Feature cache: when a phase trains only the head, run the frozen backbone once per image.

Valid only when the backbone cannot change and sees the same input every epoch: every stage
frozen, BatchNorm frozen (eval mode) and a deterministic training transform (augment=none).
Features are extracted at the start of each phase that uses them, from the backbone as it is then: a
head-only phase after one that trained adapters (``backbone.adapter``) or stages sees the backbone as
trained, and no cache outlives its phase. Under ``trainer.limit_train_batches`` / ``limit_val_batches`` only
the images of the batches the phase will run are extracted (a short debug run does not pay for the dataset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import islice

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from finetune.data.base import FinetuneDataModule
from finetune.data.datamodule import TrainBatches
from finetune.data.samplers import ShardSampler, split_sampler, trainer_shard
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


class CachedFeatures(Dataset):
    """A split's pooled backbone features and targets, indexed like the split's images; ``indices``: the
    images extracted out of ``size`` (None: all, in order), the only ones the samplers of the phase may draw."""

    def __init__(
        self, features: torch.Tensor, targets: torch.Tensor, size: int, indices: Sequence[int] | None = None
    ) -> None:
        self.features, self.targets, self.size = features, targets, size
        self.rows = None if indices is None else {index: row for row, index in enumerate(indices)}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = index if self.rows is None else self.rows[index]
        return self.features[row], self.targets[row]


@torch.no_grad()
def extract_features(
    model: FineTuneModel, loader: DataLoader, device: torch.device, indices: Sequence[int] | None = None
) -> CachedFeatures:
    """Pooled backbone features and targets of the images at ``indices`` of ``loader``'s split (None: every
    batch, in loader order)."""
    subset = bool(indices) and not isinstance(loader.dataset, IterableDataset) and len(indices) < len(loader.dataset)
    if subset:
        loader = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=indices,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
        )
    was_training = model.training
    model.eval()
    backbone = model.backbone.to(device)
    features, targets = [], []
    for images, target in loader:
        features.append(backbone(images.to(device)).cpu())
        targets.append(target)
    model.train(was_training)
    features = torch.cat(features)
    return CachedFeatures(
        features, torch.cat(targets), len(loader.dataset) if subset else len(features), indices if subset else None
    )


def batches_run(limit: int | float, available: int) -> int:
    """How many of ``available`` batches Lightning runs under ``limit`` (a count, or a fraction as a float)."""
    return min(limit, available) if isinstance(limit, int) else int(available * limit)


def train_indices(data: FinetuneDataModule, trainer: L.Trainer) -> list[int] | None:
    """The training images the phase of ``trainer`` draws on any rank in any of its epochs, under
    ``trainer.limit_train_batches``; None: possibly all of them."""
    world = trainer.world_size
    batches = [TrainBatches(data.train_sampler(rank, world), data.batch_size) for rank in range(world)]
    per_epoch = batches_run(trainer.limit_train_batches, len(batches[0]))
    if per_epoch >= len(batches[0]):
        return None
    epochs = trainer.max_epochs
    if epochs is None or epochs < 0:  # counted in steps (the lr-find scan)
        if trainer.max_steps < 0 or per_epoch == 0:
            return None
        epochs = math.ceil(trainer.max_steps * trainer.accumulate_grad_batches / per_epoch)
    used: set[int] = set()
    for epoch in range(epochs):
        for rank_batches in batches:
            rank_batches.sampler.set_epoch(epoch)
            used.update(index for batch in islice(rank_batches, per_epoch) for index in batch)
    return sorted(used)


def val_indices(size: int, batch_size: int, trainer: L.Trainer) -> list[int] | None:
    """The validation images (of ``size``) some rank evaluates under ``trainer.limit_val_batches``; None: all."""
    used: set[int] = set()
    for rank in range(trainer.world_size):
        shard = list(ShardSampler(size, rank, trainer.world_size))
        used.update(shard[: batches_run(trainer.limit_val_batches, math.ceil(len(shard) / batch_size)) * batch_size])
    return sorted(used) if len(used) < size else None


class FeatureDataModule(L.LightningDataModule):
    """Cached features served exactly like the image loaders (same batch size, same epoch order)."""

    def __init__(self, data: FinetuneDataModule, datasets: dict[str, Dataset]) -> None:
        super().__init__()
        self.batch_size, self.seed, self.data, self.datasets = data.batch_size, data.seed, data, datasets

    @classmethod
    def extract(
        cls, model: FineTuneModel, data: FinetuneDataModule, device: torch.device, trainer: L.Trainer | None = None
    ) -> FeatureDataModule:
        """Run the frozen backbone once over the train and val images (eval transforms): those the phase of
        ``trainer`` will draw (its batch limits), or every one."""
        train, val = data.eval_dataloader("train"), data.eval_dataloader("val")
        train_at = val_at = None
        if trainer is not None:
            train_at, val_at = train_indices(data, trainer), val_indices(len(val.dataset), data.batch_size, trainer)
        return cls(
            data,
            {
                "train": extract_features(model, train, device, train_at),
                "val": extract_features(model, val, device, val_at),
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
