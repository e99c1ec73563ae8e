"""Predict with any export: head / full safetensors, ONNX (onnxruntime) or TorchScript.

    python -m finetune.export.predict export=<file or folder> inputs=<files, folders or globs> [topk=5]
                               [out=predictions.csv|.json] [overwrite=true] [batch_size=32]
                               [weights=<backbone weights file, for a head export>]

``export`` may be an export file, a folder of exports or a run directory (its ``exports/``).
A segmentation export writes one mask per image instead: ``out`` is a folder (default
./predicted_masks) of ``<image stem>_mask.png`` palette PNGs whose pixel values are class indices,
predicted by sliding the export's recorded tile over the full image.
Images get the preprocessing recorded in the export's metadata. Probabilities are softmax over
classes, or a sigmoid per class for a multi-label model ("prediction" then lists every class with
p >= its threshold). Binary and multi-label decisions use the threshold the run was tested with
(``threshold=tune`` picks it on the validation split; default 0.5), recorded in the export. Output goes to ``out`` (default ./predictions.csv), never over an existing file unless
overwrite=true.
"""
from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from finetune.artifacts import atomic_path, write_json
from finetune.data.datasets import read_image
from finetune.errors import FinetuneError
from finetune.cli import parse_args, parse_flag, positive_int, run_command
from finetune.export.formats import FORMATS, LoadedExport, find_images, load_export, preprocess

MULTILABEL_THRESHOLD = 0.5
OUTPUT_SUFFIXES = (".csv", ".json")
console = Console(stderr=True)


@dataclass(frozen=True)
class Prediction:
    """One image: its prediction and the top-k (label, probability) pairs, best first."""

    path: str
    prediction: str
    top: list[tuple[str, float]]


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax over classes, or a sigmoid per class for a multi-label model."""
    logits = logits.astype(np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _predictions(paths: Sequence[Path], probs: np.ndarray, names: list[str], topk: int,
                 multilabel: bool, threshold: float | list[float] | None = None) -> list[Prediction]:
    rows = []
    for path, p in zip(paths, probs):
        order = np.argsort(-p, kind="stable")[:topk]
        if multilabel:
            cut = MULTILABEL_THRESHOLD if threshold is None else np.asarray(threshold)
            label = ";".join(names[i] for i in np.flatnonzero(p >= cut))
        elif threshold is not None and len(names) == 2:  # binary: p(class 1) against the run's threshold
            label = names[int(p[1] >= threshold)]
        else:
            label = names[order[0]]
        rows.append(Prediction(str(path), label, [(names[i], float(p[i])) for i in order]))
    return rows


def predict(exported: LoadedExport, paths: Sequence[Path], topk: int = 5,
            batch_size: int = 32) -> list[Prediction]:
    """Top-k predictions for image files, in batches, with a progress bar."""
    if topk < 1 or batch_size < 1:
        raise FinetuneError(f"topk={topk} and batch_size={batch_size} must be >= 1")
    topk = min(topk, len(exported.class_names))
    channels = exported.preprocessing.in_chans
    rows: list[Prediction] = []
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("predicting", total=len(paths))
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            logits = exported.logits([read_image(p, channels) for p in batch])
            rows += _predictions(batch, probabilities(logits, exported.multilabel), exported.class_names,
                                 topk, exported.multilabel, exported.threshold)
            progress.advance(task, len(batch))
    return rows


def csv_header(topk: int) -> list[str]:
    """path, prediction, label_1, prob_1, …, label_k, prob_k."""
    return ["path", "prediction", *(f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("label", "prob"))]


def write_predictions(rows: Sequence[Prediction], out: Path, exported: LoadedExport) -> Path:
    """CSV (one row per image) or JSON (with the export's task and classes), written atomically."""
    if out.suffix == ".json":
        return write_json(out, {
            "export": str(exported.path), "multilabel": exported.multilabel,
            "predictions": [{"path": r.path, "prediction": r.prediction,
                             "top": [{"label": label, "probability": p} for label, p in r.top]} for r in rows],
        })
    topk = max((len(r.top) for r in rows), default=0)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(topk))
        for r in rows:
            writer.writerow([r.path, r.prediction, *(v for label, p in r.top for v in (label, f"{p:.6f}"))])
    return out


def predict_masks(exported: LoadedExport, paths: Sequence[Path], out_dir: Path, overwrite: bool = False) -> list[Path]:
    """Class-index masks of full-size images (sliding window over the export), as palette PNGs."""
    from finetune.report.plots import class_colors, save_mask
    from finetune.tasks.segmentation.module import full_image_logits

    targets = [out_dir / f"{p.stem}_mask.png" for p in paths]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise FinetuneError(f"several inputs would write {clashes[0]}: predict images with distinct names, "
                            "or one folder at a time")
    _refuse_existing([t for t in targets if t.exists()], overwrite)
    tile, overlap, scale = (exported.metadata["segmentation"][k] for k in ("tile", "tile_overlap", "scale"))
    colors = class_colors(len(exported.class_names))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(exported.forward(x.numpy()))

    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("segmenting", total=len(paths))
        for path, target in zip(paths, targets):
            image = read_image(path, exported.preprocessing.in_chans)
            batch = torch.from_numpy(preprocess([image], exported.preprocessing, full_size=True))
            mask = full_image_logits(forward, batch, tile, overlap, scale).argmax(dim=1)[0].numpy()
            save_mask(mask.astype(np.uint8), colors, target)
            progress.advance(task)
    return targets


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    if paths and not overwrite:
        raise FinetuneError(f"{paths[0]} already exists; pass overwrite=true to replace it (or out=<another place>)")


def resolve_export(path: str | Path) -> Path:
    """An export file as given; in a folder (or a run directory's exports/) the first of
    head.safetensors, model.safetensors, model.onnx, model.torchscript.pt."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    folder = path / "exports" if (path / "exports").is_dir() else path
    for spec in FORMATS.values():
        if (folder / spec.filename).is_file():
            return folder / spec.filename
    raise FinetuneError(f"no export in {path}: expected one of {', '.join(f.filename for f in FORMATS.values())} "
                        "(make one with python -m finetune.export.formats run=<run dir>)")


def output_path(out: str | None, overwrite: bool) -> Path:
    """Where predictions go (default ./predictions.csv); refuses an existing file unless ``overwrite``."""
    path = Path(out or "predictions.csv").expanduser()
    if path.suffix not in OUTPUT_SUFFIXES:
        raise FinetuneError(f"out={path}: use a .csv or .json file name")
    _refuse_existing([path] if path.exists() else [], overwrite)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finetune.export.predict``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_predict_command, __doc__, argv)


def _predict_command(argv: list[str]) -> None:
    args = parse_args(argv, {"export": None, "inputs": None, "topk": "5", "out": None, "overwrite": "false",
                             "batch_size": "32", "weights": None}, ["export", "inputs"], "finetune.export.predict")
    overwrite = parse_flag(args["overwrite"], "overwrite")
    paths = find_images(args["inputs"])
    exported = load_export(resolve_export(args["export"]), args["weights"])
    if exported.metadata["task"] == "segmentation":
        out_dir = Path(args["out"] or "predicted_masks").expanduser()
        masks = predict_masks(exported, paths, out_dir, overwrite)
        console.print(f"{len(masks)} mask(s) from {exported.path.name} → [bold]{out_dir}[/bold]")
        return
    out = output_path(args["out"], overwrite)
    rows = predict(exported, paths, positive_int(args["topk"], "topk"),
                   positive_int(args["batch_size"], "batch_size"))
    write_predictions(rows, out, exported)
    console.print(f"{len(rows)} prediction(s) from {exported.path.name} → [bold]{out}[/bold]")


if __name__ == "__main__":
    sys.exit(main())
