"""MedMNIST v2 (2D subsets) from the official npz files, official train/val/test splits kept.

The metadata (task type, channels, class names) is copied from MedMNIST's ``INFO`` table
(medmnist/info.py, v2/v3, CC BY 4.0), so reading a file needs no ``medmnist`` package; the package
is only used to download a missing file. File names follow MedMNIST: ``{name}.npz`` at 28 px,
``{name}_{size}.npz`` at 64 / 128 / 224 px; keys ``{split}_images`` (N, H, W[, 3]) uint8 and
``{split}_labels`` (N, 1) or (N,) (multi-label: (N, L) of 0/1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.data.configs import MedmnistConfig
from finetune.data.sources import Samples, Source
from finetune.run.errors import DatasetError

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
HOMEPAGE = "https://medmnist.com (files: https://zenodo.org/records/10519652)"
DEFAULT_ROOT = "~/.medmnist"  # where the medmnist package keeps its files (unless $MEDMNIST_ROOT)


@dataclass(frozen=True)
class Subset:
    """One MedMNIST 2D subset: task type, image channels, class names (label index order)."""

    task: str
    channels: int
    labels: tuple[str, ...]
    python_class: str


_ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)

MEDMNIST: dict[str, Subset] = {
    "pathmnist": Subset(
        "multi-class",
        3,
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        "PathMNIST",
    ),
    "chestmnist": Subset(
        "multi-label",
        1,
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        "ChestMNIST",
    ),
    "dermamnist": Subset(
        "multi-class",
        3,
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        "DermaMNIST",
    ),
    "octmnist": Subset(
        "multi-class", 1, ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), "OCTMNIST"
    ),
    "pneumoniamnist": Subset("binary", 1, ("normal", "pneumonia"), "PneumoniaMNIST"),
    "retinamnist": Subset("ordinal-regression", 3, ("0", "1", "2", "3", "4"), "RetinaMNIST"),
    "breastmnist": Subset("binary", 1, ("malignant", "normal, benign"), "BreastMNIST"),
    "bloodmnist": Subset(
        "multi-class",
        3,
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        "BloodMNIST",
    ),
    "tissuemnist": Subset(
        "multi-class",
        1,
        (
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        "TissueMNIST",
    ),
    "organamnist": Subset("multi-class", 1, _ORGANS, "OrganAMNIST"),
    "organcmnist": Subset("multi-class", 1, _ORGANS, "OrganCMNIST"),
    "organsmnist": Subset("multi-class", 1, _ORGANS, "OrganSMNIST"),
}


def load_medmnist_source(config: MedmnistConfig) -> Source:
    """Read (downloading if allowed and needed) the subset's npz and keep its official splits."""
    name = subset_name(config)
    subset = MEDMNIST[name]
    path = npz_path(config, name)
    if not path.is_file():
        _download(config, name, path)
    with _open_npz(path) as npz:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in npz.files]
        if missing:
            raise DatasetError(
                f"{path} lacks the array(s) {missing} (found {sorted(npz.files)}); a MedMNIST "
                "npz holds train/val/test _images and _labels"
            )
        splits = {s: _split(npz, path, s, subset) for s in SPLITS}
    channels = {s.images.shape[3] for s in splits.values()}
    sizes = {s.images.shape[1:3] for s in splits.values()}
    if len(channels) > 1 or len(sizes) > 1:
        raise DatasetError(f"{path}: the splits differ in image shape ({sorted(sizes)}, channels {sorted(channels)})")
    image_channels = channels.pop()
    if image_channels != subset.channels:
        log.warning(
            "%s: %s images have %d channel(s); MedMNIST's %s has %d", path, name, image_channels, name, subset.channels
        )
    if subset.task == "ordinal-regression":
        log.info(
            "%s is ordinal regression (%d grades): trained and scored as multi-class, as in the MedMNIST benchmark",
            name,
            len(subset.labels),
        )
    log.info(
        "MedMNIST %s (%s, %s px) from %s: train/val/test = %s",
        name,
        subset.task,
        "x".join(map(str, sizes.pop())),
        path,
        "/".join(str(len(splits[s])) for s in SPLITS),
    )
    return Source(list(subset.labels), splits, image_channels, task=subset.task, channels_from_metadata=True)


def subset_name(config: MedmnistConfig) -> str:
    """dataset.name, or the subset an explicit dataset.file is named after (longest known prefix)."""
    name = config.name
    if name is None and config.file is not None:
        stem = Path(config.file).name.lower()
        matches = [n for n in MEDMNIST if stem.startswith(n)]
        name = max(matches, key=len) if matches else None
    if name is None:
        raise DatasetError(f"dataset.name is not set: pass dataset.name=<subset>, one of {sorted(MEDMNIST)}")
    name = name.lower()
    if name not in MEDMNIST:
        hint = " (3D subsets are not supported)" if name.endswith("3d") else ""
        raise DatasetError(f"dataset.name={name!r} is not a MedMNIST 2D subset{hint}; use one of {sorted(MEDMNIST)}")
    return name


def npz_path(config: MedmnistConfig, name: str) -> Path:
    """Where the npz is: dataset.file (absolute, or relative to the root), else the official name in
    the root (dataset.root; unset: $MEDMNIST_ROOT, else ~/.medmnist as the medmnist package uses)."""
    if config.size not in SIZES:
        raise DatasetError(f"dataset.size={config.size!r}: MedMNIST 2D files come in sizes {list(SIZES)}")
    root = Path(os.path.expanduser(config.root or os.environ.get("MEDMNIST_ROOT") or DEFAULT_ROOT))
    if config.file is not None:
        file = Path(os.path.expanduser(config.file))
        return file if file.is_absolute() else root / file
    return root / official_file_name(name, config.size)


def official_file_name(name: str, size: int) -> str:
    """``pneumoniamnist.npz`` at 28 px, ``pneumoniamnist_64.npz`` at 64 px."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def _download(config: MedmnistConfig, name: str, path: Path) -> None:
    """Fetch the official file with the medmnist package; any failure: one error saying how to get it."""
    how = (
        f"Put the official file there (from {HOMEPAGE}, or with `pip install medmnist` and "
        f"`python -c \"import medmnist; medmnist.{MEDMNIST[name].python_class}(split='train', "
        f"download=True, size={config.size}, root='{path.parent}')\"` on a machine with internet), "
        "or point dataset.root / dataset.file at your copy."
    )
    if config.file is not None or not config.download:
        why = "dataset.file names a file" if config.file is not None else "dataset.download=false"
        raise DatasetError(f"MedMNIST file not found: {path} ({why}, nothing downloaded). {how}")
    try:
        import medmnist
    except ImportError:
        raise DatasetError(
            f"MedMNIST file not found: {path}, and the medmnist package that could download it is not installed. {how}"
        ) from None
    log.info("downloading MedMNIST %s (%d px) into %s with the medmnist package", name, config.size, path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset_class = getattr(medmnist, MEDMNIST[name].python_class)
        dataset_class(split="train", download=True, size=config.size, root=str(path.parent))
    except Exception as e:  # offline, old medmnist without `size`, checksum mismatch, ...
        raise DatasetError(f"MedMNIST file not found: {path}, and downloading it failed ({e}). {how}") from e
    if not path.is_file():
        raise DatasetError(f"the medmnist package did not write {path}. {how}")


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The npz archive at ``path`` (never unpickling anything); DatasetError naming the file otherwise."""
    try:
        npz = np.load(path)
    except Exception as e:  # not a zip, truncated, a pickle: name the file
        if _pickled(e):
            raise DatasetError(
                f"{path} is a pickle of Python objects, not an npz of arrays; finetune never loads "
                "pickles (they can run code): save the arrays with numpy.savez"
            ) from None
        raise DatasetError(f"cannot read {path} as a MedMNIST npz: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"{path} holds a single array, not an npz of train/val/test _images and _labels; "
            "save them together with numpy.savez"
        )
    return npz


def _pickled(error: Exception) -> bool:
    """Whether numpy refused ``error``'s data because reading it would unpickle Python objects."""
    return isinstance(error, ValueError) and "allow_pickle" in str(error)


def _array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of the npz; DatasetError naming the file and the array when it cannot be read."""
    try:
        return npz[key]
    except Exception as e:  # object arrays, a damaged member
        if _pickled(e):
            raise DatasetError(
                f"{path}: {key} holds Python objects (dtype=object), not numbers; finetune never "
                f"loads pickled objects (they can run code): save {key} as a uint8 / integer array "
                "with numpy.savez"
            ) from None
        raise DatasetError(f"{path}: cannot read {key}: {e}") from e


def _split(npz: np.lib.npyio.NpzFile, path: Path, split: str, subset: Subset) -> Samples:
    """One split's images and targets; DatasetError unless every image has exactly one label row."""
    images = _images(_array(npz, f"{split}_images", path), path, split)
    targets = _targets(_array(npz, f"{split}_labels", path), subset, path, split)
    if len(images) != len(targets):
        raise DatasetError(
            f"{path}: {split}_images holds {len(images)} images but {split}_labels holds "
            f"{len(targets)} labels; each image needs one label: rebuild the file with matching "
            f"arrays, or use the official file ({HOMEPAGE})"
        )
    return Samples(images, targets)


def _images(array: np.ndarray, path: Path, split: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, 1|3) uint8 → (N, H, W, C)."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[3] not in (1, 3):
        raise DatasetError(f"{path}: {split}_images has shape {array.shape}; expected (N, H, W) or (N, H, W, 3)")
    if array.dtype != np.uint8:
        raise DatasetError(f"{path}: {split}_images is {array.dtype}; MedMNIST images are uint8")
    return np.ascontiguousarray(array)


def _targets(labels: np.ndarray, subset: Subset, path: Path, split: str) -> np.ndarray:
    """Class indices int64 [N] from (N, 1) or (N,); multi-label: float32 multi-hot [N, L]."""
    num_classes = len(subset.labels)
    if subset.task == "multi-label":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DatasetError(
                f"{path}: {split}_labels has shape {labels.shape}; this multi-label subset needs (N, {num_classes})"
            )
        if not np.isin(labels, (0, 1)).all():
            raise DatasetError(f"{path}: {split}_labels of a multi-label subset must be 0/1")
        return labels.astype(np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DatasetError(f"{path}: {split}_labels has shape {labels.shape}; expected (N, 1) or (N,)")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path}: {split}_labels hold values {labels.min()}..{labels.max()}, outside "
            f"0..{num_classes - 1} ({num_classes} classes)"
        )
    return labels
