"""``finetune evaluate``: a trained model on corrupted copies of a split (``finetune.data.corruptions``).

Each image of the split is decoded as training decoded it, corrupted at its stored size (HWC uint8), then
preprocessed by the unchanged reference preprocessing, a batch at a time as the task's scorer reads them
(``SplitImages``: no corrupted copy of the split is made); a severity a corruption cannot draw at the
images' size (``NotApplicable``) is listed under ``skipped``, the others are kept. The task scores every
corruption × severity as its test does (``Task.score_images``: classification's accuracy, balanced
accuracy, F1, AUC, and the ECE of the probabilities the run decides with: after its temperature). The
record (``evaluate_robustness``) goes to the run's metrics.json under ``robustness.<set>``; the report's
Robustness section reads it from there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune.data.corruptions import (
    SEVERITIES,
    CorruptionSet,
    NotApplicable,
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


class SplitImages(Sequence[np.ndarray]):
    """The split's images, decoded as in training (and corrupted by ``change(image, index)``) only when the
    scorer reads them, a batch at a time: no copy of the split is held."""

    def __init__(self, samples: Samples, channels: int, change: Callable[[np.ndarray, int], np.ndarray] | None = None):
        self.samples, self.channels, self.change = samples, channels, change

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # an int, or a slice (a batch)
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        image = self.samples.image(index, self.channels)
        return image if self.change is None else self.change(image, index)


def _corruption(corruptions: CorruptionSet, name: str, severity: int, seed: int) -> Callable:
    return lambda image, i: corrupt(corruptions, name, image, severity, seed_of(seed, name, severity, i))


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
    exported,
    task: Task,
    samples: Samples,
    channels: int,
    corruptions: CorruptionSet,
    names: Sequence[str],
    options: EvaluateOptions,
) -> dict:
    """The robustness record of ``exported`` (an ``export.loading.LoadedExport``) on ``samples``: the corruptions
    ``names`` of the set (as ``chosen_corruptions`` gives them) at ``options.severities``."""
    first = samples.image(0, channels)
    targets = np.asarray(samples.targets)
    clean = task.score_images(exported, SplitImages(samples, channels), targets)
    scores: dict[str, dict[int, Scores]] = {}
    skipped: dict[str, str] = {}
    with restored_global_random():
        for name in names:
            per: dict[int, Scores] = {}
            refused: dict[int, NotApplicable] = {}
            for severity in options.severities:
                images = SplitImages(samples, channels, _corruption(corruptions, name, severity, options.seed))
                try:
                    per[severity] = task.score_images(exported, images, targets)
                except NotApplicable as err:  # e.g. a MedMNIST-C stain larger than a 28 px image
                    refused[severity] = err
            if refused:
                skipped[name] = (
                    f"not applicable to {first.shape[1]}x{first.shape[0]} px images at severity "
                    f"{', '.join(map(str, refused))} ({next(iter(refused.values()))})"
                )
            if per:
                scores[name] = per
    unscored = dict.fromkeys(clean.metrics)
    rows = [sc.metrics for per in scores.values() for sc in per.values()]
    record = {
        "corruptions": options.corruptions,
        "split": options.split,
        "images": len(samples),
        "image_size": list(first.shape[:2]),
        "severities": list(options.severities),
        "seed": options.seed,
        "clean": _rounded(clean.metrics),
        "results": {
            name: {str(s): _rounded(per[s].metrics) if s in per else unscored for s in options.severities}
            for name, per in scores.items()
        },
        "mean": _mean(rows),
        "by_severity": {
            str(s): _mean([per[s].metrics for per in scores.values() if s in per]) or unscored
            for s in options.severities
            if scores
        },
        "skipped": skipped,
        "notes": corruptions.notes,
    }
    if corruptions.summary is not None:
        if tuple(options.severities) == SEVERITIES:
            outputs = {
                name: [per[s].outputs for s in SEVERITIES]
                for name, per in scores.items()
                if len(per) == len(SEVERITIES)
            }
            record["paper"] = corruptions.summary(clean.kind, targets, clean.outputs, outputs, clean.threshold)
        else:
            record["paper"] = {"note": "the paper's summary needs severity=all"}
    return record


def write_robustness(metrics_file: Path, record: dict) -> Path:
    """``record`` into ``metrics_file`` under ``robustness.<set>`` (atomically; every other key kept)."""
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    metrics.setdefault("robustness", {})[record["corruptions"]] = record
    return write_json(metrics_file, metrics)
