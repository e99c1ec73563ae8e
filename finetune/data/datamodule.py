"""The data module: scans and checks the dataset at construction, serves batches once the model
has said how to preprocess (`set_preprocessing`).

Data flows one way: `dm.info` / `dm.in_chans` tell the model what it gets; the model answers with
a Preprocessing. Batches are (float32 [B, C, H, W] normalized, int64 [B]) — multi-label: float32
multi-hot [B, num_classes].
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import BatchSampler, DataLoader

from finetune.data.base import DataInfo, DeferredLoader, FinetuneDataModule
from finetune.data.configs import dataset_config
from finetune.data.datasets import load_source
from finetune.data.imbalance import imbalance_ratio, loss_weights, resolve_imbalance
from finetune.data.options import plain_dict
from finetune.data.samplers import ClassBalancedSampler, SeededDraws, split_sampler
from finetune.data.sources import TASK_TYPES, Samples, class_counts
from finetune.data.transforms import (
    Augment,
    Preprocessing,
    eval_transform,
    gray_preprocessing,
    is_deterministic,
    seed_draw,
    seed_transform,
    train_transform,
)
from finetune.run.errors import DatasetError

__all__ = ["ClassificationDataModule", "ClassificationInfo", "Preprocessing", "TrainBatches", "gray_preprocessing"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassificationInfo(DataInfo):
    """What the model needs to know about classification data (class_counts: images per class,
    multi-label: positives per class)."""

    multilabel: bool = False
    # binary | multi-class | multi-label | ordinal-regression (None: from multilabel / class count)
    task: str | None = None

    def __post_init__(self) -> None:
        if self.task is None:
            default = "multi-label" if self.multilabel else ("binary" if len(self.class_names) == 2 else "multi-class")
            object.__setattr__(self, "task", default)
        if self.task not in TASK_TYPES:
            raise ValueError(f"DataInfo.task={self.task!r}; use one of {TASK_TYPES}")
        if (self.task == "multi-label") != self.multilabel:
            raise ValueError(f"DataInfo.task={self.task!r} disagrees with multilabel={self.multilabel}")


class TrainBatches(BatchSampler):
    """Training batches of ``sampler``, in its order; a last batch of exactly one sample is dropped.

    BatchNorm cannot normalise a batch of one in training mode (PyTorch raises "Expected more than 1
    value per channel when training"), so e.g. 14 images with batch size 13 train on one batch of 13
    per epoch; the sample left out changes with every epoch's order. A last batch of two or more
    samples is kept, and with ``batch_size=1`` nothing is dropped.
    """

    def __init__(self, sampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)

    def __iter__(self):
        for batch in super().__iter__():
            if len(batch) == 1 and self.batch_size > 1:  # only the last batch can be short
                return
            yield batch

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (rest > 1)


class ImageDataset(torch.utils.data.Dataset):
    """Samples decoded and transformed: (image tensor [C, H, W], target tensor)."""

    def __init__(self, samples: Samples, channels: int, transform: Callable[..., dict], seed: int = 0) -> None:
        self.samples, self.channels, self.transform, self.seed = samples, channels, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = seed_draw(self.transform, key, self.seed)
        image = self.transform(image=self.samples.image(i, self.channels))["image"]
        return image, torch.as_tensor(self.samples.targets[i])


class ClassificationDataModule(FinetuneDataModule):
    """Train/val/test loaders for an image classification dataset described by config groups."""

    def __init__(
        self,
        dataset: DictConfig | Mapping,
        augment: DictConfig | Mapping,
        batch_size: int,
        num_workers: int,
        seed: int,
        imbalance: str = "none",
    ) -> None:
        config = dataset_config(plain_dict(dataset))
        super().__init__(config.grayscale, batch_size, seed)
        self.config = config
        self.augment = self._effective_augment(Augment.from_mapping(plain_dict(augment)))
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        self.num_workers = num_workers
        source = load_source(self.config)
        if self.config.grayscale == "adapt" and source.image_channels == 3:
            if not source.channels_from_metadata:
                raise DatasetError(
                    "dataset.grayscale=adapt gives the model a 1-channel stem for grayscale images, but this "
                    "dataset has color images; use dataset.grayscale=replicate (the default) for RGB data"
                )
            log.info("dataset.grayscale=adapt concerns gray subsets; this one is RGB: 3-channel stem as pretrained")
        self.splits: dict[str, Samples] = source.splits
        self.skipped: int = source.skipped
        multilabel = getattr(self.config, "multilabel", False) or source.task == "multi-label"
        self.info = ClassificationInfo(
            class_names=source.class_names,
            image_channels=source.image_channels,
            class_counts=class_counts(source.splits["train"].targets, len(source.class_names)),
            multilabel=multilabel,
            task=source.task,
        )
        self.imbalance = resolve_imbalance(imbalance, self.info.class_counts, multilabel)
        if imbalance != "none":
            log.info(
                "imbalance=%s → %s (train class counts %s, largest/smallest %.1f)",
                imbalance,
                self.imbalance,
                self.info.class_counts,
                imbalance_ratio(self.info.class_counts),
            )
        self._generator = torch.Generator().manual_seed(seed)
        self._transforms: dict[str, A.Compose] = {}
        self.preprocessing: Preprocessing | None = None
        log.info(
            "dataset %s: %d classes, %d channel(s), images train/val/test = %s%s",
            self.config.kind,
            self.info.num_classes,
            self.info.image_channels,
            "/".join(str(n) for n in self.split_sizes.values()),
            f", {self.skipped} unreadable skipped" if self.skipped else "",
        )

    def _effective_augment(self, augment: Augment) -> Augment:
        if self.config.allow_flips or not (augment.hflip or augment.vflip):
            return augment
        log.info("dataset.allow_flips=false (a flip changes the label): augment.hflip/vflip set to 0")
        return dataclasses.replace(augment, hflip=0.0, vflip=0.0)

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Loss weights under imbalance=weighted_loss (CE class weights; multi-label: BCE pos_weight),
        else None. Pass to ClassificationTask(class_weights=...)."""
        if self.imbalance != "weighted_loss":
            return None
        return loss_weights(self.info.class_counts, self.info.multilabel, len(self.splits["train"]))

    def train_sampler(self, rank: int | None = None, world_size: int | None = None) -> torch.utils.data.Sampler[int]:
        """The training order of one rank (default: this trainer's): class-balanced under
        imbalance=sampler, else shuffled. Indices refer to the train split, so cached features
        (kept in train-split order) can use it too."""
        if self.imbalance != "sampler":
            return super().train_sampler(rank, world_size)
        own_rank, own_world = self.shard()
        rank, world = (own_rank if rank is None else rank), (own_world if world_size is None else world_size)
        return ClassBalancedSampler(self.splits["train"].targets, seed=self.seed, num_replicas=world, rank=rank)

    @property
    def train_transform_is_deterministic(self) -> bool:
        """True when training applies no random op (augment=none), so features can be cached."""
        return is_deterministic(self.augment)

    def set_preprocessing(self, pre: Preprocessing) -> None:
        """Adopt the model's size / mean / std / interpolation / in_chans and build the transforms."""
        if pre.in_chans != self.in_chans:
            raise ValueError(
                f"Preprocessing.in_chans={pre.in_chans} but dataset.grayscale={self.config.grayscale} "
                f"feeds {self.in_chans} channel(s); create the backbone with in_chans=dm.in_chans"
            )
        self.preprocessing = pre
        channels = self.info.image_channels
        self._transforms = {
            "train": train_transform(pre, channels, self.augment),
            "eval": eval_transform(pre, channels),
        }
        for transform in self._transforms.values():
            seed_transform(transform, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def eval_dataloader(self, split: str, shard: bool = False) -> DataLoader:
        """Any split in order through the eval transform (for feature extraction and reports)."""
        return self._loader(split, shuffle=False, transform="eval", shard=shard)

    def sample_images(self, split: str, n: int) -> list[tuple[np.ndarray, int | list[int]]]:
        """Up to n raw (untransformed HWC uint8) images of `split`, seeded, with their class index
        (multi-label: the list of positive class indices)."""
        samples = self._split(split)
        rng = np.random.default_rng(self.seed)
        index = np.sort(rng.choice(len(samples), size=min(n, len(samples)), replace=False))
        channels = self.info.image_channels
        return [(samples.image(i, channels), _plain_target(samples.targets[i])) for i in index]

    def _split(self, split: str) -> Samples:
        if split not in self.splits:
            raise ValueError(f"split {split!r}; use one of {list(self.splits)}")
        return self.splits[split]

    def _loader(self, split: str, shuffle: bool, transform: str | None = None, shard: bool = True) -> DataLoader:
        if not self._transforms:
            raise RuntimeError("call set_preprocessing(...) before asking for dataloaders")
        transform = self._transforms[transform or ("train" if split == "train" else "eval")]
        dataset = ImageDataset(self._split(split), self.info.image_channels, transform, self.seed)
        if split == "train" and shuffle:  # a last batch of one sample is dropped (TrainBatches)
            batching = {"batch_sampler": TrainBatches(SeededDraws(self.train_sampler()), self.batch_size)}
        else:
            sampler = split_sampler(len(dataset), shuffle, self.seed, *(self.shard() if shard else (0, 1)))
            batching = {"batch_size": self.batch_size, "sampler": sampler, "drop_last": False}
        return DeferredLoader(  # draws the first batch after Lightning has set the epoch
            dataset,
            **batching,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self._generator,
        )


def _plain_target(target: np.ndarray) -> int | list[int]:
    return [int(i) for i in np.flatnonzero(target)] if target.ndim else int(target)
