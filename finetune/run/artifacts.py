"""Every file we write goes through here: atomically (temp file + rename)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# What atomic_path / atomic_dir stage a write in: mkstemp / mkdtemp(prefix=".<name>.", suffix=".tmp"),
# whose random part is 8 of [a-z0-9_].
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and safetensors) make 0600: give what open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; it replaces ``path`` (a folder or a file)
    only if the block succeeds, so a folder export appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        for item in (tmp, *tmp.rglob("*")):  # mkdtemp (and safetensors) make 0700 / 0600
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
        if not path.exists():
            os.rename(tmp, path)
        else:  # overwrite: move the old one aside, put the new one in place, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.rename(tmp, path)
            except OSError:
                os.replace(old / path.name, path)  # (if this fails too, the old one stays in ``old``)
                os.rmdir(old)
                raise
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(folder: Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files and folders (``.<name>.<random>.tmp``) of writes a kill interrupted
    (between the write and the rename) in ``folder``, and below it when ``recursive``; return them. Only
    while no other process can be writing there: the caller holds the folder's lock."""
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    stray = sorted(p for p in found if TEMPORARY_NAME.fullmatch(p.name))
    outermost = [p for p in stray if not any(parent in stray for parent in p.parents)]
    for path in outermost:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return outermost


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_text(data: Any) -> str:
    """The JSON text finetune writes: indented, sorted keys."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, sorted keys) atomically."""
    return write_text(path, json_text(data))
