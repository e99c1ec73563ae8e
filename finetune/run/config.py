"""The typed config: a saved config read back onto the schema, and the checks of the data paths it names.

Composition checks keys and types against ``finetune.run.schema``; a run directory's ``config.yaml`` (or
an export's) written by an older finetune is merged onto the same schema when it is read back, so keys
added since take their defaults. It imports no torch: a bad config is reported in about a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.run.errors import ConfigError
from finetune.run.keys import missing_value
from finetune.run.schema import KINDS, TASKS, FinetuneSchema

# checkpoints.keep: what a finished run keeps, and so which checkpoint it tests (exports, report and
# explain read the one kept; both and none: best; none removes it once the run has exported and reported).
KEEP_CHOICES = ("best", "last", "both", "none")
OLDEST_TASK = "classification"  # the task of a config written before there was a ``task`` key


def typed_config(raw: DictConfig | Mapping, source: str = "the saved config") -> FinetuneSchema:
    """``raw`` (a saved run's or export's config) merged onto the schema of its task, dataset kind and
    head kind: keys it lacks take their defaults. Keys of another task at the top, which configs held
    before each task owned its keys, are dropped; any other key or value the schema refuses, or a required
    value it lacks, is one ConfigError naming ``source``."""
    raw = raw if isinstance(raw, DictConfig) else OmegaConf.create(dict(raw))
    task = raw.get("task", OLDEST_TASK)
    if task not in TASKS:
        raise ConfigError(f"{source}: task={task!r} is not known to this finetune; choose one of {', '.join(TASKS)}")
    schema = TASKS[task]
    typed = OmegaConf.structured(schema)
    for group, kinds in KINDS.items():
        kind = OmegaConf.select(raw, f"{group}.kind", default=None)
        if kind in kinds:
            typed[group] = OmegaConf.structured(kinds[kind])
    own = {f.name for f in fields(schema)}
    foreign = {f.name for other in TASKS.values() for f in fields(other)} - own
    kept = OmegaConf.masked_copy(raw, [key for key in raw if key not in foreign])
    try:
        merged = OmegaConf.merge(typed, kept)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "a key"
        raise ConfigError(
            f"{source}: {key}: {str(err).splitlines()[0]}; it was not written by this finetune (or was "
            "edited by hand): fix that key, or train the run again"
        ) from None
    missing = missing_value(merged)
    if missing:
        raise ConfigError(f"{source}: {missing}")
    return merged


def check_task_schema(cfg: DictConfig) -> None:
    """``cfg`` holds the keys of its ``task``: a config that set ``task: <name>`` as a value (as recipes were once
    written) instead of selecting the task's config group composed another task's schema; one ConfigError says
    how to select it."""
    declared = TASKS.get(cfg.task)
    composed = next((name for name, schema in TASKS.items() if schema is OmegaConf.get_type(cfg)), None)
    if declared is not None and composed not in (None, cfg.task):
        raise ConfigError(
            f"task={cfg.task}: set as a value, task does not select the task's config group, so this config holds "
            f"the keys of task={composed}; in a recipe write `- override /task: {cfg.task}` in its defaults instead "
            f"of `task: {cfg.task}`, or pass task={cfg.task} on the command line"
        )


def load_config(path: Path) -> FinetuneSchema:
    """The config file ``path`` (a run's ``config.yaml``), typed (``typed_config``)."""
    return typed_config(OmegaConf.load(path), str(path))


# dataset.root of the kinds that read their data from it: True where the kind cannot do without one.
# (medmnist's root is where a download goes, so it may not exist yet; csv falls back to the CSV's folder.)
DATA_ROOTS = {"imagefolder": True, "dicom_folder": True, "seg_folder": True, "drive": True, "csv": False}


def check_data_paths(cfg: DictConfig) -> None:
    """``dataset.root`` and ``dataset.csv`` name a folder and a file that exist, a local ``dataset.uri`` a
    folder (no data is read)."""
    dataset = cfg.dataset
    if dataset.kind == "streaming" and "://" not in (dataset.get("uri") or ""):
        _existing(dataset.get("uri"), "dataset.uri", "folder", "<folder or s3://bucket/prefix of a pack>")
    if dataset.kind == "csv":
        _existing(dataset.get("csv"), "dataset.csv", "file", "/path/to/labels.csv (columns path,label[,split])")
    if dataset.kind in DATA_ROOTS and (DATA_ROOTS[dataset.kind] or dataset.get("root") is not None):
        _existing(dataset.get("root"), "dataset.root", "folder", "/path/to/your/images")


def _existing(value: str | None, key: str, kind: str, example: str) -> None:
    """ConfigError naming ``key`` unless ``value`` is an existing file or folder (``kind``)."""
    if value is None:
        raise ConfigError(f"{key} is not set: pass {key}={example}")
    path = Path(value).expanduser()
    if not (path.is_dir() if kind == "folder" else path.is_file()):
        state = f"is not a {kind}" if path.exists() else "does not exist"
        raise ConfigError(f"{key}={value} {state} (resolved to {path.resolve()}); pass {key}={example}")


def data_folders(cfg: DictConfig) -> list[Path]:
    """The user's data folders a config names (``dataset.root``, a local pack's ``dataset.uri``), resolved: a
    run must never write into them. A CSV without a root names no folder: its rows may point anywhere, and
    the folder holding ``labels.csv`` is often the user's project folder, where ``runs/`` belongs."""
    folders = [cfg.dataset.get("root"), cfg.dataset.get("uri")]
    return [Path(f).expanduser().resolve() for f in folders if f is not None and "://" not in f]
