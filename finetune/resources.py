"""Where the packaged ``conf/`` and ``recipes/`` live (editable checkout or installed wheel)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def conf_dir() -> Path:
    """The Hydra config directory shipped with the package."""
    return Path(str(files("finetune.conf")))


def recipes_dir() -> Path:
    """The complete experiments shipped with the package."""
    return Path(str(files("finetune.recipes")))


def config_groups() -> set[str]:
    """The config groups a command line may select (``conf/<group>/``, ``recipes/<group>/``)."""
    return {p.name for root in (conf_dir(), recipes_dir()) for p in root.iterdir() if p.is_dir() and p.name[0] != "_"}
