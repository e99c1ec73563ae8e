"""Loading a classification dataset kind into a Source (class names, train/val/test samples, channels,
task type); the kinds and their loaders are registered in ``finetune.data.DATASETS``."""

from __future__ import annotations

import numpy as np

from finetune.data import DATASETS
from finetune.data.configs import DatasetConfig, DigitsConfig
from finetune.data.sources import Samples, Source, assemble_splits


def load_digits_source(config: DigitsConfig) -> Source:
    """scikit-learn's 8x8 digits (values 0-16) as uint8 grayscale (x16, clipped to 255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    samples = Samples(images, digits.target.astype(np.int64))
    splits = assemble_splits({"train": samples}, config, multilabel=False)
    return Source([str(d) for d in range(10)], splits, image_channels=1)


def load_source(config: DatasetConfig) -> Source:
    """Scan and check the dataset ``config.kind`` describes."""
    return DATASETS.get(config.kind).load(config)
