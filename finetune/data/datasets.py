"""Dataset kinds of the classification task: ``kind -> (config class, loader)``.

A loader turns its config into a Source (class names, train/val/test samples, channels, task
type). Adding a kind: a config class in finetune.data.configs, a loader, and one line here (and
its name in finetune.data.CLASSIFICATION_DATASETS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from finetune.data.configs import CONFIGS, DatasetConfig, DigitsConfig
from finetune.data.folders import load_csv, load_dicom_folder, load_imagefolder
from finetune.data.sources import Samples, Source, assemble_splits


def load_digits_source(config: DigitsConfig) -> Source:
    """scikit-learn's 8x8 digits (values 0-16) as uint8 grayscale (x16, clipped to 255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    samples = Samples(images, digits.target.astype(np.int64))
    splits = assemble_splits({"train": samples}, config, multilabel=False)
    return Source([str(d) for d in range(10)], splits, image_channels=1)


def load_medmnist(config: DatasetConfig) -> Source:
    """A MedMNIST v2 2D subset from its official npz (finetune.data.medmnist)."""
    from finetune.data.medmnist import load_medmnist_source

    return load_medmnist_source(config)


@dataclass(frozen=True)
class DatasetKind:
    """One ``dataset.kind``: the config class that reads its group and the loader that scans it."""

    config: type[DatasetConfig]
    loader: Callable[..., Source]


KINDS: dict[str, DatasetKind] = {
    "digits": DatasetKind(CONFIGS["digits"], load_digits_source),
    "imagefolder": DatasetKind(CONFIGS["imagefolder"], load_imagefolder),
    "csv": DatasetKind(CONFIGS["csv"], load_csv),
    "medmnist": DatasetKind(CONFIGS["medmnist"], load_medmnist),
    "dicom_folder": DatasetKind(CONFIGS["dicom_folder"], load_dicom_folder),
}


def load_source(config: DatasetConfig) -> Source:
    """Scan and check the dataset ``config.kind`` describes."""
    return KINDS[config.kind].loader(config)
