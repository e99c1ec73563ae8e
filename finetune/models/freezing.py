"""Freezing depth counted in backbone stages, the BatchNorm policy, and named parameter groups.

``freeze=0`` trains everything, ``freeze="all"`` is a linear probe, ``freeze=k`` freezes the stem and
the first k stages, ``freeze=-k`` trains only the last k stages.  With ``bn="frozen"`` every module
of a frozen stage stays in eval mode (BatchNorm keeps its running statistics, dropout/drop-path
off) through every ``.train()`` call; with ``bn="train"`` their BatchNorm statistics keep updating.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from finetune.models.backbones import StageMap
from finetune.errors import FinetuneError
from finetune.models import BN_POLICIES

HEAD = "head"


class FreezeError(FinetuneError, ValueError):
    """A freezing depth that does not fit the backbone."""


def frozen_stages(stage_map: StageMap, freeze: int | str, model_name: str = "backbone") -> tuple[str, ...]:
    """Stage names frozen by ``freeze`` (0 | "all" | k | -k), stem first."""
    n = stage_map.num_stages
    depth = _depth(freeze, n, model_name)
    if depth == 0:
        return ()
    with_stem = 1 if "stem" in stage_map.stages else 0
    return stage_map.stages[: depth + with_stem]


def _depth(freeze: int | str, n: int, model_name: str) -> int:
    hint = (f"{model_name} has {n} stages (stem + stage1..stage{n}): use backbone.freeze=0 (train all), "
            f"1..{n} (freeze stem + first k stages), -1..-{n} (train only the last k) or all (linear probe)")
    if isinstance(freeze, str):
        if freeze.strip().lower() == "all":
            return n
        try:
            freeze = int(freeze)
        except ValueError:
            raise FreezeError(f"backbone.freeze={freeze!r} is not a depth; {hint}") from None
    if isinstance(freeze, bool) or not isinstance(freeze, int) or abs(freeze) > n:
        raise FreezeError(f"backbone.freeze={freeze!r} is out of range; {hint}")
    return freeze if freeze >= 0 else n + freeze


class FineTuneModel(nn.Module):
    """A backbone with a new head; remembers which stages are frozen and keeps them in eval mode."""

    def __init__(self, backbone: nn.Module, head: nn.Module, stage_map: StageMap) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.stage_map = stage_map
        self.frozen: tuple[str, ...] = ()
        self.bn_policy = "frozen"
        self._eval_locked: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def timm_model(self) -> nn.Module:
        """The timm model of the backbone, which carries its ``pretrained_cfg`` (a segmentation
        encoder wraps it as ``backbone.model``)."""
        return getattr(self.backbone, "model", self.backbone)

    def stage_of(self, name: str) -> str:
        """Stage of a name relative to this model (``backbone.…`` or ``head.…``)."""
        prefix, _, rest = name.partition(".")
        return self.stage_map.stage_of(rest) if prefix == "backbone" else HEAD

    def set_frozen(self, frozen: tuple[str, ...], bn_policy: str) -> None:
        """Freeze exactly these stages (unfreezing the others) under a BatchNorm policy."""
        if bn_policy not in BN_POLICIES:
            raise FreezeError(f"backbone.bn={bn_policy!r}: choose one of {', '.join(BN_POLICIES)}")
        self.frozen, self.bn_policy = tuple(frozen), bn_policy
        for name, param in self.named_parameters():
            param.requires_grad_(self.stage_of(name) not in frozen)
        self._eval_locked = tuple(
            f"backbone.{name}" for name, stage in _module_stages(self.backbone, self.stage_map)
            if bn_policy == "frozen" and stage in frozen
        )
        self.train(self.training)

    def train(self, mode: bool = True) -> FineTuneModel:
        super().train(mode)
        for name in self._eval_locked:
            self.get_submodule(name).eval()
        return self


def _module_stages(backbone: nn.Module, stage_map: StageMap) -> list[tuple[str, str]]:
    """(name, stage) of every module holding its own tensors (e.g. BatchNormAct) and every leaf."""
    found = []
    for name, module in backbone.named_modules():
        if not name:  # the backbone itself: its own tensors (e.g. a ViT's cls_token) have no mode
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)] + [n for n, _ in module.named_buffers(recurse=False)]
        if own:
            found.append((name, stage_map.stage_of(f"{name}.{own[0]}")))
        elif not any(module.children()):
            found.append((name, stage_map.stage_of(name)))
    return found


@dataclass(frozen=True)
class StageStatus:
    """One row of the stage table printed at the start of a phase."""

    stage: str
    params: int
    trainable: int
    norm_layers: int
    bn_mode: str

    @property
    def status(self) -> str:
        if self.params == 0:
            return "-"
        return "trainable" if self.trainable == self.params else "frozen" if self.trainable == 0 else "mixed"


def stage_status(model: FineTuneModel) -> list[StageStatus]:
    """Parameters, trainable parameters and BatchNorm mode per stage (stem … head)."""
    rows = []
    for stage in (*model.stage_map.stages, HEAD):
        params = [p for n, p in model.named_parameters() if model.stage_of(n) == stage]
        norms = [m for n, m in model.named_modules()
                 if isinstance(m, _NormBase) and n and model.stage_of(n) == stage]
        mode = "-" if not norms else ("train" if all(m.training for m in norms)
                                      else "eval" if not any(m.training for m in norms) else "mixed")
        rows.append(StageStatus(stage, sum(p.numel() for p in params),
                                sum(p.numel() for p in params if p.requires_grad), len(norms), mode))
    return rows


def stage_learning_rates(model: FineTuneModel, lr: float, backbone_lr_mult: float,
                         layer_decay: float | None = None) -> dict[str, float]:
    """Real learning rate per stage: the head gets ``lr``; backbone stages ``lr·mult·decay^(depth from top)``."""
    stages = model.stage_map.stages
    decay = 1.0 if layer_decay is None else float(layer_decay)
    rates = {s: lr * backbone_lr_mult * decay ** (len(stages) - 1 - i) for i, s in enumerate(stages)}
    rates[HEAD] = lr
    return rates


def param_groups(model: FineTuneModel, lrs: dict[str, float], weight_decay: float) -> list[dict]:
    """Trainable parameters grouped by stage, named ``<stage>`` and ``<stage>/no_decay``.

    Biases, norm weights and the model's ``no_weight_decay()`` tensors (e.g. ViT position
    embeddings) get no weight decay.
    """
    skip = {f"backbone.{n}" for n in getattr(model.backbone, "no_weight_decay", lambda: set())()}
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        stage = model.stage_of(name)
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        key = f"{stage}/no_decay" if no_decay else stage
        group = groups.setdefault(key, {"name": key, "params": [], "lr": lrs[stage],
                                        "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
    order = {s: i for i, s in enumerate((*model.stage_map.stages, HEAD))}
    return sorted(groups.values(), key=lambda g: (order[g["name"].split("/")[0]], g["name"]))
