"""What a dataset loader returns: samples per split, class names, channels; and how missing
val/test splits are carved from train."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from finetune.data.images import read_image
from finetune.run.errors import DatasetError

# What the targets mean: binary / multi-class (one class per image, softmax + cross-entropy),
# multi-label (any number, sigmoid + BCE), ordinal-regression (graded classes, e.g. RetinaMNIST:
# trained and scored as multi-class, as in the MedMNIST benchmark).
TASK_TYPES = ("binary", "multi-class", "multi-label", "ordinal-regression")


@dataclass(frozen=True)
class Samples:
    """One split: image files (or an in-memory uint8 array [N, H, W, C]) and their targets."""

    images: Sequence[Path] | np.ndarray
    targets: np.ndarray  # int64 [N], or float32 multi-hot [N, num_classes]
    window: tuple[float, float] | None = None  # DICOM files: [center, width] overriding their VOI

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> Samples:
        """The samples at `index`, in that order."""
        if isinstance(self.images, np.ndarray):
            return Samples(self.images[index], self.targets[index], self.window)
        return Samples([self.images[i] for i in index], self.targets[index], self.window)

    def image(self, i: int, channels: int) -> np.ndarray:
        """Image `i` as HWC uint8 with `channels` channels."""
        if isinstance(self.images, np.ndarray):
            return self.images[i]
        return read_image(self.images[i], channels, self.window)


@dataclass(frozen=True)
class Source:
    """What a loader found: class names, the three splits, channels, files skipped as unreadable,
    the task type (None: binary / multi-class from the class count, or multi-label) and whether the
    channels come from the dataset's metadata (then dataset.grayscale only concerns gray datasets)."""

    class_names: list[str]
    splits: dict[str, Samples]
    image_channels: int
    skipped: int = 0
    task: str | None = None
    channels_from_metadata: bool = False


class SplitConfig(Protocol):
    """The keys that carve val/test out of train."""

    val_fraction: float
    test_fraction: float
    split_seed: int


def stratified_split(
    groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): round(N * fraction) for val and test, each group (class) in proportion.

    Shuffles within each group (seeded), keeps one member of every group for train, and picks
    val then test at evenly spaced positions of the group-ordered rest, so small classes split as
    evenly as large ones and no class vanishes from train.
    """
    rng = np.random.default_rng(seed)
    keep, pool = [], []
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        keep.append(members[:1])
        pool.append(members[1:])
    rest = np.concatenate(pool)
    val_mask = _evenly_spaced(len(rest), round(len(groups) * val_fraction))
    val, rest = rest[val_mask], rest[~val_mask]
    test_mask = _evenly_spaced(len(rest), round(len(groups) * test_fraction))
    train = np.concatenate([*keep, rest[~test_mask]])
    return np.sort(train), np.sort(val), np.sort(rest[test_mask])


def _evenly_spaced(n: int, k: int) -> np.ndarray:
    """Mask choosing min(k, n) of n positions, evenly spread."""
    k = min(k, n)
    mask = np.zeros(n, dtype=bool)
    mask[((np.arange(k) + 0.5) * n / max(k, 1)).astype(int)] = True
    return mask


def assemble_splits(parts: dict[str, Samples], config: SplitConfig, multilabel: bool) -> dict[str, Samples]:
    """Fill in missing val/test splits: carved from train (stratified), or test = val (warned)."""
    train, val, test = parts["train"], parts.get("val"), parts.get("test")
    if val is None:
        test_fraction = config.test_fraction if test is None else 0.0
        groups = np.zeros(len(train)) if multilabel else train.targets
        train_idx, val_idx, test_idx = stratified_split(groups, config.val_fraction, test_fraction, config.split_seed)
        if test is None and test_fraction > 0:
            test = train.subset(test_idx)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if test is None:  # said where the test runs (training), not by every command that loads the data
        test = val
    splits = {"train": train, "val": val, "test": test}
    empty = [name for name, samples in splits.items() if len(samples) == 0]
    if empty:
        raise DatasetError(
            f"the {'/'.join(empty)} split has no images ({len(train)} training images); add images, or "
            "raise dataset.val_fraction / dataset.test_fraction where splits are carved from train"
        )
    return splits


def class_counts(targets: np.ndarray, num_classes: int) -> list[int]:
    """Images per class (multi-label: positives per class)."""
    if targets.ndim == 2:
        return [int(c) for c in targets.sum(axis=0)]
    return [int(c) for c in np.bincount(targets, minlength=num_classes)]
