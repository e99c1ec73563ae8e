"""Warnings for inputs that are legal but unwise, raised where the data and the model are both known.

(Named ``input_warnings`` so it cannot shadow the standard library's ``warnings``.) Nothing here stops a run:
each message says what is unwise, what it costs and what to do instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from torch import nn

from finetune.data.base import FinetuneDataModule
from finetune.data.inspection.store import leak_warning
from finetune.models.freezing import FineTuneModel
from finetune.training.distributed import is_global_zero

log = logging.getLogger(__name__)

SMALL_SPLIT = 30  # images: fewer in val / test make selection and reported scores coarse
MIN_FEATURE_PX = 2  # the backbone's last feature map should be at least this many pixels wide


def advise(model: FineTuneModel, data: FinetuneDataModule) -> list[str]:
    """Log (on rank 0) and return the warnings for this model on this data."""
    messages = [
        *image_size_advice(model.timm_model, data.preprocessing.size),
        *split_advice(data.split_sizes, data.test_is_val),
    ]
    leak = leak_warning(data.splits)  # what `finetune inspect` found in these splits, if it looked
    messages += [leak] if leak else []
    if is_global_zero():
        for message in messages:
            log.warning(message)
    return messages


def reductions(backbone: nn.Module) -> list[int]:
    """How much each feature level of the backbone is downsampled: timm's ``feature_info``, one dict per
    level, as a list (a classifier) or a ``FeatureInfo`` (a ``features_only`` encoder), which both index."""
    info = getattr(backbone, "feature_info", None) or ()
    return [info[i]["reduction"] for i in range(len(info)) if isinstance(info[i], Mapping) and "reduction" in info[i]]


def total_stride(backbone: nn.Module) -> int | None:
    """How much the backbone's deepest stage is downsampled, None if unknown."""
    levels = reductions(backbone)
    return max(levels) if levels else None


def image_size_advice(backbone: nn.Module, size: Sequence[int]) -> list[str]:
    """A warning when the backbone's last feature map would be smaller than ``MIN_FEATURE_PX``."""
    stride, side = total_stride(backbone), min(size)
    if stride is None or side >= MIN_FEATURE_PX * stride:
        return []
    name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture", type(backbone).__name__)
    native = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size")
    levels = reductions(backbone)
    starved = sum(r > side for r in levels)
    return [
        f"dataset.image_size={side} is small for {name}: it downsamples {stride}x, so its last feature map "
        f"is {side / stride:g} px wide"
        + (f" and {starved} of its {len(levels)} feature levels see less than one pixel" if starved else "")
        + f"; its pretrained features need some resolution: use dataset.image_size>={MIN_FEATURE_PX * stride}"
        + (f" (the weights were trained at {native[-1]})" if native else "")
    ]


def split_advice(sizes: Mapping[str, int], test_is_val: bool = False) -> list[str]:
    """Warnings for val / test splits too small to pick a checkpoint or report a score on; none for the test
    split where it is the val split (``test_is_val``: the run's no-test-split line says so)."""
    messages = []
    roles = {"val": "pick the best epoch", "test": "report a score"}
    if test_is_val:
        del roles["test"]
    for split, role in roles.items():
        n = sizes.get(split)
        if n is None or n >= SMALL_SPLIT:
            continue
        step = f"{1 / n:.2g}" if n else "undefined"
        messages.append(
            f"the {split} split has {n} image(s): too few to {role} reliably (a per-image metric such as "
            f"accuracy moves in steps of 1/{n} = {step}); use at least {SMALL_SPLIT} "
            f"(dataset.val_fraction / dataset.test_fraction, or more {split} images)"
        )
    return messages
