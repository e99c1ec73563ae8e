"""Data: dataset kinds, image checks, transforms and the Lightning data modules.

This file holds only the names the config checks need (no torch import); the loaders in the
submodules are keyed by the same names.
"""

CLASSIFICATION_DATASETS = ("digits", "imagefolder", "csv", "medmnist", "dicom_folder")  # finetune.data.datasets
SEGMENTATION_DATASETS = ("seg_folder", "drive")  # finetune.data.segmentation
IMBALANCE_CHOICES = ("none", "weighted_loss", "sampler", "auto")  # finetune.data.imbalance
