"""``finetune inspect`` validated: known duplicates, cross-split copies, near duplicates and label flips are
planted in copies of hymenoptera (files) and BreastMNIST (arrays), and each detector's precision and recall
on them is reported; then inspect runs on every dataset in ../shared/data and what it finds is recorded.

    python -m benchmarks.inspect_validation [--quick] [--only PIECE,...]   # -> benchmarks/results/inspect.json

Planted, per dataset: exact copies inside train, exact copies of train images in val/test (leaks), near
copies in val/test (resized to 80 % and re-encoded as JPEG quality 70; arrays: +-1 grey-level noise and a one
pixel shift), and label flips in train. Precision counts a found group or flag as right when it involves a
planted image; what inspect finds in the untouched images (the data's own duplicates and label errors) counts
against it, so precision is a lower bound. Never writes into ../shared/data: the copies live in a temporary
folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data.inspection.store import own_store

from .common import CAMVID, HYMENOPTERA, MEDMNIST, RESULTS, SHARED_DATA, write_result

# features: efficientnet_lite0 (pip ImageNet weights) at 128 px for photos, 64 px for 28 px MedMNIST images
PHOTO_SIZE, MEDMNIST_SIZE = 128, 64


@dataclass
class Planted:
    """What was planted, as item keys (split, name): pairs of copies, and flipped images."""

    exact: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    near: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    flips: list[tuple[str, str]] = field(default_factory=list)


def _near_copy(source: Path, target: Path) -> None:
    with Image.open(source) as picture:
        picture = picture.convert("RGB")
        smaller = picture.resize((round(picture.width * 0.8), round(picture.height * 0.8)), Image.Resampling.LANCZOS)
        smaller.save(target.with_suffix(".jpg"), quality=70)


def plant_folder(
    source: Path, out: Path, per_class: dict[str, int] | None, counts: dict[str, int], seed: int = 0
) -> Planted:
    """Copy an imagefolder dataset (train/ and val/ with a folder per class; ``per_class``: at most that many
    images per split and class, None: all) into ``out`` and plant ``counts`` = {"exact_within", "exact_cross",
    "near_cross", "flips"} copies and flips among its train images. Keys are (split, file name)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for class_dir in sorted((source / split).iterdir()):
            files = sorted(class_dir.iterdir())
            if per_class and split in per_class:
                files = files[: per_class[split]]
            (out / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, out / split / class_dir.name / f.name)
    train = sorted(p for p in (out / "train").glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chosen = iter(rng.permutation(len(train)).tolist())
    classes = sorted(p.name for p in (out / "train").iterdir())
    planted = Planted()
    for kind, n in counts.items():
        for _ in range(n):
            original = train[next(chosen)]
            label = original.parent.name
            if kind == "exact_within":
                copy = original.with_name(f"dup_{original.name}")
                shutil.copyfile(original, copy)
                planted.exact.append((("train", original.name), ("train", copy.name)))
            elif kind == "exact_cross":
                copy = out / "val" / label / f"leak_{original.name}"
                shutil.copyfile(original, copy)
                planted.exact.append((("train", original.name), ("val", copy.name)))
            elif kind == "near_cross":
                copy = (out / "val" / label / f"near_{original.stem}").with_suffix(".jpg")
                _near_copy(original, copy)
                planted.near.append((("train", original.name), ("val", copy.name)))
            else:
                other = classes[(classes.index(label) + 1) % len(classes)]
                flipped = out / "train" / other / f"flip_{original.name}"
                original.rename(flipped)
                planted.flips.append(("train", flipped.name))
    return planted


def plant_npz(source: Path, out: Path, counts: dict[str, int], seed: int = 0) -> Planted:
    """A MedMNIST npz copy with planted copies (appended to the target split) and flips (binary or
    multi-class, 1-D or (N, 1) labels). Keys are (split, "split#index") as inspect names array images."""
    rng = np.random.default_rng(seed)
    with np.load(source) as npz:
        data = {k: npz[k] for k in npz.files}
    labels = {
        s: data[f"{s}_labels"].reshape(len(data[f"{s}_labels"]), -1)[:, 0].copy() for s in ("train", "val", "test")
    }
    images = {s: data[f"{s}_images"] for s in ("train", "val", "test")}
    num_classes = int(max(labels["train"].max(), labels["val"].max(), labels["test"].max())) + 1
    order = iter(rng.permutation(len(images["train"])).tolist())
    extra: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "val": [], "test": []}
    planted = Planted()

    def add(split: str, image: np.ndarray, label: int) -> tuple[str, str]:
        index = len(images[split]) + len(extra[split])
        extra[split].append((image, label))
        return split, f"{split}#{index}"

    for kind, n in counts.items():
        for j in range(n):
            i = next(order)
            image, label, key = images["train"][i], int(labels["train"][i]), ("train", f"train#{i}")
            if kind == "exact_within":
                planted.exact.append((key, add("train", image, label)))
            elif kind == "exact_cross":
                planted.exact.append((key, add("val" if j % 2 else "test", image, label)))
            elif kind == "near_cross":
                noisy = np.clip(image.astype(np.int16) + rng.integers(-1, 2, image.shape), 0, 255).astype(np.uint8)
                planted.near.append((key, add("test" if j % 2 else "val", np.roll(noisy, 1, axis=1), label)))
            else:
                labels["train"][i] = (label + 1 + int(rng.integers(num_classes - 1))) % num_classes
                planted.flips.append(key)
    for split, rows in extra.items():
        if rows:
            images[split] = np.concatenate([images[split], np.stack([r[0] for r in rows])])
            labels[split] = np.concatenate([labels[split], np.array([r[1] for r in rows], labels[split].dtype)])
        data[f"{split}_images"], data[f"{split}_labels"] = images[split], labels[split][:, None]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **data)
    return planted


KEYS = {"exact": "exact_duplicates", "near_hash": "near_duplicates_hash", "near_features": "near_duplicates_features"}
CONFIRM_GAP = 0.03


def _key(name: str, split: str, by_file: bool) -> tuple[str, str]:
    return split, Path(name).name if by_file else name


def _pairs_found(groups: list[dict], by_file: bool) -> list[set[tuple[str, str]]]:
    return [{_key(n, s, by_file) for n, s in zip(g["names"], g["member_splits"])} for g in groups]


def pixel_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images as 32x32 grey thumbnails, in [0, 1]."""

    def small(x: np.ndarray) -> np.ndarray:
        picture = Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x).convert("L")
        return np.asarray(picture.resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255

    return float(np.abs(small(a) - small(b)).mean())


def reader(npz: Path | None) -> Callable[[str], np.ndarray]:
    """An image by the name inspect gives it: a file path, or ``split#index`` of ``npz``'s arrays."""
    arrays = dict(np.load(npz)) if npz else {}

    def read(name: str) -> np.ndarray:
        if "#" in name:
            split, index = name.split("#")
            return arrays[f"{split}_images"][int(index)]
        with Image.open(name) as picture:
            return np.asarray(picture.convert("RGB"))

    return read


def score(record: dict, planted: Planted, by_file: bool, read: Callable[[str], np.ndarray]) -> dict:
    """Precision / recall per detector on the planted images (see the module docstring); a found group
    without planted images counts as ``confirmed`` when its members differ from the first by at most
    ``CONFIRM_GAP`` (mean absolute difference of 32 px grey thumbnails): the data's own near copies."""
    found = {name: _pairs_found(record[key], by_file) for name, key in KEYS.items()}
    result = {}
    for name, groups in found.items():
        truth = planted.exact if name == "exact" else planted.near
        hit = [any({a, b} <= g for g in groups) for a, b in truth]
        planted_keys = {k for pair in truth for k in pair}
        right = [bool(g & planted_keys) for g in groups]
        unplanted = [g for g, ok in zip(record[KEYS[name]], right) if not ok]
        confirmed = sum(
            all(pixel_gap(read(g["names"][0]), read(other)) <= CONFIRM_GAP for other in g["names"][1:])
            for g in unplanted
        )
        result[name] = {
            "planted": len(truth),
            "found": sum(hit),
            "recall": round(sum(hit) / len(truth), 3) if truth else None,
            "groups": len(groups),
            "precision": round(sum(right) / len(groups), 3) if groups else None,
            "unplanted_groups": len(unplanted),
            "unplanted_confirmed": confirmed,
            "precision_with_confirmed": round((sum(right) + confirmed) / len(groups), 3) if groups else None,
        }
    flagged = {_key(r["name"], r["split"], by_file) for r in record["label_issues"]}
    caught = sum(f in flagged for f in planted.flips)
    result["label_issues"] = {
        "planted": len(planted.flips),
        "found": caught,
        "recall": round(caught / len(planted.flips), 3) if planted.flips else None,
        "flagged": len(flagged),
        "precision": round(caught / len(flagged), 3) if flagged else None,
    }
    return result


def inspect_record(overrides: list[str], report: Path) -> dict:
    """``finetune inspect <overrides> report=<report>`` in this process; its inspect.json."""
    from finetune.commands.inspect import main

    code = main([*overrides, f"report={report}"])
    if code:
        raise SystemExit(f"finetune inspect {' '.join(overrides)} failed ({code})")
    return json.loads((report / "inspect.json").read_text())


COUNTS = {"exact_within": 5, "exact_cross": 5, "near_cross": 5, "flips": 10}
SEGMENTATION = ("camvid_subset", "drive")  # no image_size key: their images are read whole
ALL_DATASETS = {  # what inspect runs on in ../shared/data (name -> overrides)
    "hymenoptera": ["dataset=imagefolder", f"dataset.root={HYMENOPTERA}"],
    "breastmnist": ["dataset=medmnist", "dataset.name=breastmnist", f"dataset.root={MEDMNIST}"],
    "bloodmnist": ["dataset=medmnist", "dataset.name=bloodmnist", f"dataset.root={MEDMNIST}"],
    "pneumoniamnist_reduced": [
        "dataset=medmnist",
        "dataset.name=pneumoniamnist",
        f"dataset.file={MEDMNIST / 'pneumoniamnist_reduced_train.npz'}",
    ],
    "camvid_subset": ["+segmentation=camvid", f"dataset.root={CAMVID}"],
    "drive": ["+segmentation=drive", f"dataset.root={SHARED_DATA / 'segmentation' / 'drive'}"],
}


# BreastMNIST's near copies at looser feature thresholds than inspect's default (0.97): scored on the same
# planted copy (the features are cached, so each is seconds)
NEAR_COSINE_SWEEP = (0.95, 0.9)
PIECES = ("planted_hymenoptera", "planted_breastmnist", *ALL_DATASETS)


def image_size(piece: str) -> int | None:
    """The image size inspect's features see in ``piece``; None where the images are read whole."""
    if piece in SEGMENTATION:
        return None
    medmnist = piece == "planted_breastmnist" or "dataset=medmnist" in ALL_DATASETS.get(piece, [])
    return MEDMNIST_SIZE if medmnist else PHOTO_SIZE


def measure(piece: str, tmp: Path) -> dict:
    """One piece of the result: a planted validation (``planted_<dataset>``) or the survey of one dataset."""
    side = image_size(piece)
    size = [] if side is None else [f"dataset.image_size={side}"]
    if piece == "planted_hymenoptera":
        planted = plant_folder(HYMENOPTERA, tmp / "hymenoptera", None, COUNTS)
        record = inspect_record(["dataset=imagefolder", f"dataset.root={tmp / 'hymenoptera'}", *size], tmp / "r-hym")
        return {"planted": COUNTS, "scores": score(record, planted, True, reader(None))}
    if piece == "planted_breastmnist":
        planted = plant_npz(MEDMNIST / "breastmnist.npz", tmp / "breastmnist.npz", COUNTS)
        overrides = ["dataset=medmnist", "dataset.name=breastmnist", f"dataset.file={tmp / 'breastmnist.npz'}", *size]
        read = reader(tmp / "breastmnist.npz")
        result = {"planted": COUNTS, "scores": score(inspect_record(overrides, tmp / "r-breast"), planted, False, read)}
        for cosine in NEAR_COSINE_SWEEP:
            record = inspect_record([*overrides, f"near_cosine={cosine}"], tmp / f"r-breast-{cosine}")
            result[f"near_features_at_cosine_{cosine}"] = score(record, planted, False, read)["near_features"]
        return result
    return _findings(inspect_record([*ALL_DATASETS[piece], *size], tmp / f"r-{piece}"))


def quick() -> dict:
    """The scores on a 40-image hymenoptera subset with one copy of each kind and three flips."""
    with tempfile.TemporaryDirectory() as tmp, own_store(Path(tmp) / "inspect-cache"):
        counts = {"exact_within": 1, "exact_cross": 1, "near_cross": 1, "flips": 3}
        planted = plant_folder(HYMENOPTERA, Path(tmp) / "hym", {"train": 14, "val": 6}, counts)
        overrides = ["dataset=imagefolder", f"dataset.root={Path(tmp) / 'hym'}", f"dataset.image_size={PHOTO_SIZE}"]
        return score(inspect_record(overrides, Path(tmp) / "r"), planted, True, reader(None))


def measure_piece(piece: str) -> dict:
    """``measure(piece)`` in a temporary folder, inspect filing its findings there (its pages are temporary:
    the user's store must not point training at them), with when, under what load and at which image size."""
    with tempfile.TemporaryDirectory() as tmp, own_store(Path(tmp) / "inspect-cache"):
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        when = {"date": started, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
        return {**measure(piece, Path(tmp)), "measured": {**when, "image_size": image_size(piece)}}


def save_piece(piece: str, measured: dict) -> None:
    """Put one piece into benchmarks/results/inspect.json, read again just before: the pieces another run
    (``--only``) wrote since this one started are kept."""
    path = RESULTS / "inspect.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result = {key: result.get(key, {}) for key in ("validation", "datasets")}
    planted = piece.startswith("planted_")
    result["validation" if planted else "datasets"][piece.removeprefix("planted_")] = measured
    write_result("inspect", {"near_cosine_sweep": NEAR_COSINE_SWEEP, **result}, path.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 40-image hymenoptera subset only")
    parser.add_argument("--only", default=",".join(PIECES), help=f"comma-separated pieces of {', '.join(PIECES)}")
    args = parser.parse_args()
    if args.quick:
        print(json.dumps(quick()))
        return
    pieces = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(pieces) - set(PIECES):
        parser.error(f"--only: unknown piece(s) {sorted(unknown)}; choose from {', '.join(PIECES)}")
    for piece in pieces:  # each piece is written as soon as it is measured: a stopped run keeps the others
        measured = measure_piece(piece)
        save_piece(piece, measured)
        print(piece, json.dumps(measured.get("scores") or measured["counts"]), flush=True)


def _findings(record: dict) -> dict:
    """Counts and a few examples of what inspect found in one dataset."""

    def examples(groups: list[dict]) -> list[list[str]]:
        return [
            [f"{s}:{Path(n).name if '#' not in n else n}" for n, s in zip(g["names"], g["member_splits"])][:3]
            for g in groups[:3]
        ]

    return {
        "counts": {
            "images": record["splits"],
            "sizes": len(record["images"]["sizes"]),
            "modes": record["images"]["modes"],
            "exact_groups": len(record["exact_duplicates"]),
            "exact_cross_split": sum(g["cross_split"] for g in record["exact_duplicates"]),
            "near_hash_groups": len(record["near_duplicates_hash"]),
            "near_hash_cross_split": sum(g["cross_split"] for g in record["near_duplicates_hash"]),
            "near_feature_groups": len(record["near_duplicates_features"]),
            "near_feature_cross_split": sum(g["cross_split"] for g in record["near_duplicates_features"]),
            "label_issues": len(record["label_issues"]),
            "outliers": len(record["outliers"]),
        },
        "class_balance": record["class_balance"],
        "examples": {
            "exact": examples(record["exact_duplicates"]),
            "near_hash": examples(record["near_duplicates_hash"]),
            "near_features": examples(record["near_duplicates_features"]),
            "label_issues": [
                f"{r['split']}:{Path(r['name']).name} given {r['given_label']} -> {r['suggested_label']} "
                f"(p={r['confidence']})"
                for r in record["label_issues"][:3]
            ],
            "outliers": [f"{r['split']}:{Path(r['name']).name} z={r['z']}" for r in record["outliers"][:3]],
        },
        "notes": record["notes"],
        "seconds": record["seconds"],
    }


if __name__ == "__main__":
    main()
