"""finetune: turn an ImageNet-pretrained timm backbone into a model for your images.

The Python API (``finetune.api``): ``finetune.train(dataset=…, backbone=…, **overrides)`` fine-tunes as the
``finetune`` command does and returns the run (``.metrics``, ``.predict``, ``.export``, ``.report``);
``finetune.plan(…)`` and ``finetune.advise(…)`` say what training would do and what to train;
``finetune.load(path)`` opens a run directory or an export and predicts. Nothing heavy (torch) is imported
before one of them is called. The command line is ``finetune`` (``finetune.cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune.run.errors import ConfigError, FinetuneError
from finetune.version import __version__

if TYPE_CHECKING:
    from finetune.api import Advice, Model, Plan, Run  # (Advice: finetune.commands.advise's)

__all__ = ["ConfigError", "FinetuneError", "__version__", "advise", "load", "plan", "train"]


def load(path: str | Path, weights: str | Path | None = None, allow_unverified: bool = False) -> Model:
    """A run directory, checkpoint, export file or export folder, ready to ``predict`` (see ``finetune.api``);
    ``allow_unverified``: open an export that records no sha256 of its tensors or model file."""
    from finetune.api import load as load_model  # torch and friends only when a model is loaded

    return load_model(path, weights, allow_unverified)


def train(
    *overrides: str,
    recipe: str | None = None,
    run_dir: str | Path | None = None,
    progress: str = "auto",
    **params: object,
) -> Run:
    """Fine-tune as ``finetune <overrides>`` would; the run (``.metrics``, ``.dir``, ``.predict``, ``.export``,
    ``.report``). ``finetune.train(dataset="digits", backbone="resnet18", **{"schedule.epochs": 1})``;
    see ``finetune.api.train``."""
    from finetune.api import train as train_run

    return train_run(*overrides, recipe=recipe, run_dir=run_dir, progress=progress, **params)


def plan(*overrides: str, recipe: str | None = None, **params: object) -> Plan:
    """What training would do (``finetune plan``), printed and returned; see ``finetune.api.plan``."""
    from finetune.api import plan as plan_run

    return plan_run(*overrides, recipe=recipe, **params)


def advise(*overrides: str, recipe: str | None = None, out: str | Path | None = None, **params: object) -> Advice:
    """Linear probes by stage -> what to freeze and how to train (``finetune advise``); see ``finetune.api.advise``."""
    from finetune.api import advise as advise_run

    return advise_run(*overrides, recipe=recipe, out=out, **params)
