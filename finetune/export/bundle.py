"""What is exported: a trained model with its config and records, and the metadata every export carries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from finetune.data.transforms import Preprocessing
from finetune.models.freezing import FineTuneModel
from finetune.models.saved_runs import load_run
from finetune.run.errors import FinetuneError
from finetune.run.schedule import phases_from
from finetune.run.task import Task
from finetune.version import __version__

# 3: the task's own keys under "task_record" (2: "multilabel", "window" and "segmentation" at the top,
# still read: Task.task_record); 2: images resized by Pillow (antialiased), the "input" contract and
# preprocess.py (1: OpenCV resize, refused)
EXPORT_VERSION = 3
EXPORT_VERSIONS = (2, 3)  # what loading reads

REEXPORT = "re-export the run with finetune export run=<run dir>"
# What loading reads from every export's metadata, with its JSON type (checked before any of it is used)
METADATA_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "class_names": list,
    "preprocessing": dict,
    "input": dict,
}
PREPROCESSING_FIELDS: dict[str, type | tuple[type, ...]] = {
    "size": list,
    "mean": list,
    "std": list,
    "interpolation": str,
    "in_chans": int,
}
_JSON_TYPES = {str: "a string", list: "a list", dict: "an object", bool: "true or false", int: "a whole number"}


@dataclass(frozen=True)
class ModelBundle:
    """Everything an export needs: the trained model, its config and what it predicts."""

    model: FineTuneModel
    cfg: DictConfig  # the run's resolved config (task.build_model rebuilds the architecture from it)
    class_names: list[str]
    task: Task
    preprocessing: Preprocessing
    image_channels: int  # channels of the training images (1: grayscale data)
    weights: dict  # WeightsRecord.to_dict() of the pretrained backbone
    training: dict = field(default_factory=dict)  # phases, BN policy, test metrics
    origin: str = ""
    backbone_weights: str | None = None  # pretrained weights file overriding the recorded one
    task_record: dict = field(default_factory=dict)  # the task's own part of the run's data.json

    @classmethod
    def from_run(
        cls, path: str | Path, task: Task, backbone_weights: str | None = None, model: FineTuneModel | None = None
    ) -> ModelBundle:
        """The best checkpoint of a run directory (or the given checkpoint) of ``task`` and its records;
        ``model``: the run's trained model in memory instead of a checkpoint (``load_run``)."""
        run = load_run(path, task, model)
        return cls(
            run.model,
            run.cfg,
            run.class_names,
            task,
            run.preprocessing,
            run.image_channels,
            run.weights,
            training_summary(run.cfg, run.run_dir, task),
            str(run.checkpoint or run.run_dir),
            backbone_weights,
            run.task_record,
        )


def training_summary(cfg: DictConfig, run_dir: Path, task: Task) -> dict:
    """Phases, BN policy, EMA, test metrics and how the run's test turned the model's outputs into its
    predictions (``task.test_decisions``; classification: flips, temperature, threshold), which the
    task's predict and the Python API apply the same."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    phases = [{"name": p.name, "epochs": p.epochs, "freeze": p.freeze} for p in phases_from(cfg)]
    return {
        "phases": phases,
        "bn": cfg.backbone.bn,
        "ema_decay": cfg.ema.decay,
        "test": metrics.get("test", {}),
        **task.test_decisions(metrics),
    }


def metadata(bundle: ModelBundle, fmt: str) -> dict:
    """What every export records: classes, preprocessing, task, backbone, weights, training."""
    weights = {k: bundle.weights.get(k) for k in ("model", "tag", "source", "sha256")}
    return {
        "export_version": EXPORT_VERSION,
        "format": fmt,
        "finetune_version": __version__,
        "task": bundle.task.name,
        "class_names": list(bundle.class_names),
        "preprocessing": bundle.preprocessing.to_dict(),
        "input": input_contract(bundle.preprocessing, bundle.task.dense),
        "image_channels": bundle.image_channels,
        "backbone": {"name": bundle.cfg.backbone.name, "in_chans": bundle.preprocessing.in_chans},
        "weights": weights,
        "training": bundle.training,
        "origin": bundle.origin,
        "adapter": bundle.model.adapter.to_dict() if bundle.model.adapter else None,
        "task_record": bundle.task.export_record(bundle.task_record),
    }


def input_contract(pre: Preprocessing, dense: bool) -> dict:
    """Every preprocessing step, stated library-neutrally; ``preprocess.py`` (next to the export)
    implements it with numpy and Pillow."""
    resize = (
        None
        if dense
        else {
            "to_height_width": list(pre.size),
            "keep_aspect_ratio": False,
            "crop": None,
            "filter": pre.interpolation,
            "antialias": True,
            "implementation": f"Pillow Image.resize((width, height), Image.Resampling.{pre.interpolation.upper()})",
        }
    )
    return {
        "reference": "preprocess.py (numpy + Pillow): preprocess(files_or_arrays, metadata['preprocessing'])",
        "decode": "8 bits per channel, EXIF orientation applied; 16/32-bit grayscale: round(value / 257); "
        "palette, RGBA, CMYK, ...: RGB, alpha dropped",
        "channels": (
            "gray replicated to R, G, B"
            if pre.in_chans == 3
            else "1 channel; RGB to Pillow's L = (299 R + 587 G + 114 B) / 1000"
        ),
        "resize": resize,
        "whole_image": (
            "the model takes whole images of any size with sides that are multiples of 32; finetune "
            "predict slides the recorded tile over them (task_record: tile, tile_overlap, scale)"
            if dense
            else None
        ),
        "scale": "value / 255 (float32)",
        "mean": list(pre.mean),
        "std": list(pre.std),
        "normalize": "(value / 255 - mean) / std per channel",
        "channel_order": "RGB" if pre.in_chans == 3 else "gray",
        "layout": "NCHW",
        "dtype": "float32",
    }


def parse_metadata(text: str, source: Path) -> dict:
    """The export metadata in the JSON ``text`` read from ``source``; FinetuneError naming the file and
    where the JSON breaks."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise FinetuneError(
            f"{source}: its finetune metadata is not valid JSON ({err.msg}: line {err.lineno}, "
            f"column {err.colno}); it was damaged or edited: {REEXPORT}"
        ) from None
    if not isinstance(record, dict):
        raise FinetuneError(f"{source}: its finetune metadata is not a JSON object; {REEXPORT}")
    return record


def check_fields(
    record: Mapping, source: Path, fields: Mapping[str, type | tuple[type, ...]], prefix: str = ""
) -> None:
    """FinetuneError naming the first of ``fields`` that ``record`` (metadata read from ``source``) lacks or
    holds with another JSON type."""
    for key, kind in fields.items():
        if key not in record:
            raise FinetuneError(f"{source}: field '{prefix}{key}' is missing from the export metadata; {REEXPORT}")
        value = record[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            expected = " or ".join(_JSON_TYPES.get(k, "null") for k in kinds)
            raise FinetuneError(
                f"{source}: field '{prefix}{key}' of the export metadata is "
                f"{json.dumps(value)[:40]}, not {expected}; {REEXPORT}"
            )


def check_metadata(record: Mapping, source: Path) -> None:
    """Every field loading reads from an export's ``record`` (read from ``source``) is there with its type,
    and the preprocessing it describes is valid; one FinetuneError naming the file and the field."""
    check_fields(record, source, METADATA_FIELDS)
    if record.get("export_version") != 2:  # version 2 kept the task's keys at the top
        check_fields(record, source, {"task_record": dict})
    check_fields(record["input"], source, {"resize": (dict, type(None))}, "input.")
    pre = record["preprocessing"]
    check_fields(pre, source, PREPROCESSING_FIELDS, "preprocessing.")
    for key in ("size", "mean", "std"):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pre[key]):
            raise FinetuneError(
                f"{source}: field 'preprocessing.{key}' of the export metadata holds "
                f"{json.dumps(pre[key])[:40]}, not numbers; {REEXPORT}"
            )
    if not all(isinstance(name, str) for name in record["class_names"]):
        raise FinetuneError(
            f"{source}: field 'class_names' of the export metadata holds something else than names; {REEXPORT}"
        )
    try:
        Preprocessing.from_dict(pre)
    except ValueError as err:
        raise FinetuneError(
            f"{source}: field 'preprocessing' of the export metadata is not valid ({err}); {REEXPORT}"
        ) from None


def task_of(record: Mapping, tasks: Mapping[str, Task], source: Path) -> Task:
    """The task of ``tasks`` that the export metadata ``record`` (read from ``source``) names."""
    name = record["task"]
    if name not in tasks:
        raise FinetuneError(
            f"{source} is an export of task={name}, which this finetune does not know (known: "
            f"{', '.join(tasks)}); load it where that task is registered (finetune.tasks.registry.register_task)"
        )
    return tasks[name]


def unverified(source: Path, record: str) -> str:
    """The error for an export whose metadata (read from ``source``) lacks the integrity ``record``."""
    return (
        f"{source} records no {record}, so it cannot be checked against what was exported (an export made "
        "before finetune recorded it, or a record removed after export); "
        f"{REEXPORT}, or, only for a file whose origin you know, pass allow_unverified=true "
        "(finetune predict) or allow_unverified=True (finetune.load) to use it unchecked (a change made to "
        "it since export would then go unnoticed)"
    )
