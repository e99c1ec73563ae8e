"""Data: dataset sources, transforms and the Lightning data module."""

from finetune.data.datamodule import ClassificationDataModule, DataInfo
from finetune.data.datasets import DatasetError
from finetune.data.transforms import AugmentError, Preprocessing, gray_preprocessing

__all__ = [
    "AugmentError",
    "ClassificationDataModule",
    "DataInfo",
    "DatasetError",
    "Preprocessing",
    "gray_preprocessing",
]
