"""Classification's own record (``task_record``) in a run's data.json and an export's metadata, read
from records written before it existed too (no torch import)."""

from __future__ import annotations

from collections.abc import Mapping

NAME = "classification"
# Keys the record held at the top of data.json ("task": the type) or of an export ("multilabel", and
# "window" only when set) before it was kept under "task_record"
OLD_KEYS = ("multilabel", "class_counts_train", "imbalance")


def classification_record(record: Mapping) -> dict:
    """The classification part of a data.json or export metadata ``record``, in either layout."""
    if "task_record" in record:
        return dict(record["task_record"])
    old = {key: record[key] for key in OLD_KEYS if key in record}
    task_type = record.get("task")
    return old | {"window": record.get("window")} | ({"type": task_type} if task_type != NAME else {})
