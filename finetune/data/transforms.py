"""Albumentations pipelines: the model's preprocessing plus the `augment` config group.

Train: RandomResizedCrop (with `augment.crop_scale`) or a direct resize to `size`, then the random
ops the `augment` keys switch on. Eval: a direct resize to `size` (no crop_pct / center crop, so an
export only has to repeat "resize to H x W, normalize"). Both end with gray -> RGB replication when
the model takes 3 channels, the normalization and ToTensorV2. Resizing and normalizing are the
functions of ``finetune.data.reference`` (Pillow's antialiased ``Image.resize``; the file every
export ships as ``preprocess.py``), so evaluation, predict and a deployment compute the same input.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from finetune.data import reference
from finetune.data.options import dataclass_values
from finetune.run.errors import FinetuneError

INTERPOLATIONS = tuple(reference.FILTERS)  # Pillow filters; each antialiases when downscaling


class AugmentError(FinetuneError, ValueError):
    """An `augment` config the transform builder cannot honour; the message names the key."""


# Test-time augmentation: the axes of an NCHW batch each flip mirrors (numpy and torch alike)
FLIP_AXES: dict[str, tuple[int, ...]] = {"hflip": (-1,), "vflip": (-2,), "hvflip": (-2, -1)}


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: input size (H, W), normalization, resampling and channels."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    in_chans: int

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ValueError(f"Preprocessing.in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(
                f"Preprocessing mean {self.mean} / std {self.std} need {self.in_chans} value(s) "
                "(in_chans); use gray_preprocessing() for a 1-channel model"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Preprocessing.interpolation={self.interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"Preprocessing.size must be (H, W) with positive sides, got {self.size}")

    def to_dict(self) -> dict:
        """JSON-ready form, for checkpoints and exports."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Preprocessing:
        """The inverse of ``to_dict`` (a run's data.json, an export's metadata)."""
        return cls(
            size=tuple(d["size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d["interpolation"],
            in_chans=d["in_chans"],
        )


def gray_preprocessing(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float], tuple[float]]:
    """Mean/std for a 1-channel model adapted from an RGB one: the averages of the RGB values."""
    return (float(np.mean(mean)),), (float(np.mean(std)),)


@dataclass(frozen=True)
class Augment:
    """The `augment` config group. Each key switches on one albumentations op; 0 / null = off."""

    hflip: float = 0.0  # HorizontalFlip probability
    vflip: float = 0.0  # VerticalFlip probability
    crop_scale: tuple[float, float] | None = None  # RandomResizedCrop area range; null = plain resize
    rotate: float = 0.0  # Affine: rotation in [-rotate, rotate] degrees
    shift: float = 0.0  # Affine: translation in [-shift, shift] of the image side
    zoom: float = 0.0  # Affine: scale in [1 - zoom, 1 + zoom]
    color_jitter: float = 0.0  # ColorJitter brightness / contrast / saturation strength
    hue: float = 0.0  # ColorJitter hue shift in [-hue, hue] (0..0.5)
    dropout: float = 0.0  # CoarseDropout probability
    dropout_holes: tuple[int, int] = (1, 4)  # CoarseDropout: number of holes (with dropout > 0)
    dropout_size: tuple[float, float] = (0.05, 0.15)  # CoarseDropout: hole side / image side
    clahe: float = 0.0  # CLAHE (local contrast equalization) probability, training only
    clahe_clip: float = 2.0  # CLAHE clip limit (higher: stronger contrast)

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> Augment:
        """Validate an `augment` config; unknown keys and out-of-range values raise AugmentError."""
        values = dataclass_values(cls, cfg, "augment", AugmentError)
        flags = sorted(k for k, v in cfg.items() if isinstance(v, bool))
        if flags:
            raise AugmentError(
                f"augment key(s) {flags} take numbers, not true/false: e.g. augment.hflip=0.5 "
                "(a probability), augment.hflip=0 to turn it off"
            )
        augment = cls(**values)
        augment._validate()
        return augment

    def _validate(self) -> None:
        checks = {
            "hflip": 0 <= self.hflip <= 1,
            "vflip": 0 <= self.vflip <= 1,
            "crop_scale": self.crop_scale is None or _is_range(self.crop_scale, 1e-9, 1),
            "rotate": 0 <= self.rotate <= 180,
            "shift": 0 <= self.shift < 1,
            "zoom": 0 <= self.zoom < 1,
            "color_jitter": 0 <= self.color_jitter <= 1,
            "hue": 0 <= self.hue <= 0.5,
            "dropout": 0 <= self.dropout <= 1,
            "dropout_holes": _is_range(self.dropout_holes, 1, float("inf")),
            "dropout_size": _is_range(self.dropout_size, 1e-9, 1),
            "clahe": 0 <= self.clahe <= 1,
            "clahe_clip": self.clahe_clip >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise AugmentError(
                "augment value(s) out of range: "
                + ", ".join(f"augment.{k}={getattr(self, k)}" for k in bad)
                + " (probabilities in [0, 1], crop_scale [lo, hi] within (0, 1], rotate degrees, "
                "shift/zoom fractions < 1, hue <= 0.5, clahe_clip >= 1)"
            )


def _is_range(value: tuple, low: float, high: float) -> bool:
    """A [lo, hi] pair with low <= lo <= hi <= high."""
    return len(value) == 2 and low <= value[0] <= value[1] <= high


def augment_ops(augment: Augment) -> list[A.BasicTransform]:
    """The random ops after the resize/crop step, in pipeline order (empty list: none switched on)."""
    ops: list[A.BasicTransform] = []
    if augment.clahe:
        ops.append(A.CLAHE(clip_limit=(1.0, augment.clahe_clip), tile_grid_size=(8, 8), p=augment.clahe))
    if augment.rotate or augment.shift or augment.zoom:
        ops.append(
            A.Affine(
                rotate=(-augment.rotate, augment.rotate),
                translate_percent=(-augment.shift, augment.shift),
                scale=(1 - augment.zoom, 1 + augment.zoom),
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            )
        )
    if augment.hflip:
        ops.append(A.HorizontalFlip(p=augment.hflip))
    if augment.vflip:
        ops.append(A.VerticalFlip(p=augment.vflip))
    if augment.color_jitter or augment.hue:
        s = augment.color_jitter
        ops.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=augment.hue, p=1.0))
    if augment.dropout:
        ops.append(
            A.CoarseDropout(
                num_holes_range=augment.dropout_holes,
                hole_height_range=augment.dropout_size,
                hole_width_range=augment.dropout_size,
                p=augment.dropout,
            )
        )
    return ops


def is_deterministic(augment: Augment) -> bool:
    """True when the train pipeline has no random op, i.e. equals the eval pipeline."""
    return augment.crop_scale is None and not augment_ops(augment)


class Resize(A.ImageOnlyTransform):
    """Resize straight to ``size`` (H, W) with the reference's Pillow filter (antialiased)."""

    def __init__(self, size: tuple[int, int], interpolation: str) -> None:
        super().__init__(p=1.0)
        self.size, self.interpolation = size, interpolation

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        return reference.resize(img, self.size, self.interpolation)


class RandomResizedCrop(A.RandomResizedCrop):
    """Albumentations' random crop (its parameters and random stream), resized by the reference."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], interpolation: str) -> None:
        super().__init__(size=size, scale=scale)
        self.filter = interpolation

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: object) -> np.ndarray:
        x_min, y_min, x_max, y_max = crop_coords
        return reference.resize(img[y_min:y_max, x_min:x_max], self.size, self.filter)


class Normalize(A.ImageOnlyTransform):
    """The reference's ``(value / 255 - mean) / std`` in float32."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(p=1.0)
        self.mean, self.std = mean, std

    def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
        return reference.normalize(img, self.mean, self.std)


def train_transform(pre: Preprocessing, image_channels: int, augment: Augment) -> A.Compose:
    """Random crop or resize to `pre.size`, the augment ops, then channels + normalize + tensor."""
    if augment.crop_scale is None:
        first: A.BasicTransform = Resize(pre.size, pre.interpolation)
    else:
        first = RandomResizedCrop(pre.size, augment.crop_scale, pre.interpolation)
    return normalized_tensor([first, *augment_ops(augment)], pre, image_channels)


def eval_transform(pre: Preprocessing, image_channels: int) -> A.Compose:
    """Direct resize to `pre.size`, then channels + normalize + tensor."""
    return normalized_tensor([Resize(pre.size, pre.interpolation)], pre, image_channels)


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Give every op of `transform` one shared random stream started from `seed`."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def seed_draw(transform: A.Compose, key: int | tuple[int, int], seed: int) -> int:
    """The sample index of a dataset key; for a training draw ``(index, epoch)`` (see
    ``samplers.SeededDraws``) the transform's random ops are first seeded from (seed, epoch, index),
    so a sample is augmented the same way in any process, worker or resumed run."""
    if isinstance(key, tuple):
        index, epoch = key
        seed_transform(transform, int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]))
        return index
    return key


def normalized_tensor(ops: list[A.BasicTransform], pre: Preprocessing, image_channels: int) -> A.Compose:
    """`ops`, then gray -> RGB when the model takes 3 channels, Normalize(mean, std) and ToTensorV2."""
    if image_channels == 3 and pre.in_chans == 1:
        raise ValueError("RGB images cannot feed a 1-channel model; use dataset.grayscale=replicate")
    if image_channels == 1 and pre.in_chans == 3:
        ops = [*ops, A.ToRGB(num_output_channels=3)]
    return A.Compose([*ops, Normalize(pre.mean, pre.std), ToTensorV2()])
