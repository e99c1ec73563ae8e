"""What every peer runner shares: the spec it is given, the same splits of the same data, the same
pretrained weights, a clock, and the JSON result it prints. Needs only numpy, Pillow and torch/timm,
never finetune, so it runs in each peer's own virtual environment.

Splits: an image folder reads ``root/train`` and ``root/val`` (classes = the sorted folder names of
train/, files sorted); it has no test split, so ``test`` is None and val is what is reported. A
MedMNIST npz gives its official train / val / test arrays (gray images stay 2-D here; each runner
turns them into RGB the way its tool does). A segmentation list folder (CamVid's layout) has
``train.txt``, ``val.txt`` and ``test.txt`` whose lines pair an image with its label map (paths
relative to the root): ``items`` are the images, ``labels`` the label-map paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class Split:
    """One split: ``items`` are file paths (image folder, segmentation list) or uint8 arrays (npz);
    ``labels`` ints (classification) or label-map paths (segmentation)."""

    items: list
    labels: list


@dataclass
class Data:
    classes: list[str]
    train: Split
    val: Split
    test: Split | None


def read_spec() -> dict:
    """The JSON spec in argv[1]; sets this process's torch threads to ``spec['threads']``."""
    import torch

    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    return spec


def load_data(spec: dict) -> Data:
    """The dataset the spec names, split as every tool in the benchmark sees it."""
    if spec["kind"] == "seglist":
        root = Path(spec["root"])
        splits = {s: _pairs(root, root / f"{s}.txt") for s in ("train", "val", "test")}
        return Data([str(c) for c in range(spec["num_classes"])], splits["train"], splits["val"], splits["test"])
    if spec["kind"] == "folder":
        root = Path(spec["root"])
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        return Data(classes, _folder(root / "train", classes), _folder(root / "val", classes), None)
    arrays = np.load(spec["file"])
    splits = {
        s: Split(list(arrays[f"{s}_images"]), arrays[f"{s}_labels"].reshape(-1).astype(int).tolist())
        for s in ("train", "val", "test")
    }
    classes = [str(c) for c in range(spec["num_classes"])]
    return Data(classes, splits["train"], splits["val"], splits["test"])


def _folder(split_dir: Path, classes: list[str]) -> Split:
    pairs = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((split_dir / name).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return Split([str(p) for p, _ in pairs], [label for _, label in pairs])


def _pairs(root: Path, list_file: Path) -> Split:
    pairs = [line.split() for line in list_file.read_text().splitlines() if line.strip()]
    return Split([str(root / image) for image, _ in pairs], [str(root / mask) for _, mask in pairs])


def rgb_image(item: str | np.ndarray) -> Image.Image:
    """An item as an RGB PIL image (gray arrays are replicated to three channels)."""
    image = Image.open(item) if isinstance(item, str) else Image.fromarray(item)
    return image.convert("RGB")


def timm_model(spec: dict, num_classes: int):
    """The timm model with the benchmark's pretrained weights file (timm drops the old head)."""
    import timm

    overlay = {"file": spec["weights"], **spec["preprocessing"]}
    return timm.create_model(spec["arch"], pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes)


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of positive-class scores (Mann-Whitney, ties counted half); None with one class."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(greater / (len(pos) * len(neg))), 6)


def scores(probs: np.ndarray, labels: list[int]) -> dict:
    """Accuracy, and AUC for two classes, of class probabilities (N, K)."""
    y = np.asarray(labels)
    out = {"acc": round(float((probs.argmax(1) == y).mean()), 6)}
    if probs.shape[1] == 2:
        out["auc"] = binary_auc(probs[:, 1], y)
    return out


class Clock:
    """Seconds since the runner finished its imports; records the validation curve of ``metric``
    (``val_acc``; ``val_miou`` for segmentation)."""

    def __init__(self, metric: str = "acc") -> None:
        self.start = time.perf_counter()
        self.curve: list[dict] = []
        self.key = f"val_{metric}"

    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)

    def epoch(self, value: float) -> None:
        self.curve.append({"epoch": len(self.curve) + 1, "t_s": self.seconds(), self.key: round(float(value), 6)})


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the packages that matter for this runner (plus python)."""
    found = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    import torch

    found["torch_build"] = torch.__version__
    return found


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def emit(
    tool: str, spec: dict, clock: Clock, val: dict, test: dict | None, packages: tuple[str, ...], **extra: object
) -> None:
    """Print the result as one JSON line (the harness reads the last line of stdout)."""
    result = {
        "tool": tool,
        "wall_s": clock.seconds(),
        "epochs_run": len(clock.curve),
        "curve": clock.curve,
        "val": val,
        "test": test,
        "versions": versions(*packages),
        "weights_sha256": sha256(spec["weights"]),
        "threads": {"torch": _torch_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        **extra,
    }
    print(json.dumps(result), flush=True)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
