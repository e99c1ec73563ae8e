"""Segmentation data served to the model: random training crops with joint image/mask
augmentation (albumentations moves the mask with every geometric op; photometric ops touch the
image only) and full-size images for evaluation. Pairs and masks: finetune.data.masks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import albumentations as A
import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from finetune.data import DATASETS
from finetune.data.base import DataInfo, DeferredLoader, FinetuneDataModule
from finetune.data.images import check_images, read_image
from finetune.data.masks import Pair, SegDatasetConfig, check_pairs, read_mask
from finetune.data.options import plain_dict
from finetune.data.samplers import SeededDraws, split_sampler
from finetune.data.transforms import Augment, Preprocessing, augment_ops, normalized_tensor, seed_draw, seed_transform
from finetune.run.errors import DatasetError

log = logging.getLogger(__name__)


class PairReader(Protocol):
    """A split's pairs by position: (image HWC uint8, class-index mask)."""

    def __len__(self) -> int: ...

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class FilePairs:
    """Pairs read from their files (a PairReader)."""

    pairs: list[Pair]
    config: SegDatasetConfig
    channels: int

    def __len__(self) -> int:
        return len(self.pairs)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        return read_image(pair.image, self.channels), read_mask(pair, self.config)


def crop(transform: A.Compose, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``transform`` applied to an image and its mask together: (image [C, H, W] float, mask [H, W] int64)."""
    out = transform(image=image, mask=mask)
    return out["image"], torch.as_tensor(out["mask"]).long()


class SegDataset(Dataset):
    """(image [C, H, W] float, mask [H, W] int64) pairs through an albumentations transform;
    ``repeats`` serves every pair that many times per epoch (one random crop each)."""

    def __init__(self, pairs: PairReader, transform: A.Compose, repeats: int = 1, seed: int = 0) -> None:
        self.pairs, self.transform, self.repeats, self.seed = pairs, transform, repeats, seed

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return crop(self.transform, *self.pairs(seed_draw(self.transform, key, self.seed) % len(self.pairs)))


@dataclass(frozen=True)
class SegmentationInfo(DataInfo):
    """What the model needs to know about segmentation data (class_counts: train pixels per class,
    inside the field of view)."""

    ignore_index: int = 255

    @property
    def binary(self) -> bool:
        return self.num_classes == 2


def _image_channels(images: list[Path]) -> int:
    """1 when every image is grayscale, else 3; every image passes the check training runs
    (finetune.data.images: fully decoded, cut JPEGs caught), else one error listing the files."""
    return 1 if all(c == 1 for c in check_images(images, "raise").values()) else 3


class SegmentationDataModule(FinetuneDataModule):
    """Train crops and full-size val/test images of a segmentation dataset, checked at construction."""

    def __init__(
        self,
        dataset: DictConfig | Mapping,
        augment: DictConfig | Mapping,
        batch_size: int,
        seed: int,
        class_weights: bool = False,
    ) -> None:
        config, splits, info = self._scan(plain_dict(dataset))
        super().__init__(config.grayscale, batch_size, seed)
        self.config, self.splits, self.info = config, splits, info
        self.augment = Augment.from_mapping(plain_dict(augment))
        if self.augment.crop_scale is not None:
            log.info(
                "augment.crop_scale is not used for segmentation: training takes random %d px crops "
                "at native scale (augment.zoom changes the scale)",
                self.config.crop_size,
            )
        self.weighted = class_weights
        if self.config.grayscale == "adapt" and self.info.image_channels == 3:
            raise DatasetError("dataset.grayscale=adapt needs grayscale images; these are RGB: use replicate")
        self._transforms: dict[str, A.Compose] = {}
        log.info(
            "dataset %s: %d classes, images train/val/test = %s",
            self.config.kind,
            self.info.num_classes,
            "/".join(str(len(p)) for p in self.splits.values()),
        )

    def _scan(self, dataset: dict) -> tuple[SegDatasetConfig, dict, SegmentationInfo]:
        """The ``dataset`` group's config, its splits and what the model needs to know, every pair checked."""
        config = SegDatasetConfig.from_mapping(dataset)
        splits = DATASETS.get(config.kind).load(config)
        counts = {name: check_pairs(pairs, config, name) for name, pairs in splits.items()}
        every_image = list(dict.fromkeys(p.image for pairs in splits.values() for p in pairs))
        info = SegmentationInfo(
            config.names, _image_channels(every_image), counts["train"].tolist(), config.ignore_index
        )
        return config, splits, info

    def reader(self, split: str, channels: int) -> PairReader:
        """The pairs of ``split``, read with ``channels`` image channels."""
        return FilePairs(self.splits[split], self.config, channels)

    @property
    def class_weights(self) -> torch.Tensor | None:
        """Loss weights from train pixel frequencies (median frequency / class frequency) when the
        data module was asked for them (segmentation.class_weights=true), else None."""
        if not self.weighted:
            return None
        freq = np.asarray(self.info.class_counts, np.float64)
        freq = freq / max(freq.sum(), 1)
        weights = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
        return torch.as_tensor(weights, dtype=torch.float32)

    def set_preprocessing(self, pre: Preprocessing) -> None:
        """Adopt the model's mean / std / in_chans; build the train (crop + augment) and eval transforms."""
        crop, scale = self.config.crop_size, self.config.scale
        channels = self.info.image_channels
        resize = [A.RandomScale((scale - 1, scale - 1), p=1.0)] if scale != 1 else []  # masks: nearest
        # Pad with the mean colour (0 after Normalize, as evaluation pads); padded pixels are ignored.
        mean = [255 * m for m in pre.mean] if channels == len(pre.mean) else [255 * float(np.mean(pre.mean))]
        first = [
            *resize,
            A.PadIfNeeded(
                crop, crop, border_mode=cv2.BORDER_CONSTANT, fill=tuple(mean), fill_mask=self.config.ignore_index
            ),
            A.RandomCrop(crop, crop),
        ]
        self.preprocessing = pre
        self._transforms = {
            "train": normalized_tensor([*first, *augment_ops(self.augment)], pre, channels),
            "eval": normalized_tensor([], pre, channels),
        }
        for transform in self._transforms.values():
            seed_transform(transform, self.seed)

    @property
    def train_length(self) -> int:
        """Random crops per epoch: samples_per_image of every training image."""
        return len(self.splits["train"]) * self.config.samples_per_image

    def train_dataloader(self) -> DataLoader:
        # drop_last: a last batch of one image breaks BatchNorm in decoders (DeepLabV3+ pooling)
        return self._loader(
            "train",
            "train",
            self.batch_size,
            SeededDraws(self.train_sampler()),
            self.config.samples_per_image,
            drop_last=True,
        )

    def eval_dataloader(self, split: str, shard: bool = False) -> DataLoader:
        """Full-size images of ``split`` in order, one per batch (sizes may differ)."""
        rank, world = self.shard() if shard else (0, 1)
        return self._loader(split, "eval", 1, split_sampler(len(self.splits[split]), False, self.seed, rank, world))

    def raw_pair(self, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` of ``split`` (HWC uint8, as read) and its class-index mask."""
        return self.reader(split, 3)(i)

    def _loader(
        self, split: str, transform: str, batch_size: int, sampler, repeats: int = 1, drop_last: bool = False
    ) -> DataLoader:
        if not self._transforms:
            raise RuntimeError("call set_preprocessing(...) before asking for dataloaders")
        workers = self.config.num_workers
        dataset = SegDataset(
            self.reader(split, self.info.image_channels), self._transforms[transform], repeats, self.seed
        )
        if drop_last and len(sampler) < batch_size:
            raise DatasetError(
                f"{len(sampler)} training crops per epoch (per device) is less than one batch of "
                f"{batch_size}: raise dataset.samples_per_image or lower schedule.batch_size"
            )
        return DeferredLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
        )
