"""The network: timm backbones (offline-first weights), stages and freezing, heads, decoders,
adapters, layer counting.

This file holds the registries the config checks read (no torch import), so a bad config is reported in
a second; each entry names its builder in a submodule, imported on first use. The submodules import these
registries, so the builders' own types (``models.weights.WeightsRecord``, ``models.backbones.StageMap``,
``models.adapters.AdapterSpec`` / ``Adapter``, ``models.freezing.FineTuneModel``) are named in docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune.run.registry import Entry, Registry, resolve

if TYPE_CHECKING:
    from torch import nn

BN_POLICIES = ("frozen", "train")  # BatchNorm in frozen stages: eval mode kept | statistics updated


@dataclass(frozen=True)
class HeadKind(Entry):
    """A classification head (``head=<name>``) on pooled backbone features."""

    builder: str  # (in_features, num_classes, **head options) -> nn.Module

    def build(self, in_features: int, num_classes: int, **options) -> nn.Module:
        return resolve(self.builder)(in_features, num_classes, **options)


@dataclass(frozen=True)
class DecoderKind(Entry):
    """A segmentation decoder of segmentation_models_pytorch (``head=<name>``, smp's architecture name)."""

    builder: str = "finetune.models.decoders:build_segmentation_model"

    def build(self, record: Any, in_chans: int, num_classes: int, drop_path_rate: float = 0.0, **options) -> nn.Module:
        """A ``FineTuneModel``: the encoder the ``WeightsRecord`` names under this decoder (``options``: the
        decoder's own keys)."""
        return resolve(self.builder)(record, self.name, in_chans, num_classes, drop_path_rate, **options)


@dataclass(frozen=True)
class AdapterKind(Entry):
    """A parameter-efficient fine-tuning mode (``backbone.adapter=<name>``)."""

    builder: str | None  # (backbone, stage map, spec, model name) -> Adapter; None: nothing attached

    def attach(self, backbone: nn.Module, stage_map: Any, spec: Any, model_name: str) -> Any:
        """Attach this adapter (an ``AdapterSpec``) to ``backbone`` in place, its stages in ``stage_map``; the
        ``Adapter`` attached, or None (the backbone trains as it is)."""
        return None if self.builder is None else resolve(self.builder)(backbone, stage_map, spec, model_name)


HEADS: Registry[HeadKind] = Registry(
    "head.kind",
    [
        HeadKind("linear", "dropout (optional) then one linear layer", "finetune.models.heads:linear_head"),
        HeadKind(
            "mlp",
            "hidden linear → activation → dropout layers, then the output layer",
            "finetune.models.heads:mlp_head",
        ),
    ],
)
DECODERS: Registry[DecoderKind] = Registry(
    "head.kind",
    [
        DecoderKind("unet", "U-Net: upsampling blocks with skip connections from every encoder stage"),
        DecoderKind("fpn", "feature pyramid network: every stage's features merged at 1/4 of the input"),
        DecoderKind("deeplabv3plus", "DeepLabV3+: atrous spatial pyramid pooling plus a low-level skip"),
    ],
)
ADAPTERS: Registry[AdapterKind] = Registry(
    "backbone.adapter",
    [
        AdapterKind("none", "no adapter: the phases' stages train their own weights", None),
        AdapterKind("lora", "low-rank updates of Linear and dense conv layers", "finetune.models.adapters:lora"),
        AdapterKind("dora", "LoRA plus a learned magnitude per output", "finetune.models.adapters:dora"),
        AdapterKind("bitfit", "the biases and normalization parameters train", "finetune.models.adapters:bitfit"),
    ],
)
