"""finetune: turn an ImageNet-pretrained timm backbone into a model for your images.

The Python API: ``finetune.load(path)`` opens a run directory or an export and predicts
(``finetune.api``); the command line is ``finetune`` (``finetune.cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune.run.errors import FinetuneError
from finetune.version import __version__

if TYPE_CHECKING:
    from finetune.api import Model

__all__ = ["FinetuneError", "__version__", "load"]


def load(path: str | Path, weights: str | Path | None = None, allow_unverified: bool = False) -> Model:
    """A run directory, checkpoint, export file or export folder, ready to ``predict`` (see ``finetune.api``);
    ``allow_unverified``: open an export that records no sha256 of its tensors or model file."""
    from finetune.api import load as load_model  # torch and friends only when a model is loaded

    return load_model(path, weights, allow_unverified)
