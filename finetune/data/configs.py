"""The ``dataset`` config group, one dataclass per kind: a kind carries only the keys it reads
(conf/dataset/<kind>.yaml says what each key means). No torch or numpy import."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from finetune.data import DATASETS
from finetune.data.options import dataclass_values
from finetune.run.errors import DatasetError


@dataclass(frozen=True)
class DatasetConfig:
    """Keys every classification dataset reads."""

    kind: str
    image_size: int | None = None  # the model's input side; None = the backbone's pretrained size
    grayscale: str = "replicate"  # gray images: replicate to RGB | adapt (1-channel stem)
    allow_flips: bool = True  # False where a mirrored image changes its label
    num_workers: int = 2
    # keys whose value is one of a few words: key -> the words (subclasses extend it)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"grayscale": ("replicate", "adapt")}

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> DatasetConfig:
        """Validate a ``dataset`` group of this kind; every problem raises DatasetError naming the key."""
        config = cls(**dataclass_values(cls, cfg, f"dataset (kind={cfg.get('kind')})", DatasetError))
        config.validate()
        return config

    def validate(self) -> None:
        """Check values (subclasses add their own keys)."""
        if self.num_workers < 0:
            raise DatasetError(f"dataset.num_workers={self.num_workers}: use 0 (load in the main process) or more")
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise DatasetError(f"dataset.{key}={getattr(self, key)!r}; use one of {list(allowed)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise DatasetError(
                f"dataset.image_size={self.image_size!r}; use a positive int, or null for the backbone's size"
            )


@dataclass(frozen=True)
class SplitDatasetConfig(DatasetConfig):
    """A dataset whose val/test splits may be carved from train (stratified, seeded)."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise DatasetError(
                f"dataset.val_fraction={self.val_fraction} must be in (0, 1) and "
                f"dataset.test_fraction={self.test_fraction} in [0, 1)"
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise DatasetError("dataset.val_fraction + dataset.test_fraction must be < 1")


@dataclass(frozen=True)
class DigitsConfig(SplitDatasetConfig):
    """``dataset=digits``: scikit-learn's 8x8 digits, in memory."""


@dataclass(frozen=True)
class FolderConfig(SplitDatasetConfig):
    """``dataset=imagefolder``: image files in one folder per class under ``root``."""

    root: str | None = None
    on_error: str = "raise"  # unreadable image: raise | skip
    allow_outside_root: bool = False  # follow folder links / accept CSV paths (.., absolute) outside root
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**DatasetConfig.CHOICES, "on_error": ("raise", "skip")}


@dataclass(frozen=True)
class CsvConfig(FolderConfig):
    """``dataset=csv``: a label file ``path,label[,split]``; paths relative to ``root`` or the CSV."""

    csv: str | None = None
    multilabel: bool = False  # "a;b" labels, multi-hot targets
    on_duplicate: str = "error"  # a path listed twice: error (names the lines) | first (keep the first row)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**FolderConfig.CHOICES, "on_duplicate": ("error", "first")}


@dataclass(frozen=True)
class DicomFolderConfig(FolderConfig):
    """``dataset=dicom_folder``: DICOM files in one folder per class."""

    window: tuple[float, float] | None = None  # [center, width] instead of the files' own VOI

    def validate(self) -> None:
        super().validate()
        if self.window is not None and (len(self.window) != 2 or not self.window[1] >= 1):
            raise DatasetError(
                f"dataset.window={list(self.window)}: give [center, width] with width >= 1, "
                "e.g. dataset.window=[40,400] (CT soft tissue) or null for the files' own window"
            )


@dataclass(frozen=True)
class MedmnistConfig(DatasetConfig):
    """``dataset=medmnist``: an official MedMNIST npz with its official splits."""

    name: str | None = None  # subset, e.g. pneumoniamnist (see finetune.data.medmnist.MEDMNIST)
    size: int = 28  # 28 | 64 | 128 | 224: which official file ({name}.npz or {name}_{size}.npz)
    file: str | None = None  # an explicit .npz (relative to root or absolute)
    download: bool = True  # fetch a missing file with the medmnist package (needs it and a network)
    root: str | None = None  # folder of the npz files; None = $MEDMNIST_ROOT, else ~/.medmnist


def dataset_config(cfg: Mapping) -> DatasetConfig:
    """The validated config of ``cfg["kind"]`` (``finetune.data.DATASETS``); an error for an unknown kind or key."""
    return DATASETS.get(cfg.get("kind")).config_class().from_mapping(cfg)
