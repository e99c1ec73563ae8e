"""Each task's own record: ``task_record`` in data.json and in an export's metadata, which only the task
reads. Run directories and exports written before it (data.json with every key at its top, "task" the
classification type; export version 2 with "multilabel", "window" and "segmentation" at the top) still
load, export and predict: the task reads its keys from where they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import skimage.data

import finetune
from finetune.export.loading import load_export
from finetune.export.writing import export_run
from finetune.models.saved_runs import load_run
from finetune.tasks.registry import TASKS, get_task

from ..conftest import SEG_CLASSES
from ..helpers import rewrite_embedded, squares

CLASSIFICATION, SEGMENTATION = get_task("classification"), get_task("segmentation")
WINDOW = [40.0, 400.0]


def old_data_json(run_dir: Path, **extra: object) -> dict:
    """Rewrite the run's data.json as finetune wrote it before task records: the task's keys at the top
    (classification: its type as "task"); ``extra`` keys added. Returns the task record it had."""
    data = json.loads((run_dir / "data.json").read_text())
    record = data.pop("task_record")
    flat = {k: v for k, v in record.items() if k != "type" and not (k == "window" and v is None)}  # window: if set
    data["task"] = record.get("type", data["task"])
    (run_dir / "data.json").write_text(json.dumps(data | flat | extra))
    return record


def version_2(meta: dict) -> None:
    """Export metadata as version 2 wrote it: the task's keys at the top (segmentation: under its name)."""
    record = meta.pop("task_record")
    meta["export_version"] = 2
    if meta["task"] == "segmentation":
        meta["segmentation"] = record
    else:
        meta["multilabel"] = record["multilabel"]
        if record["window"]:
            meta["window"] = record["window"]


def test_new_records_hold_the_tasks_keys_under_task_record(finished_run):
    data = json.loads((finished_run / "data.json").read_text())
    assert data["task"] == "classification" and "multilabel" not in data and "window" not in data
    assert data["task_record"]["multilabel"] is False and data["task_record"]["window"] is None
    meta = load_export(finished_run / "exports" / "head.safetensors", tasks=TASKS).metadata
    assert meta["export_version"] == 3 and meta["task_record"] == {"multilabel": False, "window": None}
    assert "multilabel" not in meta and "window" not in meta


def test_an_old_classification_run_directory_loads_and_exports_its_record(finished_run, tmp_path):
    old = tmp_path / "run"
    shutil.copytree(finished_run, old)
    record = old_data_json(old, window=WINDOW)
    run = load_run(old, CLASSIFICATION)
    assert run.task_record == record | {"window": WINDOW}
    assert run.task_record["type"] == "multi-class" and run.task_record["multilabel"] is False
    [result] = export_run(old, CLASSIFICATION, ["onnx"], out=tmp_path / "exports")
    exported = load_export(result.path, tasks=TASKS)
    assert exported.metadata["task_record"] == {"multilabel": False, "window": WINDOW}


def test_a_version_2_classification_export_predicts_as_before(finished_run, tmp_path):
    new = finished_run / "exports" / "head.safetensors"
    old = tmp_path / "head.safetensors"
    shutil.copy(new, old)
    rewrite_embedded(old, version_2)
    exported = load_export(old, tasks=TASKS)
    assert exported.metadata["export_version"] == 2 and "task_record" not in exported.metadata
    assert exported.task_record == {"multilabel": False, "window": None}
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    before, now = finetune.load(old).predict(images), finetune.load(new).predict(images)
    assert before.labels == now.labels
    np.testing.assert_allclose(before.probabilities, now.probabilities, atol=1e-6)


def test_an_old_segmentation_run_and_export_predict_with_their_tiles(tiny_seg_run, tmp_path):
    old = tmp_path / "run"
    shutil.copytree(tiny_seg_run, old)
    record = old_data_json(old)
    assert set(record) == {"ignore_index", "pixel_counts_train", "tile", "tile_overlap", "scale"}
    assert load_run(old, SEGMENTATION).task_record == record
    [result] = export_run(old, SEGMENTATION, ["safetensors"], out=tmp_path / "exports")
    meta = load_export(result.path, tasks=TASKS).metadata
    assert meta["task_record"] == {k: record[k] for k in ("tile", "tile_overlap", "scale", "ignore_index")}

    v2 = tmp_path / "v2.safetensors"
    shutil.copy(result.path, v2)
    rewrite_embedded(v2, version_2)
    assert load_export(v2, tasks=TASKS).task_record == meta["task_record"]
    squares(tmp_path / "images", n=2, size=96, foreground=1)
    image = next((tmp_path / "images" / "images").glob("*.png"))
    [mask_before], [mask_now] = finetune.load(v2).predict(image).masks, finetune.load(result.path).predict(image).masks
    assert mask_before.shape == (96, 96) and set(np.unique(mask_now)) <= set(range(len(SEG_CLASSES)))
    np.testing.assert_array_equal(mask_before, mask_now)
