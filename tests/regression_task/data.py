"""The regression task's data: images under ``dataset.root`` listed with their value in ``values.csv``,
split train / val / test by a seeded permutation; every split goes through the evaluation transform
(no augmentation) and yields (image, standardised value)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from finetune.data.base import DataInfo, FinetuneDataModule
from finetune.data.datamodule import TrainBatches
from finetune.data.images import read_image
from finetune.data.samplers import split_sampler
from finetune.data.transforms import Preprocessing, eval_transform
from finetune.run.errors import DatasetError


class ValueSplit(Dataset):
    """Image files with one value each; ``transform`` set once the model has said how to preprocess."""

    def __init__(self, paths: list[Path], values: np.ndarray, mean: float, std: float) -> None:
        self.paths, self.values, self.mean, self.std = paths, values, mean, std
        self.transform = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(image=read_image(self.paths[i], 3))["image"]
        return image, torch.tensor((self.values[i] - self.mean) / self.std, dtype=torch.float32)


class ValuesDataModule(FinetuneDataModule):
    """``dataset=values_csv``: the splits, their loaders and the training split's target statistics."""

    def __init__(self, config: DictConfig, batch_size: int, seed: int) -> None:
        super().__init__(config.grayscale, batch_size, seed)
        root = Path(config.root)
        listing = root / "values.csv"
        if not listing.is_file():
            raise DatasetError(f"dataset.root={root}: values.csv is missing (columns file, value)")
        with open(listing, newline="") as f:
            rows = list(csv.DictReader(f))
        paths = [root / row["file"] for row in rows]
        values = np.array([float(row["value"]) for row in rows], dtype=np.float64)
        order = np.random.default_rng(config.split_seed).permutation(len(rows))
        n_val, n_test = round(config.val_fraction * len(rows)), round(config.test_fraction * len(rows))
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        train = values[parts["train"]]
        self.target_mean, self.target_std = float(train.mean()), float(train.std() or 1.0)
        self.target_range = [float(values.min()), float(values.max())]
        self.splits = {
            name: ValueSplit([paths[i] for i in index], values[index], self.target_mean, self.target_std)
            for name, index in (("train", parts["train"]), ("val", parts["val"]), ("test", parts["test"]))
        }
        self.info = DataInfo([config.target], 3, [len(parts["train"])])
        self.num_workers = config.num_workers

    @property
    def train_transform_is_deterministic(self) -> bool:
        return True  # no augmentation: a head-only phase may train on cached features

    def set_preprocessing(self, pre: Preprocessing) -> None:
        self.preprocessing = pre
        for split in self.splits.values():
            split.transform = eval_transform(pre, self.info.image_channels)

    def raw_image(self, split: str, i: int) -> np.ndarray:
        """Image ``i`` of ``split`` as read (HWC uint8)."""
        return read_image(self.splits[split].paths[i], 3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.splits["train"],
            batch_sampler=TrainBatches(self.train_sampler(), self.batch_size),
            num_workers=self.num_workers,
        )

    def eval_dataloader(self, split: str, shard: bool = False) -> DataLoader:
        rank, world = self.shard() if shard else (0, 1)
        sampler = split_sampler(len(self.splits[split]), False, self.seed, rank, world)
        return DataLoader(self.splits[split], self.batch_size, sampler=sampler, num_workers=self.num_workers)
