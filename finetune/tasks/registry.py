"""The registered tasks. Adding a task: a folder with its Task (its config group ``conf/task/<name>.yaml``
on Hydra's search path), plus one ``register_task`` call: one line in this file for a task shipped with
finetune, or a call from the code that brings its own (the test suite adds image regression this way).

Only the commands (``finetune.commands``) and the Python API look tasks up; the libraries below them are
handed a task, or ``TASKS`` where they read which one from a record (an export's metadata, a run's config).
"""

from __future__ import annotations

from finetune.run import schema
from finetune.run.errors import ConfigError
from finetune.run.task import Task
from finetune.tasks.classification import Classification
from finetune.tasks.segmentation import Segmentation

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name: to every run and export recording it, and (with its
    ``config_schema``) to the config, so that ``task=<name>`` composes its ``conf/task/<name>.yaml``."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name")
    if task.name in TASKS and type(TASKS[task.name]) is not type(task):
        raise ValueError(f"task={task.name} is registered already (by {type(TASKS[task.name]).__name__})")
    if task.config_schema is not None:
        schema.register_task_schema(task.name, task.config_schema)
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``; a ConfigError lists the choices."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not known: choose one of {', '.join(TASKS)}")
    return TASKS[name]


register_task(Classification())
register_task(Segmentation())
