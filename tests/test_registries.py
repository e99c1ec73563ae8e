"""The light name lists the config checks use (no torch import) match the registries they name."""
from __future__ import annotations

import subprocess
import sys

from finetune import data, engine, models


def test_light_names_match_the_builders() -> None:
    from finetune.data.configs import CONFIGS
    from finetune.data.datasets import KINDS
    from finetune.data.segmentation import LAYOUTS
    from finetune.engine.optim import FACTORS, OPTIMIZERS
    from finetune.models.heads import HEADS

    assert tuple(KINDS) == tuple(CONFIGS) == data.CLASSIFICATION_DATASETS
    assert tuple(LAYOUTS) == data.SEGMENTATION_DATASETS
    assert tuple(OPTIMIZERS) == engine.OPTIMIZERS
    assert (*FACTORS, "onecycle", "plateau") == engine.SCHEDULERS
    assert tuple(HEADS) == models.HEADS


def test_config_checks_import_no_torch() -> None:
    """What a config error needs must not import torch or Lightning (seconds of start-up)."""
    code = ("import sys, finetune.engine.config, finetune.tasks; "
            "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
