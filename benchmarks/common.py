"""Shared helpers: environment record, interleaved timing, tiny configs, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
HYMENOPTERA = SHARED_DATA / "classification" / "hymenoptera"
MEDMNIST = SHARED_DATA / "medmnist"
CAMVID = SHARED_DATA / "segmentation" / "camvid_subset"


def environment() -> dict:
    """Machine, library versions and threads: recorded in every result file."""
    import lightning
    import timm

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def interleaved(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call every side once per repetition, alternating the order each repetition; collect values."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            out[name].append(sides[name]())
    return out


def compose(*overrides: str):
    """Compose the real ``conf/`` with overrides (as ``python -m finetune`` would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from finetune.resources import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def build(backbone: str, image_size: int, num_classes: int = 10, pretrained: bool = False, *overrides: str):
    """(cfg, FineTuneModel) for a conf/backbone group name, random init unless ``pretrained``."""
    from finetune.models.weights import resolve_weights
    from finetune.tasks.registry import get_task

    cfg = compose(
        f"backbone={backbone}",
        f"dataset.image_size={image_size}",
        f"backbone.pretrained={str(pretrained).lower()}",
        *overrides,
    )
    record = resolve_weights(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.pretrained)
    return cfg, get_task(cfg.task).build_model(cfg, record, 3, num_classes)


def fake_batches(n: int, batch_size: int, image_size: int, num_classes: int = 10, seed: int = 0) -> list:
    """``n`` pre-made (images, targets) batches held in memory."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch_size, 3, image_size, image_size, generator=g),
            torch.randint(0, num_classes, (batch_size,), generator=g),
        )
        for _ in range(n)
    ]


def write_result(name: str, payload: dict, out_dir: Path = RESULTS) -> Path:
    """``<out_dir>/<name>.json``: the payload with the environment, written atomically (a reader or a second
    writer never sees half a file)."""
    from finetune.run.artifacts import write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"benchmark": name, "environment": environment(), **payload}, indent=2) + "\n"
    return write_text(out_dir / f"{name}.json", text)
