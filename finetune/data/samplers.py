"""Samplers whose order depends only on (seed, epoch, rank), so a resumed run sees the same batches
and ``world_size`` ranks with batch B/world see exactly the global batches of one process with B."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch from ``seed + epoch``; rank r takes every world-th index from r.

    Lightning calls ``set_epoch``. Under DDP the permutation is cut to a multiple of the world size
    so every rank runs the same number of steps.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)[: len(self) * self.world_size]
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size


class ShardSampler(Sampler[int]):
    """Rank r evaluates indices r, r+world, …: each image exactly once across ranks (no padding)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def split_sampler(size: int, shuffle: bool, seed: int, rank: int, world_size: int) -> Sampler[int]:
    """Training order (shuffled per epoch) or evaluation order, sharded over ranks."""
    return EpochShuffleSampler(size, seed, rank, world_size) if shuffle else ShardSampler(size, rank, world_size)
