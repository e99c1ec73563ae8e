"""Segmentation packs: ``finetune pack dataset=seg_folder|drive``.

Each sample keeps its image's and its mask's original encoded bytes (and DRIVE's field-of-view mask), with
their suffixes and its position in the split; the index (``finetune-pack.json``, version 3, ``task_group``
``segmentation``) holds the class names, the mask rules (``mask_mode``, ``palette``, ``ignore_index``), the
image channels and, per split, the image count, the pixels per class and the image sizes. Pairs are checked
as training checks them (sizes, mask values, decodable images) before anything is written.

A pack reads back by index (``load_pairs``): the same images and class-index masks as the original data
module's; ``task=segmentation dataset=streaming`` trains on one (``finetune.data.seg_stream``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.data import DATASETS
from finetune.data.images import check_images, read_image
from finetune.data.masks import Pair, SegDatasetConfig, check_pairs, read_mask
from finetune.data.streaming import (
    SPLITS,
    PackSplit,
    StreamSpec,
    check_out,
    chunk_bytes_of,
    image_sizes,
    join,
    opened,
    read_index,
    write_pack,
)
from finetune.run.errors import DatasetError

TASK = "segmentation"
VERSION = 3  # the index version of segmentation packs (classification packs: finetune.data.streaming)


class NamedBytes(io.BytesIO):
    """A packed file's bytes, read like the file (PIL opens it) and named like it in messages."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(data)
        self.label = label  # not ``name``: readers take a file object's ``name`` for a path to open

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class _PairSampler:
    """``litdata.optimize``'s function: the pack sample of a pair's position (picklable for its workers)."""

    pairs: list[Pair]

    def __call__(self, i: int) -> dict:
        pair = self.pairs[i]
        sample = {
            "index": int(i),
            "image": pair.image.read_bytes(),
            "suffix": pair.image.suffix.lower(),
            "mask": pair.mask.read_bytes(),
            "mask_suffix": pair.mask.suffix.lower(),
        }
        if pair.fov is not None:  # DRIVE: every pair of the split has one
            sample |= {"fov": pair.fov.read_bytes(), "fov_suffix": pair.fov.suffix.lower()}
        return sample


def pack_pairs(dataset: Mapping, out: str, chunk_bytes: str | None = None) -> dict:
    """Pack the segmentation dataset of the ``dataset`` group to ``out``; returns the index."""
    check_out(out)
    config = SegDatasetConfig.from_mapping(dataset)
    splits = DATASETS.get(config.kind).load(config)
    counts = {name: check_pairs(pairs, config, name) for name, pairs in splits.items()}
    every_image = list(dict.fromkeys(p.image for pairs in splits.values() for p in pairs))
    channels = 1 if all(c == 1 for c in check_images(every_image, "raise").values()) else 3
    index = {
        "version": VERSION,
        "kind": config.kind,
        "task_group": TASK,
        "class_names": config.names,
        "image_channels": channels,
        "mask": {"mode": config.mask_mode, "palette": config.palette, "ignore_index": config.ignore_index},
        "splits": {
            name: {
                "size": len(pairs),
                "class_pixels": counts[name].tolist(),
                "image_sizes": image_sizes([p.image for p in pairs]),
            }
            for name, pairs in splits.items()
        },
    }
    return write_pack(out, index, {name: _split(pairs) for name, pairs in splits.items()}, chunk_bytes)


def _split(pairs: list[Pair]) -> PackSplit:
    files = [f for p in pairs for f in (p.image, p.mask, p.fov) if f is not None]
    return PackSplit(_PairSampler(pairs), len(pairs), chunk_bytes_of(sum(f.stat().st_size for f in files)))


@dataclass(frozen=True)
class PackedName:
    """A packed pair's name where a file pair's paths are read (``pair.image.stem``)."""

    image: Path


@dataclass(frozen=True)
class PackedPairs:
    """A split of a segmentation pack, read by index."""

    stream: StreamSpec
    size: int
    config: SegDatasetConfig  # the mask rules the pack was written with

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> PackedName:
        """How pair ``i`` is named in reports and predictions (a pack keeps no file names): ``<split>-<i>``."""
        if not 0 <= i < self.size:
            raise IndexError(i)
        return PackedName(Path(f"{Path(self.stream.uri.rstrip('/')).name}-{i:05d}"))

    def __iter__(self) -> Iterator[PackedName]:
        return (self[i] for i in range(self.size))

    def pair(self, i: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` (HWC uint8 with ``channels`` channels) and its class-index mask, decoded as from files."""
        return self.decoded(opened(self.stream)[i], channels)

    def decoded(self, sample: dict, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """A packed sample's image (HWC uint8 with ``channels`` channels) and class-index mask."""
        name = f"{self.stream.uri}#{sample['index']}"
        fov = NamedBytes(sample["fov"], f"{name} fov{sample['fov_suffix']}") if "fov" in sample else None
        image = f"{name}{sample['suffix']}"
        pair = Pair(Path(image), NamedBytes(sample["mask"], f"{name} mask{sample['mask_suffix']}"), fov)
        return read_image(image, channels, data=sample["image"]), read_mask(pair, self.config)


def load_pairs(uri: str, cache_dir: str | None = None, max_cache_size: str = "10GB") -> tuple[dict, dict]:
    """(index, {split: PackedPairs}) of the segmentation pack at ``uri``."""
    index = read_index(uri)
    if index.get("task_group") != TASK:
        raise DatasetError(
            f"dataset.uri={uri} is a classification pack (of dataset={index.get('kind')}); task=segmentation trains "
            "segmentation packs: train it with task=classification, or pack a segmentation dataset "
            "(finetune pack dataset=seg_folder|drive ...)"
        )
    mask = index["mask"]
    config = SegDatasetConfig(
        index["kind"],
        class_names=tuple(index["class_names"]),
        mask_mode=mask["mode"],
        palette=mask["palette"],
        ignore_index=mask["ignore_index"],
    )
    splits = {
        name: PackedPairs(StreamSpec(join(uri, name), cache_dir, max_cache_size), index["splits"][name]["size"], config)
        for name in SPLITS
    }
    return index, splits
