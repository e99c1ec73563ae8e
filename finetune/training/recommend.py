"""The lecture's transfer-learning rules, measured on the user's data: from the per-stage linear-probe
curve (``finetune.training.probing``) and the data's size, which stages to freeze, which schedule and
which learning rates (``finetune advise``).

Readings
  curve      s_1 … s_N: the val score of a linear probe after each of the N stages (accuracy;
             multi-label: mean AUC). Stage N gives the features a linear probe trains on.
  peak b     the stage with the best score (of equal scores, the later stage).
  domain     close to ImageNet when b = N: the curve peaks at the last stage, every stage's ImageNet
             features help. Far when b < N: the curve flattens or peaks early, the N - b stages after
             the peak do not help this data as pretrained and have to be retrained.
  tolerance  one standard error of the best score on the val split, sqrt(s_b (1 - s_b) / n_val): the
             reasons say when the peak is within it (a flat top; a larger val split would settle it)
             and call a last stage more than this below the peak an early peak.
  size       n = train images per class (multi-label: positives per label); few below ``FEW``,
             many from ``MANY``.

Rules (the first that applies)
  1. few, close   linear probe: backbone.freeze=all, schedule=linear_probe (lr 1e-2).
  2. few, far     keep the stages up to the peak frozen, retrain those after it:
                  schedule=finetune backbone.freeze=b (backbone lr 0.1x).
  3. far          full fine-tune with lower rates for lower stages: backbone.freeze=0, backbone lr
                  0.2x, layer_decay 0.8 (the early stages fit already; the top ones move most).
  4. close, not many   gradual unfreezing: the head alone, the last stage, then all (schedule=gradual).
  5. close, many  full fine-tune in small steps: backbone.freeze=0, backbone lr 0.1x.
  and   largest / smallest train class > ``IMBALANCED``: imbalance=weighted_loss.
  and   few images and a transformer backbone: backbone.adapter=lora is named as an alternative.
Learning rates are the shipped schedules' own (conf/schedule: finetune 5e-3 with the backbone at 0.1x,
linear_probe 1e-2; the far-domain 0.2x / 0.8 layer decay are recipes/medical/blood.yaml's, chosen on val).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

FEW = 100  # train images per class below which few parameters should train
MANY = 1000  # train images per class from which the whole backbone can train from the start
IMBALANCED = 3.0  # largest / smallest train class: weight the loss (as imbalance=auto decides)

LINEAR_PROBE = {"schedule": "linear_probe", "backbone.freeze": "all", "schedule.lr": 1e-2}
FINETUNE = {
    "schedule": "finetune",
    "backbone.freeze": 0,
    "schedule.lr": 5e-3,
    "schedule.backbone_lr_mult": 0.1,
    "schedule.layer_decay": None,
}
FAR_FINETUNE = {**FINETUNE, "schedule.backbone_lr_mult": 0.2, "schedule.layer_decay": 0.8}
GRADUAL = {"schedule": "gradual", "schedule.lr": 5e-3, "schedule.backbone_lr_mult": 0.1}


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """What to train: the config settings (key -> value, as overrides), which rule chose them and why."""

    settings: dict[str, object]
    rule: int
    domain: str  # "close" | "far"
    size: str  # "few" | "medium" | "many"
    peak: int  # 1-based stage with the best score
    tolerance: float
    reasons: list[str]
    alternative: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tolerance(best: float, n_val: int) -> float:
    """One binomial standard error of a score ``best`` on ``n_val`` val images."""
    return math.sqrt(max(best * (1 - best), 0.0) / n_val) if n_val else 1.0


def size_band(per_class: float) -> str:
    """few | medium | many train images per class."""
    return "few" if per_class < FEW else "many" if per_class >= MANY else "medium"


def domain_reason(curve: Sequence[float], peak: int, tol: float, n_val: int) -> str:
    """What the curve says about the distance from ImageNet, with its uncertainty."""
    n, top = len(curve), curve[peak - 1]
    noise = f"{tol:.3f} on {n_val} val images"
    if peak == n:
        runner_up = max(curve[:-1], default=top)
        flat = (
            f", by less than one standard error ({noise}): a flat top reads the same" if top - runner_up < tol else ""
        )
        return (
            f"close to ImageNet: the probe peaks at the last stage (stage{n}: {top:.3f}, the next best "
            f"{runner_up:.3f}){flat}"
        )
    shape = "peaks early" if curve[-1] < top - tol else "flattens"
    return (
        f"far from ImageNet: the curve {shape} (stage{peak}: {top:.3f}, the last stage {curve[-1]:.3f}; "
        f"one standard error: {noise}): "
        f"the {n - peak} stage(s) after stage{peak} do not help this data as pretrained"
    )


def recommend(
    curve: Sequence[float], n_val: int, per_class: float, imbalance: float = 1.0, transformer: bool = False
) -> Recommendation:
    """Apply the module's rules to a probe curve (scores of stage 1 … N) and the data's size."""
    if not curve:
        raise ValueError("recommend() needs the score of at least one stage")
    n = len(curve)
    peak = max(range(1, n + 1), key=lambda i: (curve[i - 1], i))
    tol = tolerance(curve[peak - 1], n_val)
    domain, size = ("close" if peak == n else "far"), size_band(per_class)
    why = [
        domain_reason(curve, peak, tol, n_val),
        f"{per_class:.0f} train images per class: {size} (few < {FEW} <= medium < {MANY} <= many)",
    ]
    if size == "few" and domain == "close":
        rule, settings = 1, dict(LINEAR_PROBE)
        why.append("few images, close domain: train only a new head on the frozen features (linear probe)")
    elif size == "few":
        rule, settings = 2, {**FINETUNE, "backbone.freeze": peak}
        why.append(
            f"few images, far domain: keep stem..stage{peak} frozen (their features work best) and "
            f"retrain the {n - peak} stage(s) after them at 0.1x the head's lr"
        )
    elif domain == "far":
        rule, settings = 3, dict(FAR_FINETUNE)
        why.append(
            "enough images, far domain: fine-tune every stage; backbone lr 0.2x the head's and layer decay "
            "0.8, so the early stages (which fit already) move least and the top ones most"
        )
    elif size == "medium":
        rule, settings = 4, dict(GRADUAL)
        why.append(
            "close domain, a medium-sized dataset: gradual unfreezing (head alone on cached features, "
            "then the last stage, then all with layer decay)"
        )
    else:
        rule, settings = 5, dict(FINETUNE)
        why.append("close domain, many images: fine-tune everything in small steps (backbone lr 0.1x the head's)")
    if imbalance > IMBALANCED:
        settings["imbalance"] = "weighted_loss"
        why.append(f"largest/smallest train class {imbalance:.1f} > {IMBALANCED:g}: weight the loss by class")
    alternative = None
    if transformer and size == "few":
        alternative = (
            "backbone.adapter=lora backbone.freeze=0 schedule=finetune: low-rank updates in every block "
            "train a few parameters instead of whole stages (few images, transformer backbone)"
        )
    return Recommendation(settings, rule, domain, size, peak, round(tol, 4), why, alternative)
