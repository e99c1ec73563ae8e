"""The task-neutral pieces every task's model is built from (``Task.build_model`` picks them): a timm
backbone with a head on its pooled features (``head=linear|mlp``, ``models.HEADS``), or a timm encoder
under an smp decoder (``head=unet|fpn|deeplabv3plus``, ``models.DECODERS``), each with the adapter
``backbone.adapter`` names (LoRA / DoRA / BitFit, finetune.models.adapters). They read the config alone,
so a run directory or an export rebuilds the model it was trained with."""

from __future__ import annotations

import timm
from omegaconf import DictConfig, OmegaConf

from finetune.models import DECODERS, HEADS
from finetune.models.adapters import AdapterSpec, attach_adapter
from finetune.models.backbones import build_stage_map, create_backbone
from finetune.models.freezing import FineTuneModel
from finetune.models.weights import WeightsRecord
from finetune.run.warning_filters import dropped


def pooled_model(
    cfg: DictConfig, record: WeightsRecord, in_chans: int, num_outputs: int, image_size: int | None = None
) -> FineTuneModel:
    """A timm backbone (weights from ``record``) returning pooled features + the head ``cfg.head.kind``
    names with ``num_outputs`` outputs, adapter attached; ``image_size``: the training input's side
    (a ViT built for another size gets its position embeddings resampled by timm)."""
    kwargs = {}
    if image_size and _fixed_input_size(record.model):
        kwargs["img_size"] = image_size
    backbone = create_backbone(record, in_chans=in_chans, drop_path_rate=cfg.backbone.drop_path_rate, **kwargs)
    head = HEADS.get(cfg.head.kind).build(backbone.num_features, num_outputs, **head_options(cfg))
    return with_adapter(FineTuneModel(backbone, head, build_stage_map(backbone)), cfg, record)


def decoder_model(cfg: DictConfig, record: WeightsRecord, in_chans: int, num_outputs: int) -> FineTuneModel:
    """A timm ``features_only`` encoder (weights from ``record``) + the smp decoder ``cfg.head.kind``
    names with ``num_outputs`` output channels, adapter attached."""
    # timm warns of the pretrained classifier's tensors, which a features_only encoder leaves out on purpose
    with dropped("timm.models._builder", r"Unexpected keys \("):
        model = DECODERS.get(cfg.head.kind).build(
            record, in_chans, num_outputs, cfg.backbone.drop_path_rate, **head_options(cfg)
        )
    return with_adapter(model, cfg, record)


def with_adapter(model: FineTuneModel, cfg: DictConfig, record: WeightsRecord) -> FineTuneModel:
    """``model`` with the adapter ``backbone.adapter`` names attached to its backbone (in place)."""
    model.adapter, model.stage_map = attach_adapter(
        model.backbone, model.stage_map, AdapterSpec.from_config(cfg), record.model
    )
    return model


def head_options(cfg: DictConfig) -> dict:
    """The ``head`` group's keys besides ``kind``: options of the head or decoder builder. A null one is left
    out, so the builder's own default applies (smp's, for a decoder)."""
    options = OmegaConf.to_container(cfg.head, resolve=True).items()
    return {k: v for k, v in options if k != "kind" and v is not None}


def _fixed_input_size(model_name: str) -> bool:
    """Models such as ViTs are built for one input size (timm can resample them to another)."""
    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    return bool(pretrained_cfg and pretrained_cfg.fixed_input_size)
