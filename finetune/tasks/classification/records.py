"""Classification's own record (``task_record``) in a run's data.json and an export's metadata, read
from records written before it existed too, and the decisions its test made (no torch import)."""

from __future__ import annotations

from collections.abc import Mapping

NAME = "classification"
# Keys the record held at the top of data.json ("task": the type) or of an export ("multilabel", and
# "window" only when set) before it was kept under "task_record"
OLD_KEYS = ("multilabel", "class_counts_train", "imbalance")


def tested_decisions(metrics: Mapping) -> dict:
    """How the test of a run with ``metrics`` (its metrics.json) turned logits into predictions: the
    test-time flips whose logits it averaged with the image's (``tta``), the temperature it divided them
    by and the decision ``threshold`` (one per label: multi-label; None: argmax, or 0.5 per label)."""
    per_label = metrics.get("test_per_class", {}).get("threshold")
    calibration = metrics.get("calibration", {})
    return {
        "tta": calibration.get("tta", []),
        "temperature": calibration.get("temperature", 1.0),
        "threshold": list(per_label.values()) if per_label else metrics.get("test", {}).get("threshold"),
    }


def classification_record(record: Mapping) -> dict:
    """The classification part of a data.json or export metadata ``record``, in either layout."""
    if "task_record" in record:
        return dict(record["task_record"])
    old = {key: record[key] for key in OLD_KEYS if key in record}
    task_type = record.get("task")
    return old | {"window": record.get("window")} | ({"type": task_type} if task_type != NAME else {})
