"""Writing exports of a model bundle or a run directory: atomically (a file, or a whole folder),
never over an existing one unless asked, and kept only when the export passes the parity gate."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from finetune.data.images import check_image
from finetune.export.bundle import ModelBundle
from finetune.export.loading import find_images
from finetune.export.merging import merged_bundle, needs_merge
from finetune.export.parity import PARITY_IMAGES, REFERENCE, Parity, check_parity, run_pipeline, validation_images
from finetune.export.registry import FORMATS, sidecar_path
from finetune.models.freezing import FineTuneModel
from finetune.run.artifacts import atomic_dir, atomic_path
from finetune.run.errors import FinetuneError
from finetune.run.records import find_checkpoint
from finetune.run.task import Task

REFERENCE_NAME = "preprocess.py"  # next to every export


@dataclass(frozen=True)
class ExportResult:
    """A written export that passed its parity check."""

    format: str
    path: Path
    bytes: int
    parity: Parity


def _refuse_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FinetuneError(
            f"{existing[0]} already exists; pass overwrite=true to replace it (or out=<another folder>)"
        )


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def export(
    bundle: ModelBundle, fmt: str, out_dir: str | Path, images: Sequence[np.ndarray], overwrite: bool = False
) -> ExportResult:
    """Write one export into ``out_dir`` atomically, kept only if it passes the parity check. Formats
    other than ``head`` get the adapters merged into plain weights, and the parity check compares them
    with that merged model."""
    spec = FORMATS.get(fmt)
    out = Path(out_dir)
    path = out / spec.filename
    spec.check(bundle)
    _refuse_overwrite(spec.outputs(path), overwrite)
    _same_reference(out / REFERENCE_NAME, overwrite)
    if images and not spec.adapters and needs_merge(bundle):
        bundle = merged_bundle(bundle, run_pipeline(bundle, images))
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(path) if spec.folder else atomic_path(path))
        metadata = spec.write(bundle, tmp)
        sidecar = None
        if spec.sidecar:  # a folder holds its own; a file's sidecar is written atomically beside it
            sidecar = spec.metadata_file(tmp) if spec.folder else stack.enter_context(atomic_path(sidecar_path(path)))
            sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        reference = out / REFERENCE_NAME
        if not _same_reference(reference, overwrite):  # written with the export, kept only with it
            reference = stack.enter_context(atomic_path(reference))
            reference.write_text(REFERENCE.read_text())
        if spec.folder:  # a folder travels alone (e.g. to the Hub): its own copy
            (tmp / REFERENCE_NAME).write_text(REFERENCE.read_text())
        parity = check_parity(bundle, tmp, images, fmt=spec.name, sidecar=sidecar, reference=reference)
    return ExportResult(spec.name, path, _size(path), parity)


def _same_reference(path: Path, overwrite: bool) -> bool:
    """Whether ``path`` (``preprocess.py`` beside the exports) already holds this finetune's reference
    preprocessing; other content is refused unless ``overwrite``."""
    if path.is_file() and path.read_text() == REFERENCE.read_text():
        return True
    _refuse_overwrite([path], overwrite)
    return False


def export_run(
    run: str | Path,
    task: Task,
    formats: Sequence[str] = ("head",),
    out: str | Path | None = None,
    overwrite: bool = False,
    images: str | None = None,
    weights: str | None = None,
    parity_images: Sequence[np.ndarray] | None = None,
    model: FineTuneModel | None = None,
) -> list[ExportResult]:
    """Export a run directory (or checkpoint) of ``task`` in each format; parity on its validation images
    (``parity_images`` when the caller already holds them) unless ``images`` names other files. ``model``:
    the run's trained model in memory (on the CPU), exported instead of its checkpoint (``checkpoints.keep=none``)."""
    specs = [FORMATS.get(name) for name in dict.fromkeys(formats)]
    run_dir = Path(run) if model is not None else find_checkpoint(run)[0]
    out_dir = Path(out).expanduser() if out else run_dir / "exports"
    for spec in specs:
        _refuse_overwrite(spec.outputs(out_dir / spec.filename), overwrite)
    _same_reference(out_dir / REFERENCE_NAME, overwrite)
    bundle = ModelBundle.from_run(run, task, weights, model)
    for spec in specs:  # e.g. format=timm of an MLP head: refused before any format is written
        spec.check(bundle)
    if images:
        files = find_images(images)[:PARITY_IMAGES]
        for path in files:
            check_image(path)
        parity_images = [bundle.task.read_image(bundle.task_record, path, bundle.image_channels) for path in files]
    elif parity_images is None:
        parity_images = validation_images(bundle.cfg, task)
    return [export(bundle, spec.name, out_dir, parity_images, overwrite) for spec in specs]


def _readable(size: int) -> str:
    """``size`` bytes as ``12.3 KiB`` / ``45.6 MiB`` / ``1.2 GiB``."""
    for unit in ("KiB", "MiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} GiB"


def print_results(results: Sequence[ExportResult], console: Console) -> None:
    """The exports written, their size and parity."""
    table = Table(
        title="exports (parity on real images: max |Δlogit|, top-1 agreement)", title_justify="left"
    )  # within 80 columns: a long file name folds, nothing is cut
    for column in ("format", "file", "size", "|Δlogit|", "top-1"):
        right = column not in ("format", "file")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "file", overflow="fold")
    for r in results:
        table.add_row(
            r.format,
            r.path.name,
            _readable(r.bytes),
            f"{r.parity.max_abs_diff:.2g}",
            f"{r.parity.top1_agreement:.0%} of {r.parity.images}",
        )
    console.print(table)
    if results:
        console.print(f"written to [bold]{results[0].path.parent}[/bold]")
