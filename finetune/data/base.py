"""What every task's data module answers, under one contract.

A data module scans and checks its dataset when built, then tells the model what it needs
(``info``: class names, channels, per-class counts; ``in_chans``); the model answers with a
Preprocessing (``set_preprocessing``), after which the loaders work. Subclasses say how a split
becomes a dataset and which transforms apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from finetune.data.samplers import split_sampler, trainer_shard
from finetune.data.transforms import Preprocessing


class DeferredLoader(DataLoader):
    """A DataLoader whose iterator is created when the first batch is asked for, not by ``iter()``.

    A sampler's ``set_epoch`` must come before its loader's iterator is created: with worker processes
    the iterator draws its first ``prefetch_factor * num_workers`` batches of indices at once. Lightning
    creates the training iterator before it sets the epoch (``estimated_stepping_batches``, which
    ``configure_optimizers`` reads, creates it before a checkpoint is even restored), and a resumed run
    trains its first epoch on that iterator (Lightning #21938): it would replay epoch 0's order and
    augmentation instead of the restored epoch's.
    """

    def __iter__(self) -> Iterator:
        return _StartsAtFirstBatch(super().__iter__)


class _StartsAtFirstBatch(Iterator):
    """An iterator that calls ``start`` for the real one at the first ``next()``."""

    def __init__(self, start: Callable[[], Iterator]) -> None:
        self._start, self._iterator = start, None

    def __next__(self) -> object:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about the data, whatever the task."""

    class_names: list[str]
    image_channels: int  # channels of the source images: 1 (all grayscale) or 3
    class_counts: list[int]  # per class in the train split: images, positives (multi-label) or pixels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class FinetuneDataModule(L.LightningDataModule):
    """Splits, channels, loaders, sampler and class weights of one dataset."""

    info: DataInfo
    splits: dict[str, Sized]  # "train", "val", "test"

    def __init__(self, grayscale: str, batch_size: int, seed: int) -> None:
        super().__init__()
        self.grayscale, self.batch_size, self.seed = grayscale, batch_size, seed
        self.preprocessing: Preprocessing | None = None

    @property
    def in_chans(self) -> int:
        """Channels the model takes: 1 with dataset.grayscale=adapt and gray images, else 3."""
        return 1 if self.grayscale == "adapt" and self.info.image_channels == 1 else 3

    @property
    def test_is_val(self) -> bool:
        """Whether the dataset has no test split of its own, so the test runs on the val split."""
        return self.splits["test"] is self.splits["val"]

    @property
    def split_sizes(self) -> dict[str, int]:
        """Images per split: {"train": ..., "val": ..., "test": ...}."""
        return {name: len(split) for name, split in self.splits.items()}

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Loss weights the data asks for (None: unweighted)."""
        return None

    @property
    def train_transform_is_deterministic(self) -> bool:
        """True when training applies no random op, so backbone features can be cached."""
        return False

    def set_preprocessing(self, pre: Preprocessing) -> None:
        """Adopt the model's preprocessing and build the transforms."""
        raise NotImplementedError

    def shard(self) -> tuple[int, int]:
        """(rank, world size) of the trainer this module serves; (0, 1) outside one."""
        return trainer_shard(self.trainer)

    def train_sampler(self, rank: int | None = None, world_size: int | None = None) -> Sampler[int]:
        """The training order of one rank (default: this trainer's), reshuffled every epoch."""
        own_rank, own_world = self.shard()
        rank, world = (own_rank if rank is None else rank), (own_world if world_size is None else world_size)
        return split_sampler(self.train_length, True, self.seed, rank, world)

    @property
    def train_length(self) -> int:
        """Training samples per epoch (before sharding)."""
        return len(self.splits["train"])

    def eval_dataloader(self, split: str, shard: bool = False) -> DataLoader:
        """``split`` in order through the evaluation transform (for features, reports, tuning)."""
        raise NotImplementedError

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val", shard=True)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test", shard=True)
