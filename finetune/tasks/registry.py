"""The registered tasks. Adding a task: a folder in finetune/tasks with its Task, plus one line here.

Only the commands (``finetune.commands``) look tasks up; the libraries below them are handed one.
"""

from __future__ import annotations

from finetune.run.errors import ConfigError
from finetune.tasks.base import Task
from finetune.tasks.classification import Classification
from finetune.tasks.segmentation import Segmentation

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), Segmentation())}


def get_task(name: str) -> Task:
    """The registered task called ``name``; a ConfigError lists the choices."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not known: choose one of {', '.join(TASKS)}")
    return TASKS[name]
