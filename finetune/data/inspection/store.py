"""Where ``finetune inspect`` keeps what it found about a dataset, so that training and ``finetune advise``
can warn (one line) when the data they are given leaks across its splits.

The findings are filed under a fingerprint of the splits: per split, each file's resolved path, size and
modification time (no image is read: cheap enough for every training start), the bytes of in-memory
arrays (MedMNIST, digits), or a pack's stream, sample indices and the content hash of its index file (a pack
written again at the same uri is new data). A file renamed, edited or moved to
another split changes the fingerprint, and the old findings no longer apply. The store is the folder
``$FINETUNE_INSPECT_CACHE``, by default ``~/.cache/finetune/inspect``: one ``<fingerprint>.json`` per
inspected dataset. Training looks only when that folder holds a record, so it costs nothing otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from finetune.data.inspection.items import Split, distinct_splits, inspectable
from finetune.data.sources import Samples
from finetune.run.artifacts import write_json
from finetune.run.errors import DatasetError

ENV = "FINETUNE_INSPECT_CACHE"


def store_dir() -> Path:
    """``$FINETUNE_INSPECT_CACHE`` if set, else ``~/.cache/finetune/inspect``."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "finetune" / "inspect"


@contextmanager
def own_store(folder: Path) -> Iterator[Path]:
    """Inspect files (and training looks for) findings in ``folder`` inside the block, not in the user's store:
    what a benchmark or a test inspects (a temporary page) never reaches the user's training. ``$ENV`` is put
    back after it."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous


def fingerprint(splits: Mapping[str, Split]) -> str:
    """A hash of which images each split holds (file identity by path, size and mtime; arrays by content)."""
    digest = hashlib.sha256()
    for split, part in distinct_splits(splits).items():
        digest.update(f"\0split {split} {len(part)}\0".encode())
        if isinstance(part, Samples):
            _update_samples(digest, part)
        else:
            for pair in part:
                _update_file(digest, pair.image)
                _update_file(digest, pair.mask)
    return digest.hexdigest()[:32]


def _update_samples(digest, samples: Samples) -> None:
    images = samples.images
    if isinstance(images, np.ndarray):
        stream = getattr(samples, "stream", None)
        digest.update(repr((images.shape, str(images.dtype), stream)).encode())
        digest.update(np.ascontiguousarray(images).data)
        if stream is not None:
            _update_pack_index(digest, stream.uri)
    else:
        for path in images:
            _update_file(digest, Path(path))


def _update_pack_index(digest, split_uri: str) -> None:
    """The content hash of the index of the pack whose split lies at ``split_uri``."""
    from finetune.data.streaming import read_index

    index = read_index(split_uri.rstrip("/").rsplit("/", 1)[0])
    digest.update(hashlib.sha256(json.dumps(index, sort_keys=True).encode()).digest())


def _update_file(digest, path: Path) -> None:
    stat = path.stat()
    digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())


def save_findings(key: str, record: dict) -> Path:
    """File ``record`` (what inspect found: its ``leaks`` summary first) under the fingerprint ``key``."""
    return write_json(store_dir() / f"{key}.json", record)


def load_findings(key: str) -> dict | None:
    """The record inspect filed under ``key``, or None."""
    path = store_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def leak_warning(splits: Mapping[str, Split]) -> str | None:
    """One line when ``finetune inspect`` found images shared across these splits (exact copies, or near copies
    both near detectors agree on); None when it found none, never inspected them, or nothing was ever
    inspected (then nothing is hashed)."""
    folder = store_dir()
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return None
    if not all(inspectable(part) for part in splits.values()):  # another task's own data: inspect never read it
        return None
    try:
        record = load_findings(fingerprint(splits))
    except (OSError, DatasetError):  # a file or pack gone since the data was read: training says so itself
        return None
    leaks = (record or {}).get("leaks") or {}
    if not leaks.get("groups"):
        return None
    kinds = ", ".join(f"{n} {kind}" for kind, n in leaks["by_detector"].items() if n)
    page, fix = record.get("report"), _leak_fix(splits)
    if page and Path(page).exists():
        fix = f"see {page} and {fix}"
    else:  # a temporary report folder removed since
        fix += " (its page is gone: run finetune inspect again to see it)"
    return (
        f"finetune inspect found {leaks['groups']} group(s) of duplicate images across the splits of this data "
        f"(groups by detector: {kinds}; e.g. {leaks['example']}): val/test scores will be optimistic; {fix}"
    )


def _leak_fix(splits: Mapping[str, Split]) -> str:
    """What to do about the leak: a cleaned label file for image files; arrays and packs cannot be named by one."""
    if any(isinstance(part, Samples) and isinstance(part.images, np.ndarray) for part in splits.values()):
        return (
            "remove the copies from the source arrays or pack (inspect.json lists them by split and index), "
            "or re-split the data"
        )
    return "write a cleaned label file with finetune inspect <same dataset overrides> out=clean.csv"
