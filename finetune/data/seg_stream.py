"""``task=segmentation dataset=streaming``: a segmentation pack (``finetune.data.seg_pack``) trained on random crops
streamed through LitData, evaluated on whole images read by index.

Training streams the train split as classification packs do (``finetune.data.streaming_loader``: per rank and
worker shards, LitData's per-epoch shuffle from ``seed``, the trainer's epoch); each pair is decoded from its
packed bytes (image, mask, DRIVE's field of view) and cut into ``samples_per_image`` random crops by the folder
route's transforms (``SegmentationDataModule.set_preprocessing``), seeded from (seed, epoch, pair). Validation
and test read their split by index, in order, through the same sliding windows: the folder's tensors. Classes,
mask rules and channels are the pack's index.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data.configs import dataset_config
from finetune.data.masks import SegDatasetConfig
from finetune.data.seg_pack import PackedPairs, load_pairs
from finetune.data.segmentation import PairReader, SegmentationDataModule, SegmentationInfo, crop
from finetune.data.streaming_loader import AugmentedStream, EpochAwareLoader
from finetune.run.errors import DatasetError


@dataclass(frozen=True)
class PackedReader:
    """A packed split's pairs by position (a PairReader)."""

    pairs: PackedPairs
    channels: int

    def __len__(self) -> int:
        return len(self.pairs)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pairs.pair(i, self.channels)


class CropStream(AugmentedStream):
    """A packed training split streamed in LitData's order; each pair gives ``repeats`` random crops in a row,
    drawn by the (seeded) training transform. Lengths count crops."""

    def __init__(self, pairs: PackedPairs, channels: int, transform, seed: int, repeats: int) -> None:
        super().__init__(pairs.stream, channels, transform, seed)
        self.pairs, self.repeats, self._crops = pairs, repeats, []

    def __iter__(self):
        self._crops = []
        return super().__iter__()

    def __next__(self) -> Any:
        if not self._crops:
            self._crops = super().__next__()  # the crops of the next pair (StopIteration at the epoch's end)
        return self._crops.pop(0)

    def get_len(self, num_workers: int, batch_size: int) -> int:
        return super().get_len(num_workers, batch_size) * self.repeats

    def transformed(self, sample: dict) -> list:
        image, mask = self.pairs.decoded(sample, self.channels)
        return [crop(self.augment, image, mask) for _ in range(self.repeats)]


class StreamingSegmentationDataModule(SegmentationDataModule):
    """SegmentationDataModule over a segmentation pack: the index gives classes, mask rules, channels and pixel
    counts; training streams random crops, validation and test read whole images by index."""

    def _scan(self, dataset: dict) -> tuple[SegDatasetConfig, dict, SegmentationInfo]:
        stream = dataset_config(dataset)
        if not stream.uri:
            raise DatasetError("dataset.uri is required: dataset.uri=<folder or s3://bucket/prefix> of a pack")
        index, splits = load_pairs(stream.uri, stream.cache_dir, stream.max_cache_size)
        config = dataclasses.replace(
            splits["train"].config,
            **{key: getattr(stream, key) for key in ("crop_size", "tile_overlap", "scale", "samples_per_image")},
            grayscale=stream.grayscale,
            num_workers=stream.num_workers,
        )
        config._validate()
        counts = index["splits"]["train"]["class_pixels"]
        return config, splits, SegmentationInfo(config.names, index["image_channels"], counts, config.ignore_index)

    def reader(self, split: str, channels: int) -> PairReader:
        return PackedReader(self.splits[split], channels)

    def train_dataloader(self) -> EpochAwareLoader:
        if not self._transforms:
            raise RuntimeError("call set_preprocessing(...) before asking for dataloaders")
        repeats, workers = self.config.samples_per_image, self.config.num_workers
        stream = CropStream(
            self.splits["train"], self.info.image_channels, self._transforms["train"], self.seed, repeats
        )
        loader = EpochAwareLoader.for_training(self, stream, workers)
        if len(loader) == 0:
            raise DatasetError(
                f"{stream.get_len(max(workers, 1), self.batch_size)} training crops per epoch per device and loader "
                f"worker is less than one batch of {self.batch_size}: raise dataset.samples_per_image, lower "
                "schedule.batch_size or lower dataset.num_workers"
            )
        return loader
