"""``finetune evaluate``: a trained model on corrupted copies of a split (``finetune.data.corruptions``).

Each image of the split is decoded as training decoded it, corrupted at its stored size (HWC uint8), then
preprocessed by the unchanged reference preprocessing; the task scores every corruption × severity as its
test does (``Task.score_images``: classification's accuracy, balanced accuracy, F1, AUC, and the ECE of
the probabilities the run decides with: after its temperature). The record (``robustness_record``) goes to
the run's metrics.json under ``robustness.<set>``; the report's Robustness section reads it from there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.data.corruptions import (
    SEVERITIES,
    CorruptionSet,
    corrupt,
    corruption_set,
    restored_global_random,
    seed_of,
)
from finetune.data.sources import Samples
from finetune.run.artifacts import write_json
from finetune.run.errors import ConfigError
from finetune.run.task import Scores, Task


@dataclass(frozen=True)
class EvaluateOptions:
    """Which corruption set, severities (1..5) and corruptions (empty: all of the set); ``seed`` seeds every draw."""

    corruptions: str
    severities: tuple[int, ...] = SEVERITIES
    only: tuple[str, ...] = ()
    split: str = "test"
    seed: int = 0


def _rounded(values: Mapping[str, float]) -> dict[str, float | None]:
    return {k: None if not np.isfinite(v) else round(float(v), 6) for k, v in values.items()}


def _mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    keys = rows[0].keys() if rows else ()
    return _rounded({k: float(np.mean([r[k] for r in rows])) for k in keys})


def _corrupted(
    corruptions: CorruptionSet, name: str, severity: int, images: Sequence[np.ndarray], seed: int
) -> list[np.ndarray]:
    return [
        corrupt(corruptions, name, image, severity, seed_of(seed, name, severity, i)) for i, image in enumerate(images)
    ]


def chosen_corruptions(options: EvaluateOptions, dataset: str | None) -> tuple[CorruptionSet, list[str]]:
    """The set ``options`` name for the run's ``dataset`` and the corruptions to evaluate (ConfigError for
    a set that does not fit the dataset or an unknown name in ``options.only``): cheap, before any model."""
    corruptions = corruption_set(options.corruptions, dataset)
    unknown = [name for name in options.only if name not in corruptions.corruptions]
    if unknown:
        raise ConfigError(
            f"only={','.join(unknown)}: not in corruptions={options.corruptions}; choose from "
            + ", ".join(corruptions.corruptions)
        )
    return corruptions, list(options.only or corruptions.corruptions)


def evaluate_robustness(
    exported, task: Task, samples: Samples, channels: int, dataset: str | None, options: EvaluateOptions
) -> dict:
    """The robustness record of ``exported`` (an ``export.loading.LoadedExport``) on ``samples``."""
    corruptions, names = chosen_corruptions(options, dataset)
    images = [samples.image(i, channels) for i in range(len(samples))]
    targets = np.asarray(samples.targets)
    clean = task.score_images(exported, images, targets)
    scores: dict[str, dict[int, Scores]] = {}
    skipped: dict[str, str] = {}
    with restored_global_random():
        for name in names:
            per: dict[int, Scores] = {}
            for severity in options.severities:
                try:
                    corrupted = _corrupted(corruptions, name, severity, images, options.seed)
                except ValueError as err:  # e.g. a MedMNIST-C stain larger than a 28 px image
                    skipped[name] = f"not applicable to {images[0].shape[1]}x{images[0].shape[0]} px images ({err})"
                    break
                per[severity] = task.score_images(exported, corrupted, targets)
            if name not in skipped:
                scores[name] = per
    rows = [sc.metrics for per in scores.values() for sc in per.values()]
    record = {
        "corruptions": options.corruptions,
        "split": options.split,
        "images": len(images),
        "image_size": list(images[0].shape[:2]),
        "severities": list(options.severities),
        "seed": options.seed,
        "clean": _rounded(clean.metrics),
        "results": {name: {str(s): _rounded(sc.metrics) for s, sc in per.items()} for name, per in scores.items()},
        "mean": _mean(rows),
        "by_severity": {
            str(s): _mean([per[s].metrics for per in scores.values()]) for s in options.severities if scores
        },
        "skipped": skipped,
        "notes": corruptions.notes,
    }
    if corruptions.summary is not None:
        if tuple(options.severities) == SEVERITIES:
            outputs = {name: [per[s].outputs for s in SEVERITIES] for name, per in scores.items()}
            record["paper"] = corruptions.summary(clean.kind, targets, clean.outputs, outputs, clean.threshold)
        else:
            record["paper"] = {"note": "the paper's summary needs severity=all"}
    return record


def write_robustness(metrics_file: Path, record: dict) -> Path:
    """``record`` into ``metrics_file`` under ``robustness.<set>`` (atomically; every other key kept)."""
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    metrics.setdefault("robustness", {})[record["corruptions"]] = record
    return write_json(metrics_file, metrics)
