"""Samplers whose order depends only on (seed, epoch, rank), so a resumed run sees the same batches
and ``world_size`` ranks with batch B/world see exactly the global batches of one process with B."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
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


class SeededDraws(Sampler[tuple[int, int]]):
    """A training sampler's indices as ``(index, epoch)`` draws: the dataset seeds each sample's
    random augmentation from them, so crops and flips depend on (seed, epoch, index) alone and a
    resumed run trains on exactly the batches an uninterrupted one would."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((index, self.epoch) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def trainer_shard(trainer) -> tuple[int, int]:
    """(rank, world size) of this process under a Lightning trainer; (0, 1) without one. Our data
    modules shard themselves (Lightning's own sampler replacement is off)."""
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def split_sampler(size: int, shuffle: bool, seed: int, rank: int, world_size: int) -> Sampler[int]:
    """Training order (shuffled per epoch) or evaluation order, sharded over ranks."""
    return EpochShuffleSampler(size, seed, rank, world_size) if shuffle else ShardSampler(size, rank, world_size)


class ClassBalancedSampler(Sampler[int]):
    """Class-balanced epochs, sharded across ranks: each rank draws only from its own disjoint part
    of every class, with the same target class ratios (uniform by default).

    Per epoch (``set_epoch``), every class's images are shuffled with ``seed + epoch`` (the same on
    every rank) and dealt out round-robin: rank r owns members r, r + R, ... (a class with fewer
    images than ranks is shared by all ranks rather than missing on some). Each rank then yields
    ``num_samples`` indices (ceil(N / R) by default, so ranks stay in step): per class a count
    allocated from the target ratios by largest remainder, taken from its shard by walking fresh
    permutations (no image repeats before its whole shard has been seen; rare classes are
    oversampled, frequent ones undersampled), in shuffled order.

    Rank and world size come from the caller (the data module reads them from its trainer, as for
    EpochShuffleSampler; Lightning's sampler replacement is off), never from a process group, so it
    can be built and tested without one.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        ratios: Sequence[float] | None = None,
        num_samples: int | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("ClassBalancedSampler needs one class index per sample (single-label targets)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.classes = np.unique(labels)
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        if ratios is None:
            ratios = np.ones(len(self.classes))
        ratios = np.asarray(ratios, dtype=np.float64)
        if ratios.shape != (len(self.classes),) or (ratios < 0).any() or ratios.sum() <= 0:
            raise ValueError(
                f"ratios={ratios.tolist()} needs one non-negative weight per class present "
                f"({len(self.classes)}), not all zero"
            )
        self.ratios = ratios / ratios.sum()
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = num_samples if num_samples is not None else math.ceil(len(labels) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> list[np.ndarray]:
        """This rank's images of each class for the current epoch (disjoint from the other ranks')."""
        rng = np.random.default_rng([self.seed, self.epoch])
        shards = []
        for members in self.members:
            members = rng.permutation(members)
            shards.append(members[self.rank :: self.num_replicas] if len(members) >= self.num_replicas else members)
        return shards

    def class_counts(self) -> np.ndarray:
        """Draws per class in one epoch of this rank (largest-remainder split of num_samples)."""
        exact = self.ratios * self.num_samples
        counts = np.floor(exact).astype(np.int64)
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[: self.num_samples - counts.sum()]] += 1
        return counts

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank + 1])
        picks = []
        for shard, count in zip(self.shard(), self.class_counts()):
            rounds = math.ceil(count / len(shard)) if count else 0
            walk = np.concatenate([rng.permutation(shard) for _ in range(rounds)]) if rounds else shard[:0]
            picks.append(walk[:count])
        return iter(rng.permutation(np.concatenate(picks)).tolist())

    def __len__(self) -> int:
        return self.num_samples
