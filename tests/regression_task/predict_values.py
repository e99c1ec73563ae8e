"""Regression predict: one value per image from an export, in the target's units (the export's task
record holds the training split's mean and standard deviation)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.export.loading import LoadedExport
from finetune.export.predict_io import PredictOptions, refuse_existing
from finetune.run.artifacts import atomic_path
from finetune.run.task import Predictions


@dataclass(frozen=True)
class ValuePredictions(Predictions):
    """``values``: [N] float64, one per image."""

    values: np.ndarray | None = None


def values(exported: LoadedExport, images: Sequence[np.ndarray]) -> np.ndarray:
    """The predicted value of each decoded image."""
    record = exported.task_record
    return exported.logits(images)[:, 0].astype(np.float64) * record["target_std"] + record["target_mean"]


def predict_arrays(exported: LoadedExport, images: Sequence[np.ndarray]) -> ValuePredictions:
    return ValuePredictions(exported.class_names, values=values(exported, images))


def predict_files(exported: LoadedExport, paths: Sequence[Path], options: PredictOptions) -> str:
    """``path,<target>`` rows in ``options.out`` (default ./predictions.csv); the summary line."""
    out = Path(options.out or "predictions.csv").expanduser()
    refuse_existing([out] if out.exists() else [], options.overwrite)
    predicted = [
        value
        for start in range(0, len(paths), options.batch_size)
        for value in values(exported, [exported.read(p) for p in paths[start : start + options.batch_size]])
    ]
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", exported.task_record["target"]])
        writer.writerows([str(path), f"{value:.6g}"] for path, value in zip(paths, predicted))
    return f"{len(paths)} value(s) from {exported.path.name} → {out}"
