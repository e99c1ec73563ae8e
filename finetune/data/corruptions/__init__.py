"""Corrupted copies of decoded images for ``finetune evaluate``: named sets of corruptions, each with
five severities, applied to HWC uint8 images at the dataset's stored resolution (before the reference
preprocessing, which stays unchanged).

A set is an entry of ``CORRUPTION_SETS`` naming a builder (``"module:function"``, imported on first
use) that takes the run's dataset name and returns a ``CorruptionSet``. Every draw is seeded from
(seed, corruption, severity, image index), so an image is corrupted the same way in any order or
subset, and the global ``random`` / ``numpy.random`` states are restored afterwards.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from finetune.run.registry import Entry, Registry, resolve

SEVERITIES = (1, 2, 3, 4, 5)
# (image HWC uint8, severity 1..5) -> corrupted HWC uint8 of the same shape; random draws from the
# global ``random`` and ``numpy.random`` states and ``rng``, all seeded by the caller
Corrupt = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


class NotApplicable(ValueError):
    """A corruption that cannot be drawn on an image this small (e.g. a stain placed 10 px from the border
    of a 224 px image, on a 28 px one): ``finetune evaluate`` lists it under ``skipped``."""


@dataclass(frozen=True)
class CorruptionSet:
    """The corruptions of one set, by name, and what the set's paper summarises (None: the mean only);
    ``notes``: how the set was adapted to this run (shown with the results)."""

    name: str
    corruptions: Mapping[str, Corrupt]
    summary: Callable[..., dict] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CorruptionSetEntry(Entry):
    builder: str  # "module:function" taking the dataset name (or None) and returning a CorruptionSet


CORRUPTION_SETS: Registry[CorruptionSetEntry] = Registry(
    "corruptions",
    [
        CorruptionSetEntry(
            "medmnistc",
            "MedMNIST-C (Di Salvo et al. 2024): the medmnistc package's corruptions of each MedMNIST dataset",
            "finetune.data.corruptions.medmnistc:corruption_set",
        ),
        CorruptionSetEntry(
            "imagenet-c",
            "ImageNet-C-style corruptions (Hendrycks & Dietterich 2019) built from albumentations",
            "finetune.data.corruptions.imagenet_c:corruption_set",
        ),
    ],
)


def corruption_set(name: str, dataset: str | None) -> CorruptionSet:
    """The set called ``name`` for the run's ``dataset`` (ConfigError naming the choices otherwise)."""
    return resolve(CORRUPTION_SETS.get(name).builder)(dataset)


def seed_of(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of one image's corruption (independent of order and of the other images)."""
    key = [seed, zlib.crc32(corruption.encode()), severity, index]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


@contextmanager
def restored_global_random() -> Iterator[None]:
    """Run a block that seeds ``random`` and ``numpy.random``; their states are put back afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def corrupt(corruptions: CorruptionSet, name: str, image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """``image`` (HWC uint8) with corruption ``name`` at ``severity`` (1..5), seeded by ``seed``; the global
    random states are seeded here (call inside ``restored_global_random``)."""
    random.seed(seed)
    np.random.seed(seed)
    out = corruptions.corruptions[name](image, severity, np.random.default_rng(seed))
    if out.dtype != np.uint8 or out.shape != image.shape:
        raise ValueError(f"{corruptions.name}/{name}: returned {out.dtype} {out.shape} for {image.shape} uint8")
    return out
