"""Parameter-efficient fine-tuning as a freezing mode (``backbone.adapter=none|lora|dora|bitfit``).

With an adapter the pretrained weights of every backbone stage stay fixed: in the stages a phase
trains only the adapter's parameters train, in the stages it freezes nothing does, and the head
always trains (``FineTuneModel.set_frozen``).

* ``lora`` / ``dora``: HF ``peft`` wraps the target modules (``nn.Linear``, dense ``nn.Conv2d``) with a
  low-rank update ``W + (alpha / rank) · B·A`` (DoRA also learns a per-output magnitude). B starts at
  zero, so an untrained adapter computes exactly the pretrained model. ``merge_adapters`` folds the
  updates into plain weights (what deployments get).
* ``bitfit``: no new modules; the backbone's biases and normalization affine parameters train.

Default targets (``backbone.adapter_targets=null``), from module types and kernel sizes outside the
stem: every Linear layer and pointwise (1x1, groups=1) convolution (a ViT's qkv/proj/fc1/fc2, the
conv_pw/conv_pwl of an EfficientNet, the conv1/conv3 of a bottleneck). Where those hold under a
quarter of the dense weights (basic-block ResNets, whose blocks are 3x3), every dense convolution
outside the stem. A list of patterns overrides: each is matched (``fnmatch``) against a module's
full name or its trailing part, e.g. ``[qkv, fc2]`` or ``["layer4.*.conv2"]``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf
from timm.layers import Conv2dSame
from torch import nn

from finetune.models import ADAPTERS
from finetune.models.backbones import StageMap
from finetune.run.errors import FinetuneError

POINTWISE_SHARE = 0.25  # below this share of the dense weights, default targets include k×k convolutions
_EXAMPLES = 6  # module names listed in an error


@dataclass(frozen=True)
class AdapterSpec:
    """What the config asks for (``backbone.adapter*``; a config written before the keys existed: none)."""

    kind: str = "none"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> AdapterSpec:
        targets = OmegaConf.select(cfg, "backbone.adapter_targets", default=None)
        return cls(
            str(OmegaConf.select(cfg, "backbone.adapter", default="none")),
            int(OmegaConf.select(cfg, "backbone.adapter_rank", default=cls.rank)),
            float(OmegaConf.select(cfg, "backbone.adapter_alpha", default=cls.alpha)),
            None if targets is None else tuple(str(t) for t in targets),
        )


@dataclass(frozen=True)
class Adapter:
    """An adapter attached to a backbone. Names are relative to the backbone module."""

    kind: str
    rank: int | None  # lora / dora only
    alpha: float | None
    targets: tuple[str, ...]  # adapted modules (lora / dora); () for bitfit
    tunable: frozenset[str]  # parameters that train in a stage a phase trains
    added: frozenset[str]  # tensors the adapter added (not in the pretrained weights)
    parameters: int  # elements of the tunable parameters
    merged: bool = False  # folded into plain weights (an export's copy)

    def trains(self, name: str) -> bool:
        """Whether backbone parameter ``name`` trains in a stage a phase trains."""
        return name in self.tunable

    def to_dict(self) -> dict:
        """What export metadata records."""
        return {
            "kind": self.kind,
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "parameters": self.parameters,
            "merged": self.merged,
        }


# --- which modules -------------------------------------------------------------------------------


def adaptable(module: nn.Module) -> bool:
    """A layer LoRA can adapt and merge exactly: Linear, or a dense (groups=1) Conv2d computing a plain
    convolution (TF-"same" padding only at 1x1, where it pads nothing; no weight standardization)."""
    if isinstance(module, nn.Linear):
        return True
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        return False
    plain = type(module).forward is nn.Conv2d.forward
    return plain or (isinstance(module, Conv2dSame) and module.kernel_size == (1, 1))


def _weights(modules: dict[str, nn.Module]) -> int:
    return sum(m.weight.numel() for m in modules.values())


def default_targets(backbone: nn.Module, stage_map: StageMap) -> list[str]:
    """Linear + pointwise convolutions outside the stem; all dense convolutions outside the stem where
    the pointwise ones hold under ``POINTWISE_SHARE`` of the dense weights."""
    dense = {
        n: m
        for n, m in backbone.named_modules()
        if n and adaptable(m) and stage_map.stage_by_name.get(n, "stem") != "stem"
    }
    pointwise = {n: m for n, m in dense.items() if isinstance(m, nn.Linear) or m.kernel_size == (1, 1)}
    chosen = pointwise if _weights(pointwise) >= POINTWISE_SHARE * _weights(dense) else dense
    return list(chosen)


def matched_targets(backbone: nn.Module, patterns: tuple[str, ...], model_name: str) -> list[str]:
    """Adaptable modules whose full name, or trailing part, matches one of ``patterns``; each pattern
    must match at least one."""
    candidates = [n for n, m in backbone.named_modules() if n and adaptable(m)]
    found: dict[str, None] = {}
    for pattern in patterns:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, f"*.{pattern}")]
        if not hits:
            raise FinetuneError(
                f"backbone.adapter_targets: {pattern!r} matches no Linear or dense Conv2d module of "
                f"{model_name}; its adaptable modules are e.g. {', '.join(candidates[:_EXAMPLES])} "
                "(patterns match a full name or its end, * and ? as wildcards; null: the default)"
            )
        found |= dict.fromkeys(hits)
    return list(found)


# --- attaching -----------------------------------------------------------------------------------


def lora(backbone: nn.Module, stage_map: StageMap, spec: AdapterSpec, model_name: str) -> Adapter:
    """LoRA layers injected by peft into the target modules."""
    return _low_rank(backbone, stage_map, spec, model_name, dora=False)


def dora(backbone: nn.Module, stage_map: StageMap, spec: AdapterSpec, model_name: str) -> Adapter:
    """DoRA layers (LoRA plus a learned magnitude per output) injected by peft into the target modules."""
    return _low_rank(backbone, stage_map, spec, model_name, dora=True)


def _low_rank(backbone: nn.Module, stage_map: StageMap, spec: AdapterSpec, model_name: str, dora: bool) -> Adapter:
    """LoRA / DoRA layers injected by peft into the target modules."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    targets = (
        matched_targets(backbone, spec.targets, model_name) if spec.targets else default_targets(backbone, stage_map)
    )
    if not targets:
        raise FinetuneError(
            f"backbone.adapter={spec.kind}: {model_name} has no Linear or dense Conv2d layer "
            "outside its stem to adapt; name some with backbone.adapter_targets or use "
            "backbone.adapter=bitfit"
        )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        use_dora=dora,
        lora_dropout=0.0,
        bias="none",
        target_modules="^(?:" + "|".join(map(re.escape, targets)) + ")$",
    )
    inject_adapter_in_model(config, backbone)
    added = frozenset(
        f"{name}.{own}"
        for name, layer in backbone.named_modules()
        if isinstance(layer, BaseTunerLayer)
        for own, _ in layer.named_parameters()
        if not own.startswith("base_layer.")
    )
    return Adapter(spec.kind, spec.rank, spec.alpha, tuple(targets), added, added, _count(backbone, added))


def _is_norm(module: nn.Module) -> bool:
    """A normalization layer (BatchNorm, LayerNorm, GroupNorm, timm's norms …): by class name."""
    return "Norm" in type(module).__name__


def bitfit(backbone: nn.Module, stage_map: StageMap, spec: AdapterSpec, model_name: str) -> Adapter:
    """Biases and normalization affine parameters (BitFit, extended to norms)."""
    tunable = frozenset(
        f"{name}.{own}" if name else own
        for name, module in backbone.named_modules()
        for own, _ in module.named_parameters(recurse=False)
        if own == "bias" or _is_norm(module)
    )
    return Adapter(spec.kind, None, None, (), tunable, frozenset(), _count(backbone, tunable))


def _count(backbone: nn.Module, names: frozenset[str]) -> int:
    return sum(p.numel() for n, p in backbone.named_parameters() if n in names)


def attach_adapter(
    backbone: nn.Module, stage_map: StageMap, spec: AdapterSpec, model_name: str = "backbone"
) -> tuple[Adapter | None, StageMap]:
    """Attach ``spec``'s adapter (``finetune.models.ADAPTERS``) to ``backbone`` in place; the adapter (None
    for ``none``) and the stage map extended by the tensors and modules it added (each in the stage of the
    module it adapts)."""
    adapter = ADAPTERS.get(spec.kind).attach(backbone, stage_map, spec, model_name)
    return (None, stage_map) if adapter is None else (adapter, _extended(stage_map, backbone, adapter.targets))


def _extended(stage_map: StageMap, backbone: nn.Module, targets: tuple[str, ...]) -> StageMap:
    """``stage_map`` plus every new name, placed in the stage of the adapted module that holds it."""
    names = [n for n, _ in backbone.named_parameters()] + [n for n, _ in backbone.named_buffers()]
    names += [n for n, _ in backbone.named_modules() if n]
    by_name = dict(stage_map.stage_by_name)
    for name in names:
        owner = max((t for t in targets if name.startswith(f"{t}.")), key=len, default=None)
        if owner is not None and name not in by_name:
            by_name[name] = stage_map.stage_of(owner)
    return replace(stage_map, stage_by_name=by_name)


def merge_adapters(backbone: nn.Module) -> None:
    """Fold every LoRA / DoRA update into its base layer and put the plain layer back, in place: the
    backbone's tensors are then named as in the pretrained model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in list(backbone.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent), child, layer.get_base_layer())
