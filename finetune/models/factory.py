"""Build the fine-tune model a config describes: a timm backbone with a new head (``head=linear|mlp``)
or a timm encoder under an smp decoder (``head=unet|fpn|deeplabv3plus``). The head kind decides, so
a run directory or an export can be rebuilt from its config alone. ``backbone.adapter`` attaches
LoRA / DoRA / BitFit to the backbone (finetune.models.adapters)."""

from __future__ import annotations

import timm
from omegaconf import DictConfig, OmegaConf

from finetune.models import DECODERS, HEADS
from finetune.models.adapters import AdapterSpec, attach_adapter
from finetune.models.backbones import build_stage_map, create_backbone
from finetune.models.freezing import FineTuneModel
from finetune.models.heads import build_head
from finetune.models.weights import WeightsRecord
from finetune.run.errors import FinetuneError


def build_model(cfg: DictConfig, record: WeightsRecord, in_chans: int, num_classes: int) -> FineTuneModel:
    """Backbone (weights from ``record``) + the head or decoder ``cfg.head.kind`` names, with the
    adapter ``backbone.adapter`` names."""
    if cfg.head.kind in HEADS:
        model = build_classifier(cfg, record, in_chans, num_classes)
    elif cfg.head.kind in DECODERS:
        model = build_segmenter(cfg, record, in_chans, num_classes)
    else:
        raise FinetuneError(f"head.kind={cfg.head.kind!r}: choose one of {', '.join((*HEADS, *DECODERS))}")
    model.adapter, model.stage_map = attach_adapter(
        model.backbone, model.stage_map, AdapterSpec.from_config(cfg), record.model
    )
    return model


def head_options(cfg: DictConfig) -> dict:
    """The ``head`` group's keys besides ``kind``: options of the head or decoder builder."""
    return {k: v for k, v in OmegaConf.to_container(cfg.head, resolve=True).items() if k != "kind"}


def build_classifier(cfg: DictConfig, record: WeightsRecord, in_chans: int, num_classes: int) -> FineTuneModel:
    """A timm backbone returning pooled features + the configured classification head."""
    kwargs = {}
    if cfg.dataset.image_size and _fixed_input_size(record.model):
        kwargs["img_size"] = cfg.dataset.image_size  # ViTs: timm resamples the position embeddings
    backbone = create_backbone(record, in_chans=in_chans, drop_path_rate=cfg.backbone.drop_path_rate, **kwargs)
    head = build_head(cfg.head.kind, backbone.num_features, num_classes, **head_options(cfg))
    return FineTuneModel(backbone, head, build_stage_map(backbone))


def build_segmenter(cfg: DictConfig, record: WeightsRecord, in_chans: int, num_classes: int) -> FineTuneModel:
    """A timm ``features_only`` encoder + the configured smp decoder."""
    from finetune.models.decoders import build_segmentation_model

    return build_segmentation_model(
        record, cfg.head.kind, in_chans, num_classes, cfg.backbone.drop_path_rate, **head_options(cfg)
    )


def _fixed_input_size(model_name: str) -> bool:
    """Models such as ViTs are built for one input size (timm can resample them to another)."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    return bool(pretrained_cfg and pretrained_cfg.fixed_input_size)
