"""The cleaned label file of ``finetune inspect … out=clean.csv``: ``path,label,split`` (a ``dataset=csv``
file) without exact duplicates (one copy kept, the earliest split's), without the val/test members of
near-duplicate groups that leak across splits. Images flagged as likely label issues stay (the detector is often
wrong: they are listed in inspect.html/json) unless ``drop_label_issues=true``, which leaves out the train split's
only: val and test keep every image, hard ones included. The user's files are never touched: the CSV must be new
and outside the data."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from finetune.data.inspection.duplicates import Group
from finetune.data.inspection.items import Item
from finetune.run.artifacts import atomic_path
from finetune.run.errors import FinetuneError

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def check_out(out: str, data_folders: Iterable[Path]) -> Path:
    """``out`` as the new file to write; one line if it exists, is not a .csv or lies inside a data folder."""
    path = Path(out).expanduser()
    if path.suffix.lower() != ".csv":
        raise FinetuneError(f"out={out}: the cleaned label file is a CSV; name it e.g. out=clean.csv")
    if path.exists():
        raise FinetuneError(f"out={out} exists: inspect never overwrites a file; choose a new name")
    check_outside(out, "out", data_folders)
    return path


def check_outside(path: str, key: str, data_folders: Iterable[Path]) -> None:
    """One line when ``key=path`` lies inside one of the ``data_folders``: inspect never writes into the data."""
    where = Path(path).expanduser().resolve()
    for folder in data_folders:
        if where.is_relative_to(folder.resolve()):
            raise FinetuneError(
                f"{key}={path} is inside the data folder {folder}: inspect never writes into your data; "
                "choose a path outside it"
            )


def check_writable(items: Sequence[Item], out: str, kind: str) -> Path:
    """The folder holding every image (the CSV's ``dataset.root``); one line when the images are not files
    or carry no per-image label."""
    if not items or any(item.path is None for item in items):
        raise FinetuneError(
            f"out={out}: dataset.kind={kind} keeps its images in arrays or a pack, not files a label file can "
            "name; drop out= (inspect.json lists the flagged images by split and index)"
        )
    if any(item.target is None for item in items):
        raise FinetuneError(f"out={out}: dataset.kind={kind} has no per-image label to write; drop out=")
    return Path(os.path.commonpath([str(item.path.resolve().parent) for item in items]))


def dropped(
    items: Sequence[Item], exact: Sequence[Group], near: Sequence[Group], issues: Iterable[int]
) -> dict[int, str]:
    """Item index -> why it is left out of the cleaned file; of the label ``issues``, those in train only."""
    reasons: dict[int, str] = {}

    def order(k: int) -> tuple[int, int]:
        return SPLIT_ORDER.get(items[k].split, 3), k

    for group in exact:
        keep = min(group.members, key=order)
        reasons.update({k: f"exact duplicate of {items[keep].name}" for k in group.members if k != keep})
    for group in near:
        if group.cross_split:
            first = min(SPLIT_ORDER.get(s, 3) for s in group.splits)
            keep = min(group.members, key=order)
            for k in group.members:
                if SPLIT_ORDER.get(items[k].split, 3) > first:
                    reasons.setdefault(k, f"near duplicate (across splits) of {items[keep].name}")
    for k in issues:
        if items[k].split == "train":
            reasons.setdefault(k, "likely label issue")
    return reasons


def write_clean_csv(path: Path, items: Sequence[Item], class_names: Sequence[str], leave_out: Iterable[int]) -> int:
    """Write ``path,label,split`` rows (absolute paths; multi-label: ``a;b``) for every item not left out;
    the number of rows written."""
    skip = set(leave_out)
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for k, item in enumerate(items):
            if k in skip:
                continue
            names = (
                [class_names[c] for c in item.target] if isinstance(item.target, tuple) else [class_names[item.target]]
            )
            writer.writerow([str(item.path.resolve()), ";".join(names), item.split])
            rows += 1
    return rows
