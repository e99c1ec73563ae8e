"""Segmentation datasets: the ``dataset`` group of each layout, finding image/mask pairs, and
reading and checking masks before any training.

Layouts (``dataset.kind``, registered in ``finetune.data.DATASETS``):
- ``seg_folder``: ``root/images`` + ``root/masks`` with matching stems (``mask_suffix`` appended
  to the mask's stem), or ``root/{train,val,test}/{images,masks}``, or list files
  (``dataset.splits={train: train.txt, ...}``: one ``image mask`` pair or one stem per line).
- ``drive``: the DRIVE layout (``training/`` and ``test/`` with ``images/``, ``1st_manual/`` and
  the field-of-view ``mask/``); pixels outside the field of view become ``ignore_index``, so the
  loss and every metric only see the retina.

Masks (``dataset.mask_mode``): ``index`` (pixel value = class index), ``binary`` ({0, 255} or
{0, 1}, mapped to {0, 1}) or ``palette`` (RGB colour per class in ``dataset.palette``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from finetune.data import DATASETS
from finetune.data.files import IMAGE_EXTENSIONS, MASK_EXTENSIONS, FolderWalker
from finetune.data.options import dataclass_values
from finetune.run.errors import DatasetError

MASK_MODES = ("index", "binary", "palette")
BINARY_CLASSES = ("background", "foreground")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SegDatasetConfig:
    """The `dataset` group of a segmentation run (conf/dataset/seg_folder.yaml, drive.yaml)."""

    kind: str
    root: str | None = None
    class_names: tuple[str, ...] | None = None  # required for index / palette masks
    mask_mode: str = "index"
    palette: tuple | None = None  # palette masks: one [r, g, b] per class
    ignore_index: int = 255  # mask value excluded from loss and metrics
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""  # mask stem = image stem + suffix (e.g. "_mask")
    splits: dict | None = None  # list files per split, relative to root
    val_fraction: float = 0.2  # held out of train when no val split is given
    test_fraction: float = 0.0  # held out of train when no test split is given
    split_seed: int = 0
    crop_size: int = 256  # training crop and sliding-window tile (a multiple of 32)
    scale: float = 1.0  # images are resized by this factor for the model (> 1: thin structures); metrics at 1.0
    tile_overlap: float = 0.5  # sliding-window overlap between neighbouring tiles
    samples_per_image: int = 1  # random crops drawn from every training image per epoch
    grayscale: str = "replicate"  # replicate | adapt (1-channel stem for gray images)
    num_workers: int = 2

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> SegDatasetConfig:
        """Validate the `dataset` group; every problem raises DatasetError naming the key."""
        config = cls(**dataclass_values(cls, cfg, "dataset", DatasetError))
        config._validate()
        return config

    def _validate(self) -> None:
        layouts = sorted(name for name, kind in DATASETS.items() if kind.config_class() is type(self))
        checks = {
            "kind": (self.kind in layouts, f"use one of {layouts}"),
            "mask_mode": (self.mask_mode in MASK_MODES, f"use one of {list(MASK_MODES)}"),
            "crop_size": (
                isinstance(self.crop_size, int) and self.crop_size >= 32 and self.crop_size % 32 == 0,
                "use a multiple of 32 (encoders downsample 32x), e.g. 256",
            ),
            "tile_overlap": (0 <= self.tile_overlap < 1, "use a fraction in [0, 1), e.g. 0.5"),
            "scale": (0.1 <= self.scale <= 4, "use a resize factor in [0.1, 4], e.g. 2 for thin vessels"),
            "samples_per_image": (
                isinstance(self.samples_per_image, int) and self.samples_per_image >= 1,
                "use a whole number >= 1",
            ),
            "grayscale": (self.grayscale in ("replicate", "adapt"), "use replicate or adapt"),
            "num_workers": (self.num_workers >= 0, "use 0 (main process) or more"),
            "val_fraction": (0 < self.val_fraction < 1, "use a fraction in (0, 1)"),
            "test_fraction": (0 <= self.test_fraction < 1 - self.val_fraction, "use a fraction in [0, 1 - val)"),
            "ignore_index": (0 <= self.ignore_index <= 255, "use a mask value in 0..255 (255 by default)"),
        }
        for key, (ok, hint) in checks.items():
            if not ok:
                raise DatasetError(f"dataset.{key}={getattr(self, key)!r}: {hint}")
        if self.mask_mode != "binary" and not self.class_names:
            raise DatasetError(
                f"dataset.mask_mode={self.mask_mode} needs dataset.class_names (one name per "
                "class index, e.g. dataset.class_names=[background,road,car])"
            )
        if self.mask_mode == "binary" and self.class_names and len(self.class_names) != 2:
            raise DatasetError(f"dataset.mask_mode=binary has 2 classes, got class_names={list(self.class_names)}")
        if self.mask_mode == "palette" and (not self.palette or len(self.palette) != len(self.class_names)):
            raise DatasetError("dataset.mask_mode=palette needs dataset.palette with one [r,g,b] per class name")
        if self.class_names and self.ignore_index < len(self.class_names):
            raise DatasetError(
                f"dataset.ignore_index={self.ignore_index} is a class index ({self.names[self.ignore_index]!r}); "
                f"use a value >= {len(self.class_names)} (e.g. 255)"
            )

    @property
    def names(self) -> list[str]:
        """Class names, index order."""
        return list(self.class_names or BINARY_CLASSES)


@dataclass(frozen=True)
class Pair:
    """One image with its mask (and, for DRIVE, its field-of-view mask)."""

    image: Path
    mask: Path
    fov: Path | None = None


# --- finding pairs ----------------------------------------------------------------------------


def _root(config: SegDatasetConfig) -> Path:
    if config.root is None:
        raise DatasetError("dataset.root is not set: pass dataset.root=/path/to/your/dataset")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.root={config.root} is not a folder (resolved to {root.resolve()})")
    return root


def _by_stem(folder: Path, extensions: frozenset[str], suffix: str = "") -> dict[str, Path]:
    """The files of ``folder`` with ``extensions`` (images, or masks), by stem less ``suffix``."""
    if not folder.is_dir():
        raise DatasetError(
            f"{folder} does not exist: put the files there, or name your folders with "
            "dataset.images_dir / dataset.masks_dir (layouts: conf/dataset/seg_folder.yaml)"
        )
    walker = FolderWalker(folder)
    files = walker.files(folder, extensions, recursive=False)
    walker.warn_skipped()
    return {p.stem.removesuffix(suffix) if suffix else p.stem: p for p in files}


def _match(images: dict[str, Path], masks: dict[str, Path], where: Path) -> list[Pair]:
    missing = sorted(stem for stem in images if stem not in masks)
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) in {where} have no mask, e.g. "
            f"{[images[s].name for s in missing[:5]]}: add the masks, or set dataset.mask_suffix "
            "if mask names carry a suffix (e.g. _mask)"
        )
    if not images:
        raise DatasetError(f"no images found in {where} (extensions {sorted(IMAGE_EXTENSIONS)})")
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def _folder_pairs(folder: Path, config: SegDatasetConfig) -> list[Pair]:
    images = _by_stem(folder / config.images_dir, IMAGE_EXTENSIONS)
    masks = _by_stem(folder / config.masks_dir, MASK_EXTENSIONS, config.mask_suffix)
    return _match(images, masks, folder / config.images_dir)


def _list_pairs(root: Path, list_file: str, config: SegDatasetConfig) -> list[Pair]:
    """Pairs of a list file: ``image mask`` paths relative to root, or stems in images_dir/masks_dir."""
    path = root / list_file
    if not path.is_file():
        raise DatasetError(f"dataset.splits names {list_file}, but {path} does not exist")
    pairs, stems = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if len(fields) > 2:
            raise DatasetError(f"{path}:{number}: expected 'image mask' or one stem, got {line!r}")
        if len(fields) == 1:
            stems.append(fields[0])
        elif fields:
            pair = Pair(root / fields[0], root / fields[1])
            missing = [str(f) for f in (pair.image, pair.mask) if not f.is_file()]
            if missing:
                raise DatasetError(
                    f"{path}:{number}: {missing[0]} does not exist (list-file paths are relative "
                    "to dataset.root); fix the line or the file name"
                )
            pairs.append(pair)
    if stems:
        found = _folder_pairs(root, config)
        by_stem = {p.image.stem: p for p in found}
        unknown = [s for s in stems if s not in by_stem]
        if unknown:
            raise DatasetError(f"{path} lists stems with no image in {root / config.images_dir}, e.g. {unknown[:5]}")
        pairs += [by_stem[s] for s in stems]
    return pairs


def _hold_out(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(kept, held out): a seeded random ``fraction`` of ``pairs`` (at least one) held out."""
    n = max(1, round(fraction * len(pairs)))
    if n >= len(pairs):
        raise DatasetError(
            f"{len(pairs)} training image(s) cannot give {n} to a held-out split: add images "
            "or give the split explicitly"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = set(order[:n].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _complete(splits: dict[str, list[Pair]], config: SegDatasetConfig) -> dict[str, list[Pair]]:
    """Carve val (and test, when asked) out of train where they are missing."""
    if "val" not in splits:
        splits["train"], splits["val"] = _hold_out(splits["train"], config.val_fraction, config.split_seed)
    if "test" not in splits:
        if config.test_fraction:
            splits["train"], splits["test"] = _hold_out(splits["train"], config.test_fraction, config.split_seed + 1)
        else:  # said where the test runs (training), not by every command that loads the data
            splits["test"] = splits["val"]
    return {name: splits[name] for name in SPLITS}


def seg_folder_pairs(config: SegDatasetConfig) -> dict[str, list[Pair]]:
    """Pairs per split of a ``seg_folder`` dataset."""
    root = _root(config)
    if config.splits:
        unknown = set(config.splits) - set(SPLITS)
        if unknown or "train" not in config.splits:
            raise DatasetError(
                f"dataset.splits keys must include train and be among {list(SPLITS)}, got {sorted(config.splits)}"
            )
        splits = {name: _list_pairs(root, file, config) for name, file in config.splits.items()}
    elif (root / "train").is_dir():
        splits = {name: _folder_pairs(root / name, config) for name in SPLITS if (root / name).is_dir()}
    else:
        splits = {"train": _folder_pairs(root, config)}
    return _complete(splits, config)


def drive_pairs(config: SegDatasetConfig) -> dict[str, list[Pair]]:
    """Pairs per split of the DRIVE layout (validation held out of ``training/``)."""
    root = _root(config)

    def split(folder: str) -> list[Pair]:
        base = root / folder
        images = {p.name.split("_")[0]: p for p in _by_stem(base / "images", IMAGE_EXTENSIONS).values()}
        manual = {p.name.split("_")[0]: p for p in _by_stem(base / "1st_manual", MASK_EXTENSIONS).values()}
        fov = {p.name.split("_")[0]: p for p in _by_stem(base / "mask", MASK_EXTENSIONS).values()}
        pairs = _match(images, manual, base / "images")
        lacking = [p.image.name for key, p in zip(sorted(images), pairs) if key not in fov]
        if lacking:
            raise DatasetError(
                f"{len(lacking)} DRIVE image(s) in {base} have no field-of-view mask in "
                f"{base / 'mask'}, e.g. {lacking[:5]}"
            )
        return [Pair(p.image, p.mask, fov[key]) for key, p in zip(sorted(images), pairs)]

    return _complete({"train": split("training"), "test": split("test")}, config)


# --- reading and checking masks ----------------------------------------------------------------


def read_mask(pair: Pair, config: SegDatasetConfig) -> np.ndarray:
    """The class-index mask (HxW uint8) of ``pair``, ``ignore_index`` outside the field of view.

    Raises DatasetError naming the file when its values do not fit ``dataset.mask_mode``.
    """
    with Image.open(pair.mask) as im:
        im = ImageOps.exif_transpose(im)  # the same orientation rule as read_image
        raw = np.asarray(im.convert("RGB") if config.mask_mode == "palette" else im)
    if config.mask_mode == "palette":
        mask = _palette_to_index(raw, config, pair.mask)
    else:
        if raw.ndim == 3:
            if not (raw == raw[..., :1]).all():
                raise DatasetError(
                    f"{pair.mask} is a colour mask; use dataset.mask_mode=palette with "
                    "dataset.palette (one [r,g,b] per class)"
                )
            raw = raw[..., 0]
        if raw.max(initial=0) > 255:
            raise DatasetError(f"{pair.mask} has label values up to {raw.max()}: masks hold class indices 0..255")
        mask = raw.astype(np.uint8)
        if config.mask_mode == "binary":
            mask = _binary(mask, pair.mask)
    if pair.fov is not None:
        with Image.open(pair.fov) as im:
            fov = np.asarray(ImageOps.exif_transpose(im).convert("L")) > 127
        mask = np.where(fov, mask, config.ignore_index).astype(np.uint8)
    return mask


def _binary(mask: np.ndarray, path: Path) -> np.ndarray:
    values = set(np.unique(mask).tolist())
    if values <= {0, 1}:
        return mask
    if values <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    raise DatasetError(
        f"{path} is not a binary mask: values {sorted(values)[:10]} (expected {{0, 255}} or "
        "{0, 1}); use dataset.mask_mode=index with dataset.class_names for multi-class masks, "
        "or re-save anti-aliased masks without interpolation"
    )


def _palette_to_index(rgb: np.ndarray, config: SegDatasetConfig, path: Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    mask = np.full(code.shape, config.ignore_index, np.uint8)
    known = np.zeros(code.shape, bool)
    for index, (r, g, b) in enumerate(config.palette):
        hit = code == ((r << 16) | (g << 8) | b)
        mask[hit], known[hit] = index, True
    if not known.all():
        colours = np.unique(code[~known])[:5]
        raise DatasetError(
            f"{path} has colours outside dataset.palette, e.g. "
            f"{[[(c >> 16) & 255, (c >> 8) & 255, c & 255] for c in colours.tolist()]}: add each "
            "colour to dataset.palette with a name in dataset.class_names, or re-save the mask "
            "without anti-aliasing"
        )
    return mask


def check_pairs(pairs: list[Pair], config: SegDatasetConfig, split: str) -> np.ndarray:
    """Check sizes and mask values of every pair; return the pixel count per class of the split."""
    names = config.names
    counts = np.zeros(len(names), np.int64)
    for pair in pairs:
        with Image.open(pair.image) as im:
            size = ImageOps.exif_transpose(im).size  # as read_image orients it
        mask = read_mask(pair, config)
        if mask.shape[::-1] != size:
            raise DatasetError(
                f"{split} mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{pair.image} is {size[0]}x{size[1]}: masks must match their images pixel for pixel"
            )
        values = np.bincount(mask.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(values).tolist() if v >= len(names) and v != config.ignore_index]
        if bad:
            raise DatasetError(
                f"{split} mask {pair.mask} has label values {bad[:10]} outside the {len(names)} "
                f"declared classes 0..{len(names) - 1} (ignore_index={config.ignore_index}); "
                "fix dataset.class_names or dataset.ignore_index"
            )
        counts += values[: len(names)]
    return counts
