"""Data: dataset kinds, image checks, transforms and the Lightning data modules.

This file holds the registry the config checks read (no torch import): every ``dataset.kind`` with the
task it feeds, its config class and its loader, each named in a submodule and imported on first use.
Adding a kind: a config class, a loader, a ``conf/dataset/<kind>.yaml`` and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.run.registry import Entry, Registry, resolve

IMBALANCE_CHOICES = ("none", "weighted_loss", "sampler", "auto")  # finetune.data.imbalance


@dataclass(frozen=True)
class DatasetKind(Entry):
    """One ``dataset.kind``: the task it feeds, the config class that reads its group and its loader (the
    task's data module calls it: a classification ``Source``, or segmentation image/mask pairs per split)."""

    task: str
    config: str  # "module:class" of the frozen config dataclass (``from_mapping(cfg)`` validates the group)
    loader: str  # "module:function": (config) -> what the task's data module reads
    data_module: str = ""  # "module:class" of a data module of its own ("": the task's usual one)
    packable: bool = False  # whether `finetune pack` writes it as a pack (finetune.data.streaming)
    packer: str = ""  # "module:function" (dataset group, out) -> index of a pack that is not a classification Source
    # Other tasks it feeds, each with the "module:class" of its data module for that task
    other_tasks: tuple[tuple[str, str], ...] = ()

    def config_class(self) -> type:
        return resolve(self.config)

    def tasks(self) -> tuple[str, ...]:
        """The tasks it feeds."""
        return (self.task, *(name for name, _ in self.other_tasks))

    def module_for(self, task: str) -> str:
        """The "module:class" of its data module under ``task`` ("": the task's usual one)."""
        return self.data_module if task == self.task else dict(self.other_tasks).get(task, "")

    def load(self, config: Any) -> Any:
        """Scan and check the data ``config`` (an instance of ``config_class()``) describes."""
        return resolve(self.loader)(config)


DATASETS: Registry[DatasetKind] = Registry(
    "dataset.kind",
    [
        DatasetKind(
            "digits",
            "scikit-learn's 8x8 handwritten digits, in memory",
            "classification",
            "finetune.data.configs:DigitsConfig",
            "finetune.data.datasets:load_digits_source",
            packable=True,
        ),
        DatasetKind(
            "imagefolder",
            "image files in one folder per class",
            "classification",
            "finetune.data.configs:FolderConfig",
            "finetune.data.folders:load_imagefolder",
            packable=True,
        ),
        DatasetKind(
            "csv",
            "a label file path,label[,split] (multi-label: a;b)",
            "classification",
            "finetune.data.configs:CsvConfig",
            "finetune.data.folders:load_csv",
            packable=True,
        ),
        DatasetKind(
            "medmnist",
            "a MedMNIST v2 2D subset from its official npz",
            "classification",
            "finetune.data.configs:MedmnistConfig",
            "finetune.data.medmnist:load_medmnist_source",
            packable=True,
        ),
        DatasetKind(
            "dicom_folder",
            "DICOM files in one folder per class",
            "classification",
            "finetune.data.configs:DicomFolderConfig",
            "finetune.data.folders:load_dicom_folder",
            packable=True,
        ),
        DatasetKind(
            "seg_folder",
            "images and masks with matching names (or split list files)",
            "segmentation",
            "finetune.data.masks:SegDatasetConfig",
            "finetune.data.masks:seg_folder_pairs",
            packable=True,
            packer="finetune.data.seg_pack:pack_pairs",
        ),
        DatasetKind(
            "drive",
            "the DRIVE retinal vessel layout, field of view ignored outside",
            "segmentation",
            "finetune.data.masks:SegDatasetConfig",
            "finetune.data.masks:drive_pairs",
            packable=True,
            packer="finetune.data.seg_pack:pack_pairs",
        ),
        DatasetKind(
            "streaming",
            "a pack written by `finetune pack`, streamed from a folder or s3:// (LitData)",
            "classification",
            "finetune.data.streaming:StreamingConfig",
            "finetune.data.streaming:load_streaming_source",
            "finetune.data.streaming_loader:StreamingDataModule",
            other_tasks=(("segmentation", "finetune.data.seg_stream:StreamingSegmentationDataModule"),),
        ),
    ],
)


def packable_kinds() -> tuple[str, ...]:
    """The ``dataset.kind`` choices ``finetune pack`` takes, in registration order."""
    return tuple(name for name, kind in DATASETS.items() if kind.packable)


def dataset_kinds(task: str) -> tuple[str, ...]:
    """The ``dataset.kind`` choices of the task called ``task``, in registration order."""
    return tuple(name for name, kind in DATASETS.items() if task in kind.tasks())
