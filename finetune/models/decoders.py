"""Segmentation models: a timm encoder (``features_only``, our offline-first weights) under a
segmentation_models_pytorch decoder, with the same stages as the classification backbone.

smp builds ``tu-<timm name>`` encoders with ``timm.create_model(..., pretrained=True, **kwargs)``;
our weights file reaches timm through ``pretrained_cfg_overlay`` (a path passed as smp's
``encoder_weights`` would be read as a download tag). The encoder's stages are the backbone's
own (timm ``group_matcher``), so ``backbone.freeze=k`` means the same thing for both tasks.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from finetune.models.backbones import StageMap, build_stage_map
from finetune.models.freezing import FineTuneModel
from finetune.models.weights import WeightsRecord, announce
from finetune.run.errors import FinetuneError


class DecoderHead(nn.Module):
    """smp decoder + segmentation head: encoder features → per-pixel logits at the input size."""

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module) -> None:
        super().__init__()
        self.decoder, self.segmentation_head = decoder, segmentation_head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))


def build_segmentation_model(
    record: WeightsRecord, decoder: str, in_chans: int, num_classes: int, drop_path_rate: float = 0.0, **decoder_options
) -> FineTuneModel:
    """Encoder ``record`` (pretrained unless its source is "random") + the ``decoder`` of smp (an
    architecture name of ``finetune.models.DECODERS``); ``decoder_options``: smp's arguments of that
    architecture (the ``head`` keys; one left out takes smp's default)."""
    if drop_path_rate:
        decoder_options["drop_path_rate"] = drop_path_rate  # reaches timm.create_model through smp
    announce(record)  # timm's own lines about the file are dropped
    try:
        net = smp.create_model(
            decoder,
            encoder_name=f"tu-{record.timm_name}",
            encoder_weights=True if record.source != "random" else None,
            in_channels=in_chans,
            classes=num_classes,
            pretrained_cfg_overlay=dict(record.pretrained_cfg_overlay),
            **decoder_options,
        )
    except ValueError as err:  # an encoder whose feature strides smp cannot use, or a decoder option it refuses
        reason = str(err).rstrip(".")
        raise FinetuneError(
            f"smp cannot build head={decoder} on backbone {record.model}: {reason}; fix the head.* option it "
            "names, or try a CNN backbone such as resnet18 or efficientnet_lite0"
        ) from None
    return FineTuneModel(
        net.encoder, DecoderHead(net.decoder, net.segmentation_head), encoder_stage_map(net.encoder, record.model)
    )


def encoder_stage_map(encoder: nn.Module, arch: str) -> StageMap:
    """Stages of an smp ``tu-`` encoder, named as in the classification backbone of ``arch``.

    timm's feature wrappers rename flattened children (``blocks.1`` → ``blocks_1``); each name is
    mapped back to the classifier's name and looked up in its ``group_matcher`` stages.
    """
    with torch.device("meta"):
        classifier = timm.create_model(arch, num_classes=0)
    stages = build_stage_map(classifier)
    names = [n for n, _ in encoder.named_parameters()] + [n for n, _ in encoder.named_buffers()]
    names += [n for n, _ in encoder.named_modules() if n not in ("", "model")]  # not the wrappers themselves
    stage_by_name = {}
    for name in names:
        original = _classifier_name(name.removeprefix("model."), stages.stage_by_name)
        if original is None:
            raise FinetuneError(
                f"cannot place encoder tensor {name!r} of {arch} in a backbone stage, so "
                "backbone.freeze cannot be honoured for it; use a CNN backbone such as resnet18 "
                "or efficientnet_lite0 for segmentation"
            )
        stage_by_name[name] = stages.stage_of(original)
    used = [s for s in stages.stages if s in set(stage_by_name.values())]
    return StageMap(stages=tuple(used), stage_by_name=stage_by_name)


def _classifier_name(name: str, known: dict[str, str]) -> str | None:
    """The classifier's name for a feature-wrapper name: as is, or with one flattened ``_`` undone."""
    if name in known:
        return name
    first, _, rest = name.partition(".")
    for i, char in enumerate(first):
        if char == "_":
            candidate = f"{first[:i]}.{first[i + 1 :]}" + (f".{rest}" if rest else "")
            if candidate in known:
                return candidate
    return None
