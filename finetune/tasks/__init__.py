"""Tasks: everything that differs between classification and segmentation, behind one interface
(``finetune.tasks.base.Task``). Adding a task: a folder here with its Task, plus one line below."""
from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.engine.schedule import ConfigError
from finetune.tasks.base import Task
from finetune.tasks.classification import Classification
from finetune.tasks.segmentation import Segmentation

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from finetune.models.freezing import FineTuneModel
    from finetune.models.weights import WeightsRecord

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), Segmentation())}


def get_task(name: str) -> Task:
    """The registered task called ``name``; a ConfigError lists the choices."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not known: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def build_model(cfg: DictConfig, record: WeightsRecord, in_chans: int, num_classes: int) -> FineTuneModel:
    """Backbone (weights from ``record``) + the head or decoder of the config's task."""
    return get_task(cfg.task).build_model(cfg, record, in_chans, num_classes)
