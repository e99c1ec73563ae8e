"""What ``finetune predict`` shares between tasks: its options, where exports are found, and
never writing over a file (the command: ``finetune.commands.predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from finetune.run.errors import FinetuneError

console = Console(stderr=True)  # progress bars and the summary line; results go to files


@dataclass(frozen=True)
class PredictOptions:
    """How to predict and where to write: the command's arguments, for ``Task.predict_files``."""

    out: str | None = None  # None: the task's default (predictions.csv, predicted_masks/)
    overwrite: bool = False
    topk: int = 5
    batch_size: int = 32
    skipped: tuple[tuple[str, str], ...] = ()  # (input, why) left out as unreadable (on_error=skip)


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """FinetuneError naming the first of ``paths`` (files that exist) unless ``overwrite``."""
    if paths and not overwrite:
        raise FinetuneError(f"{paths[0]} already exists; pass overwrite=true to replace it (or out=<another place>)")


def resolve_export(path: str | Path) -> Path:
    """An export file or folder export (``timm/``) as given; in a folder of exports (or a run
    directory's exports/) the first of head.safetensors, model.safetensors, model.onnx,
    model.torchscript.pt, model.pt2, timm/."""
    from finetune.export.registry import FORMATS

    path = Path(path).expanduser()
    if path.is_file() or any(spec.folder and spec.metadata_file(path).is_file() for spec in FORMATS.values()):
        return path
    folder = path / "exports" if (path / "exports").is_dir() else path
    for spec in FORMATS.values():
        candidate = folder / spec.filename
        if candidate.is_file() or (spec.folder and spec.metadata_file(candidate).is_file()):
            return candidate
    raise FinetuneError(
        f"no export in {path}: expected one of {', '.join(f.filename for f in FORMATS.values())} "
        "(make one with finetune export run=<run dir>)"
    )
