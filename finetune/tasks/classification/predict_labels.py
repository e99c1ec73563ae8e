"""Classification predict: top-k labels and probabilities per image from an export, written as CSV or JSON."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from finetune.data.transforms import FLIP_AXES
from finetune.export.loading import LoadedExport
from finetune.export.predict_io import PredictOptions, console, refuse_existing
from finetune.run.artifacts import atomic_path, write_json
from finetune.run.errors import FinetuneError
from finetune.run.task import Predictions

MULTILABEL_THRESHOLD = 0.5
OUTPUT_SUFFIXES = (".csv", ".json")


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


def decide(
    paths: Sequence[Path | str],
    probs: np.ndarray,
    names: list[str],
    topk: int,
    multilabel: bool,
    threshold: float | list[float] | None = None,
) -> list[Prediction]:
    """The prediction and top-k of each row of ``probs``: argmax, the run's binary threshold on
    p(class 1), or every label with p >= its threshold (multi-label)."""
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


def is_multilabel(exported: LoadedExport) -> bool:
    """Whether the export's run was multi-label (its task record)."""
    return bool(exported.task_record.get("multilabel"))


def tested_logits(exported: LoadedExport, images: Sequence[np.ndarray]) -> np.ndarray:
    """Logits of decoded images as the run's test computed them (``records.tested_decisions``): the mean
    over the image and its test-time flips (``tta``), divided by the calibration ``temperature``."""
    batch, decisions = exported.preprocess(images), exported.metadata.get("training", {})
    flips = [np.ascontiguousarray(np.flip(batch, axis=FLIP_AXES[f])) for f in decisions.get("tta", [])]
    return np.mean([exported.forward(v) for v in (batch, *flips)], axis=0) / float(decisions.get("temperature", 1.0))


def tested_threshold(exported: LoadedExport) -> float | list[float] | None:
    """The decision threshold the run was tested with (binary, multi-label; None: argmax, or 0.5 per label)."""
    return exported.metadata.get("training", {}).get("threshold")


def predict_arrays(exported: LoadedExport, images: Sequence[np.ndarray]) -> Predictions:
    """Labels and probabilities of decoded images (the Python API's ``predict``)."""
    multilabel = is_multilabel(exported)
    probs = probabilities(tested_logits(exported, images), multilabel)
    rows = decide(range(len(images)), probs, exported.class_names, 1, multilabel, tested_threshold(exported))
    return Predictions(exported.class_names, [row.prediction for row in rows], probs)


def predict(exported: LoadedExport, paths: Sequence[Path], topk: int = 5, batch_size: int = 32) -> list[Prediction]:
    """Top-k predictions for image (or DICOM) files, in batches, with a progress bar."""
    if topk < 1 or batch_size < 1:
        raise FinetuneError(f"topk={topk} and batch_size={batch_size} must be >= 1")
    topk, multilabel = min(topk, len(exported.class_names)), is_multilabel(exported)
    rows: list[Prediction] = []
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("predicting", total=len(paths))
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            logits = tested_logits(exported, [exported.read(p) for p in batch])
            rows += decide(
                batch,
                probabilities(logits, multilabel),
                exported.class_names,
                topk,
                multilabel,
                tested_threshold(exported),
            )
            progress.advance(task, len(batch))
    return rows


def csv_header(topk: int) -> list[str]:
    """path, prediction, label_1, prob_1, …, label_k, prob_k."""
    return ["path", "prediction", *(f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("label", "prob"))]


def write_predictions(
    rows: Sequence[Prediction], out: Path, exported: LoadedExport, skipped: Sequence[tuple[str, str]] = ()
) -> Path:
    """CSV (one row per image) or JSON (with the export's task and classes), written atomically;
    ``skipped`` (input, why): unreadable inputs left out, listed after the predictions (CSV: an empty
    prediction and the reason in an added ``error`` column; JSON: ``skipped``)."""
    if out.suffix == ".json":
        return write_json(
            out,
            {
                "export": str(exported.path),
                "multilabel": is_multilabel(exported),
                "predictions": [
                    {
                        "path": r.path,
                        "prediction": r.prediction,
                        "top": [{"label": label, "probability": p} for label, p in r.top],
                    }
                    for r in rows
                ],
                "skipped": [{"path": path, "error": why} for path, why in skipped],
            },
        )
    topk = max((len(r.top) for r in rows), default=0)
    error = ["error"] if skipped else []
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(topk) + error)
        for r in rows:
            writer.writerow(
                [r.path, r.prediction, *(v for label, p in r.top for v in (label, f"{p:.6f}")), *("" for _ in error)]
            )
        for path, why in skipped:
            writer.writerow([path, "", *("" for _ in range(2 * topk)), why])
    return out


def output_path(out: str | None, overwrite: bool) -> Path:
    """Where predictions go (default ./predictions.csv); refuses an existing file unless ``overwrite``."""
    path = Path(out or "predictions.csv").expanduser()
    if path.suffix not in OUTPUT_SUFFIXES:
        raise FinetuneError(f"out={path}: use a .csv or .json file name")
    refuse_existing([path] if path.exists() else [], overwrite)
    return path


def predict_files(exported: LoadedExport, paths: Sequence[Path], options: PredictOptions) -> str:
    """Predict ``paths`` into ``options.out`` (CSV or JSON); the summary line."""
    out = output_path(options.out, options.overwrite)
    rows = predict(exported, paths, options.topk, options.batch_size)
    write_predictions(rows, out, exported, options.skipped)
    return f"{len(rows)} prediction(s) from {exported.path.name} → [bold]{out}[/bold]"
