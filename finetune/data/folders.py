"""Datasets of image files: class folders (``imagefolder``, ``dicom_folder``) and label files
(``csv``). Scanning lists files (finetune.data.files: which are images, which folder links are
followed) and checks every image (finetune.data.images)."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from pathlib import Path

import numpy as np

from finetune.data.configs import CsvConfig, DicomFolderConfig, FolderConfig
from finetune.data.files import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    INPUT_EXTENSIONS,
    FolderWalker,
    is_image,
    says_left_out,
    suffixes,
    why_not_read,
)
from finetune.data.images import check_images
from finetune.data.sources import Samples, Source, assemble_splits, class_counts
from finetune.run.errors import DatasetError, listing, one_line

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def load_imagefolder(config: FolderConfig) -> Source:
    """`root/<class>/*.jpg`, or `root/{train,val|valid,test}/<class>/*.jpg` when `root/train` exists."""
    return _load_class_folders(config, IMAGE_EXTENSIONS)


def load_dicom_folder(config: DicomFolderConfig) -> Source:
    """`root/<class>/*.dcm` (or with train/val/test folders), like imagefolder; each file is one
    image (multi-frame files: the middle frame) read through its modality and VOI LUTs."""
    from finetune.data.dicom import require_pydicom

    require_pydicom()
    return _load_class_folders(config, DICOM_EXTENSIONS)


def _load_class_folders(config: FolderConfig, extensions: frozenset[str]) -> Source:
    root = _existing_dir(config.root, "dataset.root")
    folders = _split_folders(root)
    train_dir = folders["train"]
    walker = FolderWalker(root, config.allow_outside_root, "dataset.allow_outside_root=true follows it")
    class_names = sort_class_names([d.name for d in walker.subfolders(train_dir)])
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
        for class_dir in walker.subfolders(folder):
            if class_dir.name not in index:
                raise DatasetError(
                    f"class folder {class_dir} has no matching folder in {train_dir}; every class needs "
                    f"training images (found classes there: {class_names})"
                )
            files = walker.files(class_dir, extensions)
            if not files and split == "train":
                raise DatasetError(
                    f"class folder {class_dir} holds no images ({', '.join(sorted(extensions))}); "
                    "add images or remove the folder"
                )
            paths += files
            labels += [index[class_dir.name]] * len(files)
        parts[split] = (paths, labels)
    walker.warn_skipped()
    return _file_source(config, class_names, parts, where=str(root))


def load_csv(config: CsvConfig) -> Source:
    """A CSV with columns path,label[,split]; paths relative to dataset.root or the CSV's folder."""
    if config.csv is None:
        raise DatasetError("dataset.csv is not set: pass dataset.csv=/path/to/labels.csv (columns path,label[,split])")
    csv_path = Path(config.csv).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"dataset.csv={config.csv} is not a file (resolved to {csv_path.resolve()})")
    base = _existing_dir(config.root, "dataset.root") if config.root else csv_path.parent
    rows = _read_csv_rows(csv_path, config.multilabel)
    rows, not_images = _image_rows(csv_path, rows, config.on_error)
    located = _locate_rows(csv_path, rows, base, config)
    class_names = sort_class_names({name for (_, _, names, _), _ in located for name in names})
    index = {name: i for i, name in enumerate(class_names)}
    problems: list[str] = []
    parts: dict[str, tuple[list[Path], list]] = {}
    for (line, raw_path, names, split), path in located:
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
            + listing(problems)
        )
    if "train" not in parts:
        raise DatasetError(
            f"{csv_path}: no rows with split 'train'; mark the training rows split=train, "
            "or drop the split column to split the rows automatically"
        )
    return _file_source(config, class_names, parts, where=str(csv_path), skipped=not_images)


def _image_rows(csv_path: Path, rows: list, on_error: str) -> tuple[list, int]:
    """The rows naming image files (finetune.data.files: the same suffixes as every route) and how many
    others were left out; others are refused (dataset.on_error=raise) or left out with a warning (=skip)."""
    kept = [row for row in rows if is_image(Path(row[1]))]
    others = [
        f"line {line}: {raw_path!r} ({why_not_read(Path(raw_path))})"
        for line, raw_path, *_ in rows
        if not is_image(Path(raw_path))
    ]
    if others and on_error == "raise":
        raise DatasetError(
            f"{csv_path}: {len(others)} row(s) name files that are not images finetune reads ({one_line(others)}); "
            f"to include one, convert it to one of {suffixes(INPUT_EXTENSIONS)} and point its row at the new file; "
            "or remove the rows, or set dataset.on_error=skip to leave them out (as an image folder does)"
        )
    if others and says_left_out():
        log.warning(
            "%s: left out %d row(s) naming files that are not images finetune reads (dataset.on_error=skip): %s; "
            "to include one, convert it to one of %s",
            csv_path,
            len(others),
            one_line(others),
            suffixes(INPUT_EXTENSIONS),
        )
    return kept, len(others)


def _locate_rows(csv_path: Path, rows: list, base: Path, config: CsvConfig) -> list[tuple[tuple, Path]]:
    """(row, path) per row: paths that leave ``base`` are refused unless dataset.allow_outside_root;
    a path listed twice is refused (dataset.on_duplicate=error) or kept once (=first, counted)."""
    located, outside, first_line, repeats = [], [], {}, []
    inside = os.path.normpath(os.path.abspath(base))
    for row in rows:
        line, raw_path = row[0], row[1]
        path = Path(raw_path).expanduser()
        path = Path(os.path.normpath(os.path.abspath(path if path.is_absolute() else base / path)))
        if os.path.commonpath([inside, str(path)]) != inside:
            outside.append(f"line {line}: {raw_path!r}")
        if path in first_line:
            repeats.append(f"line {line} repeats line {first_line[path]} ({raw_path!r})")
            continue
        first_line[path] = line
        located.append((row, path))
    if outside and not config.allow_outside_root:
        raise DatasetError(
            f"{csv_path}: {len(outside)} path(s) lead outside {inside} ({one_line(outside)}); set "
            "dataset.root to a folder that holds every image, or dataset.allow_outside_root=true to allow them"
        )
    if repeats and config.on_duplicate == "error":
        raise DatasetError(
            f"{csv_path}: {len(repeats)} row(s) list an image already listed ({one_line(repeats)}); remove "
            "the repeated rows, or set dataset.on_duplicate=first to keep the first row of each image"
        )
    if repeats:
        log.warning(
            "%s: dropped %d repeated row(s) (dataset.on_duplicate=first): %s",
            csv_path,
            len(repeats),
            one_line(repeats),
        )
    return located


def _csv_text(csv_path: Path) -> str:
    """The CSV's text (UTF-8, with or without a byte-order mark); one clear error otherwise."""
    data = csv_path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = bom + err.start
        line = data.count(b"\n", 0, offset) + 1
        raise DatasetError(
            f"{csv_path} is not UTF-8 text: byte 0x{data[offset]:02x} at line {line} (byte {offset} of the "
            f"file) is {err.reason}; re-save the file as UTF-8 (spreadsheets: 'CSV UTF-8'; or "
            f"iconv -f latin1 -t utf-8 {csv_path.name} > {csv_path.stem}-utf8.csv)"
        ) from None


def _read_csv_rows(csv_path: Path, multilabel: bool) -> list[tuple[int, str, list[str], str]]:
    """(line, path, label names, split) per data row; bad rows raise, listing all of them."""
    with io.StringIO(_csv_text(csv_path), newline="") as f:
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
        raise DatasetError(f"{csv_path}: {len(problems)} bad row(s):\n  " + listing(problems))
    if not rows:
        raise DatasetError(f"{csv_path} has no data rows")
    return rows


def _file_source(
    config: FolderConfig,
    class_names: list[str],
    parts: dict[str, tuple[list[Path], list]],
    where: str,
    skipped: int = 0,
) -> Source:
    """Check the images of every split, drop unreadable ones, assemble and validate the splits
    (``skipped``: files already left out, counted with the unreadable ones)."""
    multilabel, window = getattr(config, "multilabel", False), getattr(config, "window", None)
    if len(class_names) < 2:
        raise DatasetError(
            f"found {len(class_names)} class(es) {class_names} in {where}; classification needs at least 2"
        )
    all_paths = list(dict.fromkeys(p for paths, _ in parts.values() for p in paths))
    channels = check_images(all_paths, config.on_error)
    samples = {}
    for split, (paths, targets) in parts.items():
        keep = [i for i, p in enumerate(paths) if p in channels]
        kept_targets = _targets([targets[i] for i in keep], multilabel, len(class_names))
        samples[split] = Samples([paths[i] for i in keep], kept_targets, window)
    _check_class_coverage(samples, class_names, where)
    splits = assemble_splits(samples, config, multilabel)
    image_channels = 1 if all(c == 1 for c in channels.values()) else 3
    return Source(class_names, splits, image_channels, skipped=skipped + len(all_paths) - len(channels))


def _targets(targets: list, multilabel: bool, num_classes: int) -> np.ndarray:
    if not multilabel:
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
        raise DatasetError(f"{key}={value} {state} (resolved to {path.resolve()}); pass {key}=/path/to/your/images")
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


def sort_class_names(names: set[str] | list[str]) -> list[str]:
    """Numeric order when every name is an integer ("2" before "10"), else alphabetical."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)
