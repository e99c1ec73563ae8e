"""Freezing depth counted in backbone stages, the BatchNorm policy, and named parameter groups.

``freeze=0`` trains everything, ``freeze="all"`` is a linear probe, ``freeze=k`` freezes the stem and
the first k stages, ``freeze=-k`` trains only the last k stages.  With ``bn="frozen"`` every module
of a frozen stage stays in eval mode (BatchNorm keeps its running statistics, dropout/drop-path
off) through every ``.train()`` call; with ``bn="train"`` their BatchNorm statistics keep updating.

With an adapter (``finetune.models.adapters``) the pretrained weights of every stage stay fixed: a
stage the phase trains trains only the adapter's parameters, and the BatchNorm policy holds for
every stage (``bn="frozen"``: all BatchNorm layers in eval mode, the statistics stay the pretrained
ones).
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from finetune.models import BN_POLICIES
from finetune.models.adapters import Adapter, merge_adapters
from finetune.models.backbones import StageMap
from finetune.run.errors import FinetuneError

HEAD = "head"
FSDP_WRAPPED = "_fsdp_wrapped_module."  # in the parameter names of a model FSDP sharded (trainer=fsdp)


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
    hint = (
        f"{model_name} has {n} stages (stem + stage1..stage{n}): use backbone.freeze=0 (train all), "
        f"1..{n} (freeze stem + first k stages), -1..-{n} (train only the last k) or all (linear probe)"
    )
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
        self.adapter: Adapter | None = None  # backbone.adapter: what a trained stage trains (factory sets it)
        self.frozen: tuple[str, ...] = ()
        self.bn_policy = "frozen"
        self._eval_locked: tuple[str, ...] = ()
        self.channels_last = False  # trainer.channels_last: 4-d inputs are made channels-last (set_device_options)
        self.compile_backend: str | None = None  # trainer.compile: the training forward runs through torch.compile
        self._compiled = None  # that compiled forward, made at the first training call (never copied or saved)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training and self.compile_backend is not None:
            if self._compiled is None:
                self._compiled = torch.compile(self._logits, backend=self.compile_backend)
            return self._compiled(x)
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def set_device_options(self, channels_last: bool, compile_backend: str | None) -> None:
        """``trainer.channels_last``: weights and 4-d inputs in channels-last memory format (the values and
        ``state_dict`` keys stay the same). ``compile_backend`` (``trainer.compile``): the forward of training
        (not evaluation) runs through ``torch.compile`` with that backend; the module is not wrapped, so its
        parameter names, checkpoints, freezing, averaging and exports see the plain model, and a change of the
        frozen set (a new phase) recompiles through torch.compile's guards."""
        if compile_backend is not None and compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise FinetuneError(
                f"trainer.compile_backend={compile_backend!r} is not a torch.compile backend; use one of "
                f"{', '.join(torch._dynamo.list_backends(exclude_tags=()))} (inductor: the default)"
            )
        self.channels_last, self.compile_backend, self._compiled = channels_last, compile_backend, None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def __getstate__(self) -> dict:
        """A copy (``deepcopy``: ``merged``, weight averaging) or pickle compiles its own forward when it needs one."""
        return {**self.__dict__, "_compiled": None}

    @property
    def timm_model(self) -> nn.Module:
        """The timm model of the backbone, which carries its ``pretrained_cfg`` (a segmentation
        encoder wraps it as ``backbone.model``)."""
        return getattr(self.backbone, "model", self.backbone)

    def stage_of(self, name: str) -> str:
        """Stage of a name relative to this model (``backbone.…`` or ``head.…``; FSDP's wrapper names too)."""
        prefix, _, rest = name.replace(FSDP_WRAPPED, "").partition(".")
        return self.stage_map.stage_of(rest) if prefix == "backbone" else HEAD

    def trains(self, name: str) -> bool:
        """Whether parameter ``name`` trains in a stage a phase trains: always without an adapter, else
        only the adapter's parameters (the head always trains)."""
        prefix, _, rest = name.replace(FSDP_WRAPPED, "").partition(".")
        return self.adapter is None or prefix != "backbone" or self.adapter.trains(rest)

    def set_frozen(self, frozen: tuple[str, ...], bn_policy: str) -> None:
        """Freeze exactly these stages (unfreezing the others) under a BatchNorm policy."""
        if bn_policy not in BN_POLICIES:
            raise FreezeError(f"backbone.bn={bn_policy!r}: choose one of {', '.join(BN_POLICIES)}")
        self.frozen, self.bn_policy = tuple(frozen), bn_policy
        for name, param in self.named_parameters():
            param.requires_grad_(self.stage_of(name) not in frozen and self.trains(name))
        self._eval_locked = self._locked()
        self.train(self.training)

    def _locked(self) -> tuple[str, ...]:
        """Modules kept in eval mode: under ``bn="frozen"`` every module of a frozen stage, and with an
        adapter every BatchNorm (the pretrained statistics stay)."""
        if self.bn_policy != "frozen":
            return ()
        return tuple(
            f"backbone.{name}"
            for name, stage in _module_stages(self.backbone, self.stage_map)
            if stage in self.frozen or (self.adapter is not None and self._is_bn(name))
        )

    def _is_bn(self, name: str) -> bool:
        return isinstance(self.backbone.get_submodule(name), _NormBase)

    def merged(self) -> FineTuneModel:
        """A copy with the LoRA / DoRA updates folded into plain weights (the original is untouched)."""
        copy = deepcopy(self)
        if copy.adapter is not None:
            merge_adapters(copy.backbone)
            copy.adapter = replace(copy.adapter, merged=True)
            copy._eval_locked = copy._locked()  # the adapted modules are gone
        return copy

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
        own = [n for n, _ in module.named_parameters(recurse=False)] + [
            n for n, _ in module.named_buffers(recurse=False)
        ]
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
    adapter: int = 0  # parameters of the adapter (lora / dora / bitfit) in this stage
    adapter_kind: str | None = None

    @property
    def status(self) -> str:
        """trainable | frozen | the adapter kind (only its parameters train) | mixed | - (no parameters)."""
        if self.params == 0:
            return "-"
        if self.adapter_kind and self.trainable and self.trainable == self.adapter:
            return self.adapter_kind
        return "trainable" if self.trainable == self.params else "frozen" if self.trainable == 0 else "mixed"


def stage_status(model: FineTuneModel) -> list[StageStatus]:
    """Parameters (adapter parameters among them), trainable parameters and BatchNorm mode per stage
    (stem … head)."""
    rows = []
    kind = model.adapter.kind if model.adapter else None
    for stage in (*model.stage_map.stages, HEAD):
        named = [(n, p) for n, p in model.named_parameters() if model.stage_of(n) == stage]
        params = [p for _, p in named]
        adapter = sum(p.numel() for n, p in named if kind and stage != HEAD and model.trains(n))
        norms = [m for n, m in model.named_modules() if isinstance(m, _NormBase) and n and model.stage_of(n) == stage]
        mode = (
            "-"
            if not norms
            else (
                "train" if all(m.training for m in norms) else "eval" if not any(m.training for m in norms) else "mixed"
            )
        )
        rows.append(
            StageStatus(
                stage,
                sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad),
                len(norms),
                mode,
                adapter,
                kind,
            )
        )
    return rows


def stage_learning_rates(
    model: FineTuneModel, lr: float, backbone_lr_mult: float, layer_decay: float | None = None
) -> dict[str, float]:
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
        group = groups.setdefault(
            key, {"name": key, "params": [], "lr": lrs[stage], "weight_decay": 0.0 if no_decay else weight_decay}
        )
        group["params"].append(param)
    order = {s: i for i, s in enumerate((*model.stage_map.stages, HEAD))}
    return sorted(groups.values(), key=lambda g: (order[g["name"].split("/")[0]], g["name"]))
