"""Segmentation's own record (``task_record``) in a run's data.json and an export's metadata, read from
records written before it existed too (no torch import)."""

from __future__ import annotations

from collections.abc import Mapping

EXPORTED_KEYS = ("tile", "tile_overlap", "scale", "ignore_index")  # what an export keeps of the record
RECORD_KEYS = ("ignore_index", "pixel_counts_train", "tile", "tile_overlap", "scale")


def segmentation_record(record: Mapping) -> dict:
    """The segmentation part of a data.json or export metadata ``record``, in either layout (before the
    record was kept under "task_record", an export held it under "segmentation", data.json at its top)."""
    if "task_record" in record:
        return dict(record["task_record"])
    return dict(record.get("segmentation") or {key: record[key] for key in RECORD_KEYS if key in record})
