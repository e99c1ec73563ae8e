"""A run directory's records and model: ``data.json`` written (what every task records of its data, and
the task's own record) and read back, the model built by the run's task from its saved config and loaded
from its checkpoint; the checks a ``resume=`` runs before anything is written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from finetune.data.transforms import Preprocessing
from finetune.models.freezing import FineTuneModel
from finetune.models.weights import resolve_weights
from finetune.run.config import load_config
from finetune.run.errors import FinetuneError
from finetune.run.records import (
    RESUME_SAFE_KEYS,
    RETEST_SAFE_KEYS,
    check_checkpoint,
    experiment_changes,
    find_checkpoint,
    locate_resume,
    model_state,
    resume_config,
    run_config,
)
from finetune.run.task import Task

if TYPE_CHECKING:
    import numpy as np

    from finetune.data.base import FinetuneDataModule


@dataclass
class LoadedRun:
    """A finished run of ``task``: its config, model (best checkpoint, eval mode), classes, preprocessing
    and the task's own record (``Task.task_record`` of its data.json)."""

    run_dir: Path
    cfg: DictConfig
    model: FineTuneModel
    class_names: list[str]
    preprocessing: Preprocessing
    weights: dict
    checkpoint: Path | None  # None: the model was handed over in memory (``load_run``)
    task: Task
    task_record: dict
    image_channels: int  # channels of the training images (1: grayscale data)

    def read_image(self, path: Path) -> np.ndarray:
        """One input file as the run read its training images (HWC uint8; the task's own, e.g. a DICOM window)."""
        return self.task.read_image(self.task_record, Path(path), self.preprocessing.in_chans)


def run_data_record(task: Task, cfg: DictConfig, data: FinetuneDataModule) -> dict:
    """``data.json``: what every task records of its data (classes, channels, preprocessing, split sizes)
    and, under ``task_record``, what ``task`` records of its own (``Task.data_record``)."""
    info = data.info
    return {
        "task": task.name,
        "class_names": info.class_names,
        "image_channels": info.image_channels,
        "grayscale": data.grayscale if info.image_channels == 1 else "n/a (RGB images)",
        "model_in_chans": data.in_chans,
        "preprocessing": data.preprocessing.to_dict(),
        "split_sizes": data.split_sizes,
        "task_record": task.data_record(cfg, data),
    }


def run_task(cfg: DictConfig, tasks: Mapping[str, Task]) -> Task:
    """The task of ``tasks`` a run's config names."""
    if cfg.task not in tasks:
        raise FinetuneError(
            f"the run is of task={cfg.task}, which this finetune does not know (known: {', '.join(tasks)})"
        )
    return tasks[cfg.task]


def model_shapes(cfg: DictConfig, run_dir: Path, task: Task) -> dict[str, tuple[int, ...]] | None:
    """The shape of every tensor of the run's model, named as its checkpoints name them (``model.…``),
    from a model ``task`` builds on the meta device (nothing allocated); None before the run wrote ``data.json``."""
    if not (run_dir / "data.json").is_file():
        return None
    data = json.loads((run_dir / "data.json").read_text())
    skeleton = resolve_weights(cfg.backbone.name, pretrained=False)
    try:
        with torch.device("meta"):
            model = task.build_model(cfg, skeleton, data["model_in_chans"], len(data["class_names"]))
    except Exception:  # an architecture that computes on its tensors while built (.item() on meta): no pre-check
        return None
    return {f"model.{key}": tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def check_resume(
    current: DictConfig,
    overrides: list[str],
    tasks: Mapping[str, Task],
    prefer: tuple[str, ...] = ("last.ckpt", "best.ckpt"),
) -> tuple[Path, Path | None, DictConfig]:
    """Check a ``resume=`` command line completely, writing nothing: the run exists, is not finished
    (unless ``resume_finished=true``), its stored config calls no resolver, the overrides do not change
    its experiment, and its checkpoint loads into the model its task (of ``tasks``, by the name its
    config records) builds. Returns (run directory, checkpoint or None to start phase 1 from scratch,
    the config to continue with)."""
    run_dir, ckpt = locate_resume(current.resume, prefer)
    finished = (run_dir / "metrics.json").exists()
    if finished and not current.get("resume_finished", False):
        raise FinetuneError(
            f"{run_dir} has finished (metrics.json exists); resuming would re-test it and rewrite "
            f"its metrics.json, exports and report: add resume_finished=true if that is what you "
            f"want, or start a new run"
        )
    # a re-test (resume_finished=true) tests the kept checkpoint; a finished run without one trains again
    retest = finished and ckpt is not None
    cfg = resume_config(run_dir, current, overrides, retest)
    changed = experiment_changes(cfg, current, overrides, retest)
    if changed:
        raise FinetuneError(_changes_refused(current.resume, changed, finished and ckpt is None))
    if ckpt is not None:
        check_checkpoint(ckpt, model_shapes(cfg, run_dir, run_task(cfg, tasks)))
    return run_dir, ckpt, cfg


def _changes_refused(resume: str, changed: list[str], retrains: bool) -> str:
    """The line refusing the ``changed`` overrides of ``resume=``; ``retrains``: the run finished but kept no
    checkpoint (``checkpoints.keep=none``, or deleted), so resuming it trains it again, and no test-only key
    (``RETEST_SAFE_KEYS``) may change either."""
    retest = (
        f"not {', '.join(RETEST_SAFE_KEYS)} either: this finished run kept no checkpoint to re-test, so resuming "
        "trains it again from the beginning"
        if retrains
        else f"when re-testing a finished run also {', '.join(RETEST_SAFE_KEYS)}"
    )
    return (
        f"resume={resume} continues the run with its saved config; these overrides "
        f"would change the experiment: {' '.join(changed)} (allowed when resuming: "
        f"{', '.join(k for k in RESUME_SAFE_KEYS if k != 'resume')}, hydra.*; {retest}); start a new run to change them"
    )


def prepare_resume(
    current: DictConfig,
    overrides: list[str],
    tasks: Mapping[str, Task],
    prefer: tuple[str, ...] = ("last.ckpt", "best.ckpt"),
) -> tuple[Path, Path | None, DictConfig]:
    """``check_resume``, then say where the run continues. (Temporaries of interrupted writes went when
    its lock was taken.) Returns what ``check_resume`` returns."""
    run_dir, ckpt, cfg = check_resume(current, overrides, tasks, prefer)
    if ckpt is None:
        why = "kept no checkpoint" if (run_dir / "metrics.json").exists() else "stopped before its first checkpoint"
        print(f"resuming {run_dir}: it {why}, so phase 1 starts from the beginning with the run's saved config")
    else:
        print(f"resuming {run_dir} from {ckpt.name} with the run's saved config")
    return run_dir, ckpt, cfg


def load_run(path: str | Path, task: Task, model: FineTuneModel | None = None) -> LoadedRun:
    """Rebuild the model of a run of ``task`` and load its checkpoint (``weights_only``: no pickle is
    executed). A data.json written before the task record existed is read by ``task.task_record``.
    ``model``: the run's trained model in memory, taken as it is (a ``checkpoints.keep=none`` run, which
    has no checkpoint, exports it as it ends); ``path`` is then the run directory."""
    if model is None:
        cfg = run_config(path)
        run_dir, ckpt = find_checkpoint(path)
    else:
        run_dir, ckpt = Path(path), None
        cfg = load_config(run_dir / "config.yaml")
    data = json.loads((run_dir / "data.json").read_text())
    if ckpt is not None:
        state = model_state(ckpt)
        skeleton = resolve_weights(cfg.backbone.name, pretrained=False)  # the checkpoint holds every tensor
        model = task.build_model(cfg, skeleton, data["model_in_chans"], len(data["class_names"]))
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return LoadedRun(
        run_dir,
        cfg,
        model.eval(),
        data["class_names"],
        Preprocessing.from_dict(data["preprocessing"]),
        json.loads((run_dir / "weights.json").read_text()),
        ckpt,
        task,
        task.task_record(data),
        data["image_channels"],
    )
