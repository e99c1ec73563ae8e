"""Dataset sources: find a dataset's images, check them, split them.

One loader per `dataset.kind` (see LOADERS) turns the dataset config into a Source: class names,
train/val/test Samples, the channel count of the images and the task type. Scanning lists files
and checks headers only (PIL `verify()`, plus a full decode for the rare files that check cannot
vouch for), opens files read-only and never writes to the user's folders. MedMNIST npz files
(finetune.data.medmnist) and DICOM folders (finetune.data.dicom) load on demand.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from finetune.data.options import dataclass_values
from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
GRAY_MODES = WIDE_GRAY_MODES | {"1", "L", "LA", "La", "F"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_LISTED = 5  # problems spelled out in one error message
# What the targets mean: binary / multi-class (one class per image, softmax + cross-entropy),
# multi-label (any number, sigmoid + BCE), ordinal-regression (graded classes, e.g. RetinaMNIST:
# trained and scored as multi-class, as in the MedMNIST benchmark).
TASK_TYPES = ("binary", "multi-class", "multi-label", "ordinal-regression")


class DatasetError(FinetuneError, ValueError):
    """A problem with the user's data or dataset config; the message says what, where and how to fix."""


@dataclass(frozen=True)
class DatasetConfig:
    """The `dataset` config group (see conf/dataset/*.yaml for what each key means)."""

    kind: str
    root: str | None = None
    csv: str | None = None
    image_size: int | None = None
    grayscale: str = "replicate"
    multilabel: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    on_error: str = "raise"
    allow_flips: bool = True
    num_workers: int = 2
    # dataset=medmnist
    name: str | None = None  # subset, e.g. pneumoniamnist (see finetune.data.medmnist.MEDMNIST)
    size: int = 28  # 28 | 64 | 128 | 224: which official file ({name}.npz or {name}_{size}.npz)
    file: str | None = None  # an explicit .npz (relative to root or absolute)
    download: bool = True  # fetch a missing file with the medmnist package (needs it and a network)
    # dataset=dicom_folder
    window: tuple[float, float] | None = None  # [center, width] instead of the files' own VOI

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> DatasetConfig:
        """Validate a `dataset` config; every problem raises DatasetError naming the key."""
        values = dataclass_values(cls, cfg, "dataset", DatasetError)
        if cfg.get("kind") not in LOADERS:
            raise DatasetError(f"dataset.kind={cfg.get('kind')!r}; use one of {sorted(LOADERS)}")
        config = cls(**values)
        config._validate()
        return config

    def _validate(self) -> None:
        if self.num_workers < 0:
            raise DatasetError(f"dataset.num_workers={self.num_workers}: use 0 (load in the main process) or more")
        choices = {"grayscale": ("replicate", "adapt"), "on_error": ("raise", "skip")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise DatasetError(f"dataset.{key}={getattr(self, key)!r}; use one of {list(allowed)}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise DatasetError(
                f"dataset.val_fraction={self.val_fraction} must be in (0, 1) and "
                f"dataset.test_fraction={self.test_fraction} in [0, 1)"
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise DatasetError("dataset.val_fraction + dataset.test_fraction must be < 1")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise DatasetError(
                f"dataset.image_size={self.image_size!r}; use a positive int, or null for the backbone's size"
            )
        if self.multilabel and self.kind != "csv":
            raise DatasetError("dataset.multilabel=true needs dataset=csv (labels 'a;b' per row)")
        if self.csv is not None and self.kind != "csv":
            raise DatasetError(f"dataset.csv is only read by dataset=csv, not kind={self.kind}")
        if (self.name is not None or self.file is not None) and self.kind != "medmnist":
            raise DatasetError(f"dataset.name / dataset.file are read by dataset=medmnist, not kind={self.kind}")
        if self.window is not None:
            if self.kind != "dicom_folder":
                raise DatasetError(f"dataset.window is read by dataset=dicom_folder, not kind={self.kind}")
            if len(self.window) != 2 or not self.window[1] >= 1:
                raise DatasetError(
                    f"dataset.window={list(self.window)}: give [center, width] with width >= 1, "
                    "e.g. dataset.window=[40,400] (CT soft tissue) or null for the files' own window"
                )


@dataclass(frozen=True)
class Samples:
    """One split: image files (or an in-memory uint8 array [N, H, W, C]) and their targets."""

    images: Sequence[Path] | np.ndarray
    targets: np.ndarray  # int64 [N], or float32 multi-hot [N, num_classes]
    window: tuple[float, float] | None = None  # DICOM files: [center, width] overriding their VOI

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> Samples:
        """The samples at `index`, in that order."""
        if isinstance(self.images, np.ndarray):
            return Samples(self.images[index], self.targets[index], self.window)
        return Samples([self.images[i] for i in index], self.targets[index], self.window)

    def image(self, i: int, channels: int) -> np.ndarray:
        """Image `i` as HWC uint8 with `channels` channels."""
        if isinstance(self.images, np.ndarray):
            return self.images[i]
        return read_image(self.images[i], channels, self.window)


@dataclass(frozen=True)
class Source:
    """What a loader found: class names, the three splits, channels, files skipped as unreadable,
    the task type (None: binary / multi-class from the class count, or multi-label) and whether the
    channels come from the dataset's metadata (then dataset.grayscale only concerns gray datasets)."""

    class_names: list[str]
    splits: dict[str, Samples]
    image_channels: int
    skipped: int = 0
    task: str | None = None
    channels_from_metadata: bool = False


class ImageDataset(torch.utils.data.Dataset):
    """Samples decoded and transformed: (image tensor [C, H, W], target tensor)."""

    def __init__(self, samples: Samples, channels: int, transform: Callable[..., dict]) -> None:
        self.samples, self.channels, self.transform = samples, channels, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(image=self.samples.image(i, self.channels))["image"]
        return image, torch.as_tensor(self.samples.targets[i])


# --- images ---------------------------------------------------------------------------------


def read_image(path: Path, channels: int, window: tuple[float, float] | None = None) -> np.ndarray:
    """Decode `path` to HWC uint8 with `channels` (1 or 3) channels, EXIF orientation applied.

    Grayscale modes stay 1 channel (16/32-bit ones scaled from the 16-bit range: v / 257); all
    other modes (RGBA, P, CMYK, ...) become RGB. A gray image in a 3-channel dataset is replicated.
    DICOM files (.dcm) go through their modality LUT and VOI LUT / window (`window` overrides it).
    """
    try:
        if path.suffix.lower() in DICOM_EXTENSIONS:
            from finetune.data.dicom import read_dicom

            array = read_dicom(path, window)
        else:
            with Image.open(path) as im:
                array = _to_array(ImageOps.exif_transpose(im))
    except Exception as e:  # any decoder failure: name the file
        raise DatasetError(f"cannot read image {path}: {e}") from e
    return np.repeat(array, 3, axis=2) if channels == 3 and array.shape[2] == 1 else array


def _to_array(im: Image.Image) -> np.ndarray:
    if im.mode in WIDE_GRAY_MODES:
        wide = np.clip(np.asarray(im, dtype=np.float32), 0, 65535)
        return np.round(wide / 257).astype(np.uint8)[..., None]
    if im.mode in GRAY_MODES:
        return np.asarray(im.convert("L"))[..., None]
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB"))


def inspect_image(path: Path) -> int:
    """Check cheaply that `path` is a whole, decodable image; return its channels (1 or 3).

    PIL's `verify()` checks headers (and every PNG chunk's CRC). A JPEG is trusted when it ends
    with its end-of-image marker; other formats, and JPEGs cut short, are decoded to be sure.
    DICOM files are decoded (pixel data and LUTs) by finetune.data.dicom.
    """
    if path.suffix.lower() in DICOM_EXTENSIONS:
        from finetune.data.dicom import inspect_dicom

        return inspect_dicom(path)
    with Image.open(path) as im:
        mode, image_format = im.mode, im.format
        im.verify()
    if image_format != "PNG" and not (image_format == "JPEG" and _ends_with_jpeg_eoi(path)):
        with Image.open(path) as im:
            im.load()
    return 1 if mode in GRAY_MODES else 3


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def check_images(paths: Sequence[Path], on_error: str) -> dict[Path, int]:
    """Channels of every readable image; unreadable ones raise, or are left out with on_error=skip."""

    def probe(path: Path) -> int | Exception:
        try:
            return inspect_image(path)
        except Exception as e:  # corrupt, truncated, not an image, too large: all unreadable
            return e

    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        results = dict(zip(paths, pool.map(probe, paths)))
    bad = [f"{path}: {result}" for path, result in results.items() if isinstance(result, Exception)]
    if bad and on_error == "raise":
        raise DatasetError(
            f"{len(bad)} unreadable image(s) (corrupt, truncated or not an image):\n  "
            + _listing(bad)
            + "\nRepair or remove them, or set dataset.on_error=skip to leave them out."
        )
    if bad:
        log.warning("skipped %d unreadable image(s) (dataset.on_error=skip):\n  %s", len(bad), _listing(bad))
    return {path: result for path, result in results.items() if not isinstance(result, Exception)}


def _listing(problems: Sequence[str]) -> str:
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n  ".join(problems[:MAX_LISTED]) + more


# --- splits ---------------------------------------------------------------------------------


def stratified_split(
    groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): round(N * fraction) for val and test, each group (class) in proportion.

    Shuffles within each group (seeded), keeps one member of every group for train, and picks
    val then test at evenly spaced positions of the group-ordered rest, so small classes split as
    evenly as large ones and no class vanishes from train.
    """
    rng = np.random.default_rng(seed)
    keep, pool = [], []
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        keep.append(members[:1])
        pool.append(members[1:])
    rest = np.concatenate(pool)
    val_mask = _evenly_spaced(len(rest), round(len(groups) * val_fraction))
    val, rest = rest[val_mask], rest[~val_mask]
    test_mask = _evenly_spaced(len(rest), round(len(groups) * test_fraction))
    train = np.concatenate([*keep, rest[~test_mask]])
    return np.sort(train), np.sort(val), np.sort(rest[test_mask])


def _evenly_spaced(n: int, k: int) -> np.ndarray:
    """Mask choosing min(k, n) of n positions, evenly spread."""
    k = min(k, n)
    mask = np.zeros(n, dtype=bool)
    mask[((np.arange(k) + 0.5) * n / max(k, 1)).astype(int)] = True
    return mask


def assemble_splits(parts: dict[str, Samples], config: DatasetConfig, multilabel: bool) -> dict[str, Samples]:
    """Fill in missing val/test splits: carved from train (stratified), or test = val (warned)."""
    train, val, test = parts["train"], parts.get("val"), parts.get("test")
    if val is None:
        test_fraction = config.test_fraction if test is None else 0.0
        groups = np.zeros(len(train)) if multilabel else train.targets
        train_idx, val_idx, test_idx = stratified_split(
            groups, config.val_fraction, test_fraction, config.split_seed
        )
        if test is None and test_fraction > 0:
            test = train.subset(test_idx)
        train, val = train.subset(train_idx), train.subset(val_idx)
    if test is None:
        log.warning("no test split (no test/ folder, test rows or test_fraction): testing on the val split")
        test = val
    splits = {"train": train, "val": val, "test": test}
    empty = [name for name, samples in splits.items() if len(samples) == 0]
    if empty:
        raise DatasetError(
            f"the {'/'.join(empty)} split has no images ({len(train)} training images); add images, or "
            "raise dataset.val_fraction / dataset.test_fraction where splits are carved from train"
        )
    return splits


def class_counts(targets: np.ndarray, num_classes: int) -> list[int]:
    """Images per class (multi-label: positives per class)."""
    if targets.ndim == 2:
        return [int(c) for c in targets.sum(axis=0)]
    return [int(c) for c in np.bincount(targets, minlength=num_classes)]


# --- loaders --------------------------------------------------------------------------------


def load_digits_source(config: DatasetConfig) -> Source:
    """scikit-learn's 8x8 digits (values 0-16) as uint8 grayscale (x16, clipped to 255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    samples = Samples(images, digits.target.astype(np.int64))
    splits = assemble_splits({"train": samples}, config, multilabel=False)
    return Source([str(d) for d in range(10)], splits, image_channels=1)


def load_imagefolder(config: DatasetConfig) -> Source:
    """`root/<class>/*.jpg`, or `root/{train,val|valid,test}/<class>/*.jpg` when `root/train` exists."""
    return _load_class_folders(config, IMAGE_EXTENSIONS)


def load_dicom_folder(config: DatasetConfig) -> Source:
    """`root/<class>/*.dcm` (or with train/val/test folders), like imagefolder; each file is one
    image (multi-frame files: the middle frame) read through its modality and VOI LUTs."""
    from finetune.data.dicom import require_pydicom

    require_pydicom()
    return _load_class_folders(config, DICOM_EXTENSIONS)


def _load_class_folders(config: DatasetConfig, extensions: frozenset[str]) -> Source:
    root = _existing_dir(config.root, "dataset.root")
    folders = _split_folders(root)
    train_dir = folders["train"]
    class_names = sort_class_names([d.name for d in _subdirs(train_dir)])
    example = sorted(extensions)[0]
    if not class_names:
        raise DatasetError(
            f"no class folders in {train_dir}: expected {train_dir}/<class name>/<image>{example} "
            "(one folder per class); set dataset.root to the folder that holds them"
        )
    index = {name: i for i, name in enumerate(class_names)}
    parts: dict[str, tuple[list[Path], list[int]]] = {}
    for split, folder in folders.items():
        paths: list[Path] = []
        labels: list[int] = []
        for class_dir in _subdirs(folder):
            if class_dir.name not in index:
                raise DatasetError(
                    f"class folder {class_dir} has no matching folder in {train_dir}; every class needs "
                    f"training images (found classes there: {class_names})"
                )
            files = _image_files(class_dir, extensions)
            if not files and split == "train":
                raise DatasetError(
                    f"class folder {class_dir} holds no images ({', '.join(sorted(extensions))}); "
                    "add images or remove the folder"
                )
            paths += files
            labels += [index[class_dir.name]] * len(files)
        parts[split] = (paths, labels)
    return _file_source(config, class_names, parts, where=str(root))


def load_csv(config: DatasetConfig) -> Source:
    """A CSV with columns path,label[,split]; paths relative to dataset.root or the CSV's folder."""
    if config.csv is None:
        raise DatasetError(
            "dataset.csv is not set: pass dataset.csv=/path/to/labels.csv (columns path,label[,split])"
        )
    csv_path = Path(config.csv).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"dataset.csv={config.csv} is not a file (resolved to {csv_path.resolve()})")
    base = _existing_dir(config.root, "dataset.root") if config.root else csv_path.parent
    rows = _read_csv_rows(csv_path, config.multilabel)
    class_names = sort_class_names({name for _, _, names, _ in rows for name in names})
    index = {name: i for i, name in enumerate(class_names)}
    problems: list[str] = []
    parts: dict[str, tuple[list[Path], list]] = {}
    for line, raw_path, names, split in rows:
        path = Path(raw_path).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            problems.append(f"line {line}: {raw_path!r} not found (looked for {path})")
            continue
        target = [index[n] for n in names] if config.multilabel else index[names[0]]
        paths, targets = parts.setdefault(split, ([], []))
        paths.append(path)
        targets.append(target)
    if problems:
        raise DatasetError(
            f"{csv_path}: {len(problems)} image path(s) do not exist (relative paths start at {base}):\n  "
            + _listing(problems)
        )
    if "train" not in parts:
        raise DatasetError(f"{csv_path}: no rows with split 'train'; mark the training rows split=train, "
                           "or drop the split column to split the rows automatically")
    return _file_source(config, class_names, parts, where=str(csv_path))


def _read_csv_rows(csv_path: Path, multilabel: bool) -> list[tuple[int, str, list[str], str]]:
    """(line, path, label names, split) per data row; bad rows raise, listing all of them."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DatasetError(
                f"{csv_path} lacks column(s) {missing} (found {columns}); its first line must be a "
                "header 'path,label' with an optional third column 'split' (train/val/test)"
            )
        reader.fieldnames = columns
        rows, problems = [], []
        for row in reader:
            line = reader.line_num
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            split = (row.get("split") or "").strip().lower() if "split" in columns else "train"
            names = [n.strip() for n in label.split(";") if n.strip()] if multilabel else [label]
            if not path:
                problems.append(f"line {line}: empty path")
            elif not label or not names:
                problems.append(f"line {line}: empty label for {path!r}")
            elif split not in SPLIT_NAMES:
                problems.append(f"line {line}: unknown split {split!r} for {path!r}; use train, val or test")
            else:
                rows.append((line, path, names, SPLIT_NAMES[split]))
    if problems:
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s):\n  " + _listing(problems))
    if not rows:
        raise DatasetError(f"{csv_path} has no data rows")
    return rows


def _file_source(
    config: DatasetConfig,
    class_names: list[str],
    parts: dict[str, tuple[list[Path], list]],
    where: str,
) -> Source:
    """Check the images of every split, drop unreadable ones, assemble and validate the splits."""
    if len(class_names) < 2:
        raise DatasetError(
            f"found {len(class_names)} class(es) {class_names} in {where}; classification needs at least 2"
        )
    all_paths = list(dict.fromkeys(p for paths, _ in parts.values() for p in paths))
    channels = check_images(all_paths, config.on_error)
    samples = {}
    for split, (paths, targets) in parts.items():
        keep = [i for i, p in enumerate(paths) if p in channels]
        kept_targets = _targets([targets[i] for i in keep], config, len(class_names))
        samples[split] = Samples([paths[i] for i in keep], kept_targets, config.window)
    _check_class_coverage(samples, class_names, where)
    splits = assemble_splits(samples, config, config.multilabel)
    image_channels = 1 if all(c == 1 for c in channels.values()) else 3
    return Source(class_names, splits, image_channels, skipped=len(all_paths) - len(channels))


def _targets(targets: list, config: DatasetConfig, num_classes: int) -> np.ndarray:
    if not config.multilabel:
        return np.asarray(targets, dtype=np.int64)
    hot = np.zeros((len(targets), num_classes), dtype=np.float32)
    for row, positives in enumerate(targets):
        hot[row, positives] = 1.0
    return hot


def _check_class_coverage(parts: dict[str, Samples], class_names: list[str], where: str) -> None:
    """Every class needs training images; name the ones that only appear in val/test or were all skipped."""
    train = class_counts(parts["train"].targets, len(class_names))
    elsewhere = [sum(c) for c in zip(*(class_counts(s.targets, len(class_names)) for s in parts.values()))]
    missing = [
        f"'{name}' ({'only in val/test' if others else 'no readable images'})"
        for name, count, others in zip(class_names, train, elsewhere)
        if count == 0
    ]
    if missing:
        raise DatasetError(f"class(es) without training images in {where}: {', '.join(missing)}")


def _existing_dir(value: str | None, key: str) -> Path:
    if value is None:
        raise DatasetError(f"{key} is not set: pass {key}=/path/to/your/images")
    path = Path(value).expanduser()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(
            f"{key}={value} {state} (resolved to {path.resolve()}); pass {key}=/path/to/your/images"
        )
    return path


def _split_folders(root: Path) -> dict[str, Path]:
    """{"train": ...} plus "val"/"test" when root holds train/ and those folders."""
    if not (root / "train").is_dir():
        return {"train": root}
    folders = {"train": root / "train"}
    vals = [root / name for name in ("val", "valid") if (root / name).is_dir()]
    if len(vals) > 1:
        raise DatasetError(f"{root} holds both val/ and valid/; keep one validation folder")
    if vals:
        folders["val"] = vals[0]
    if (root / "test").is_dir():
        folders["test"] = root / "test"
    return folders


def _subdirs(folder: Path) -> list[Path]:
    """Visible subfolders (hidden ones such as .ipynb_checkpoints are not classes)."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(folder: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under `folder` (recursively, following links), sorted; hidden entries skipped,
    other files (e.g. .gif, .txt) logged as ignored."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, name) for name in sorted(filenames) if not name.startswith(".")]
    ignored = [f for f in files if f.suffix.lower() not in extensions]
    if ignored:
        log.info("ignored %d non-image file(s) in %s, e.g. %s", len(ignored), folder, ignored[0].name)
    return [f for f in files if f.suffix.lower() in extensions]


def sort_class_names(names: set[str] | list[str]) -> list[str]:
    """Numeric order when every name is an integer ("2" before "10"), else alphabetical."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_medmnist(config: DatasetConfig) -> Source:
    """A MedMNIST v2 2D subset from its official npz (finetune.data.medmnist)."""
    from finetune.data.medmnist import load_medmnist_source

    return load_medmnist_source(config)


Loader = Callable[[DatasetConfig], Source]
LOADERS: dict[str, Loader] = {
    "digits": load_digits_source,
    "imagefolder": load_imagefolder,
    "csv": load_csv,
    "medmnist": load_medmnist,
    "dicom_folder": load_dicom_folder,
}


def load_source(config: DatasetConfig) -> Source:
    """Scan and check the dataset `config.kind` describes."""
    return LOADERS[config.kind](config)
