"""Checks on a composed config that fail fast, before any data or weights are touched.

Hydra already rejects unknown keys and unknown group options (with the list of valid choices);
this module checks values, asks the task to check its own keys, and turns the ``schedule`` group
into a list of phases. It imports no torch: a bad config is reported in about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from finetune.run.errors import ConfigError

# checkpoints.keep: what a finished run keeps, and so which checkpoint it tests (exports, report and
# explain read the one kept; both: best).
KEEP_CHOICES = ("best", "last", "both")

# Training options only some tasks honour: key -> (the value that means off, why a task may not). A task
# lists the ones it honours in its ``training_options``; a config that turns on one it does not list
# is refused by name. Read with ``setting``: a run written before a key existed resumes with it off.
TASK_OPTIONS: dict[str, tuple[Any, str]] = {
    "loss.label_smoothing": (
        0.0,
        "its loss takes hard labels (segmentation: per-pixel ce / dice / focal); leave loss.label_smoothing=0",
    ),
    "mix.mixup": (0.0, "mixup blends whole images that carry one label each; leave mix.mixup=0"),
    "mix.cutmix": (0.0, "cutmix pastes boxes between images that carry one label each; leave mix.cutmix=0"),
    "calibration": ("none", "temperature scaling is fitted to one prediction per image; leave calibration=none"),
    "tta": (False, "flip averaging is implemented for one prediction per image, not for masks; leave tta=false"),
}
# logger.<key>: the Python package each optional logger needs.
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def setting(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """``key`` of ``cfg``, or ``default`` for a config written before the key existed (a resumed run):
    every training option added later is off by default."""
    return OmegaConf.select(cfg, key, default=default)


def mixes_batches(cfg: DictConfig) -> bool:
    """True when ``mix.*`` mixes training batches (mixup or cutmix on, ``mix.prob`` > 0)."""
    return bool((setting(cfg, "mix.mixup", 0.0) or setting(cfg, "mix.cutmix", 0.0)) and setting(cfg, "mix.prob", 1.0))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Keys whose declared default is a number but that also take a word (or a list): the check that reads
# them names what they take (threshold=tune, backbone.freeze=all, trainer.devices=auto|[0,1]).
NUMBER_OR_WORD = frozenset({"threshold", "backbone.freeze", "trainer.devices"})


def check_types(cfg: DictConfig, declared: DictConfig) -> None:
    """Every key whose ``declared`` default (the config of the chosen groups, before any ``key=value``)
    is a number holds a number in ``cfg``, and so does every phase key the schedule declares (a phase's
    ``lr`` is typed as ``schedule.lr``); null is left to the key's own check."""
    numeric = dict(_numeric_leaves(declared))
    for key, default in numeric.items():
        if key not in NUMBER_OR_WORD:
            _check_number(key, _resolved(cfg, key), f"the default is {default}")
    phases = _resolved(cfg, "schedule.phases")
    for i, phase in enumerate(phases if isinstance(phases, list) else []):
        for name, value in phase.items() if isinstance(phase, dict) else ():
            key = f"schedule.{name}"
            if key in numeric:
                _check_number(f"schedule.phases[{i}].{name}", value, f"as {key}, default {numeric[key]}")


def _numeric_leaves(cfg: DictConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of ``cfg`` that holds a number (lists are not descended)."""
    leaves = []
    for key in cfg:
        name = f"{prefix}{key}"
        if OmegaConf.is_interpolation(cfg, str(key)):
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            leaves += _numeric_leaves(value, f"{name}.")
        elif _number(value):
            leaves.append((name, value))
    return leaves


def _resolved(cfg: DictConfig, key: str) -> Any:
    """The plain value of ``key`` (containers as lists / dicts); None where it cannot be resolved (its own
    check reports that)."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # an interpolation that does not resolve: not a type question
        return None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_number(key: str, value: Any, default: str) -> None:
    if value is not None and not _number(value):
        raise ConfigError(f"{key}={value!r}: expected a number ({default})")


# dataset.root of the kinds that read their data from it: True where the kind cannot do without one.
# (medmnist's root is where a download goes, so it may not exist yet; csv falls back to the CSV's folder.)
DATA_ROOTS = {"imagefolder": True, "dicom_folder": True, "seg_folder": True, "drive": True, "csv": False}


def check_data_paths(cfg: DictConfig) -> None:
    """``dataset.root`` and ``dataset.csv`` name a folder and a file that exist (no data is read)."""
    dataset = cfg.dataset
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
    """The user's data folder a config names (``dataset.root``), resolved: a run must never write into it.
    A CSV without a root names no folder: its rows may point anywhere, and the folder holding
    ``labels.csv`` is often the user's project folder, where ``runs/`` belongs."""
    root = cfg.dataset.get("root")
    return [] if root is None else [Path(root).expanduser().resolve()]
