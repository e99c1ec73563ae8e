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
