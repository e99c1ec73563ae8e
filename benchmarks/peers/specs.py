"""What every runner of one (dataset, seed) is told: finetune's recipe for the data, mirrored for the other tools,
and the pretrained weights file they all load."""

from __future__ import annotations

from ..common import compose
from .definitions import ARCH, Dataset, Settings


def weights() -> dict:
    """The timm-format EfficientNet-Lite0 ImageNet weights file finetune's own resolver produces (offline)."""
    from finetune.models.weights import resolve_weights

    record = resolve_weights(ARCH, None, True)
    overlay = record.pretrained_cfg_overlay
    return {
        "file": record.file,
        "sha256": record.sha256,
        "source": record.source,
        "preprocessing": {k: overlay[k] for k in ("mean", "std", "interpolation", "crop_pct")},
    }


def recipe(dataset: Dataset, settings: Settings, seed: int) -> tuple[list[str], dict]:
    """finetune's overrides for one run, and what the other runners take from its config: augmentation, batch
    size, total epochs, image size (segmentation: the crop, its samples, ignore index and decoder); a ValueError
    for augmentation they cannot mirror."""
    root = dataset.path.parent if dataset.kind == "medmnist" else dataset.path
    overrides = [
        *dataset.recipe,
        f"dataset.root={root}",
        f"seed={seed}",
        f"dataset.num_workers={settings.workers}",
        "trainer.accelerator=cpu",
        "trainer.progress_bar=false",
        "logger=csv",
    ]
    if dataset.task == "classification":
        overrides.append(f"dataset.image_size={settings.image_size or dataset.image_size}")
    if settings.batch_size:
        overrides.append(f"schedule.batch_size={settings.batch_size}")
    if not dataset.has_test:
        overrides.append("checkpoints.keep=last")
    if settings.epochs:  # one phase at the freeze depth of the recipe's last (for most: 0, everything)
        freeze = compose(*overrides).schedule.phases[-1].freeze
        overrides.append(f"schedule.phases=[{{name: all, epochs: {settings.epochs}, freeze: {freeze}}}]")
    cfg = compose(*overrides)
    mirrored = MIRRORED_AUGMENT[dataset.task]
    unsupported = [
        k for k in ("shift", "crop_scale", "color_jitter", "hue", "dropout") if k not in mirrored and cfg.augment[k]
    ]
    if unsupported:
        raise ValueError(f"the other tools' runners cannot mirror augment {unsupported} of {dataset.recipe}")
    from_recipe = {
        "augment": {k: cfg.augment[k] for k in mirrored},
        "batch_size": int(cfg.schedule.batch_size),
        "epochs": sum(int(phase.epochs) for phase in cfg.schedule.phases),
        "image_size": settings.image_size or dataset.image_size,
    }
    if dataset.task == "segmentation":  # image_size: the training crop
        from_recipe |= {
            "image_size": int(cfg.dataset.crop_size),
            "samples_per_image": int(cfg.dataset.samples_per_image),
            "ignore_index": int(cfg.dataset.ignore_index),
            "decoder_channels": [int(c) for c in cfg.head.decoder_channels],
        }
    return overrides, from_recipe


# The recipe's augmentation the other tools' runners mirror (run_plain.py, run_smp.py); any other op
# a recipe turns on stops the benchmark before it runs.
MIRRORED_AUGMENT = {
    "classification": ("hflip", "vflip", "rotate", "shift", "zoom"),
    "segmentation": ("hflip", "vflip", "rotate", "zoom", "color_jitter"),
}


def spec(dataset: Dataset, settings: Settings, seed: int, weights_info: dict) -> dict:
    """The JSON spec every runner of one (dataset, seed) gets."""
    overrides, from_recipe = recipe(dataset, settings, seed)
    data = {"file": str(dataset.path)} if dataset.kind == "medmnist" else {"root": str(dataset.path)}
    return {
        "dataset": dataset.name,
        "task": dataset.task,
        "kind": dataset.kind,
        **data,
        "num_classes": dataset.num_classes,
        "has_test": dataset.has_test,
        "seed": seed,
        "threads": settings.threads,
        "workers": settings.workers,
        "arch": ARCH,
        "weights": weights_info["file"],
        "preprocessing": weights_info["preprocessing"],
        **from_recipe,
        "finetune_overrides": overrides,
    }
