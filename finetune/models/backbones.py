"""Create timm backbones and describe them as a stem followed by numbered stages.

Stages come from timm's own ``group_matcher(coarse=True)``, so the same rule works for CNNs and
ViTs: ``stem`` then ``stage1`` … ``stageN`` (for a ViT each transformer block is a stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models._manipulate import group_with_matcher
from torch import nn

from finetune.models.weights import WeightsRecord, create_model

_MERGE_WITH_PREVIOUS = (99999,)  # timm's marker for "belongs to the previous group"


@dataclass(frozen=True)
class StageMap:
    """Maps every parameter, buffer and leaf module name of a backbone to its stage."""

    stages: tuple[str, ...]
    stage_by_name: dict[str, str]

    @property
    def num_stages(self) -> int:
        """Number of stages after the stem."""
        return len([s for s in self.stages if s != "stem"])

    def stage_of(self, name: str) -> str:
        """Stage of a parameter, buffer or module name (as in ``named_modules``)."""
        return self.stage_by_name[name]


def build_stage_map(model: nn.Module) -> StageMap:
    """Group a timm model's parameters, buffers and leaf modules into stem + stages."""
    matcher = dict(model.group_matcher(coarse=True))
    # Anything the model's matcher leaves out (e.g. a head norm) joins the last stage.
    matcher["_rest"] = [(r".*", _MERGE_WITH_PREVIOUS)]
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    names += [n for n, _ in model.named_modules() if n]
    group_of = group_with_matcher(((n, None) for n in names), matcher, reverse=True)
    has_stem = "stem" in matcher
    label = {
        gid: ("stem" if has_stem and gid == 0 else f"stage{gid if has_stem else gid + 1}")
        for gid in sorted(set(group_of.values()))
    }
    stage_by_name = {n: label[g] for n, g in group_of.items()}
    return StageMap(stages=tuple(label[g] for g in sorted(label)), stage_by_name=stage_by_name)


def create_backbone(record: WeightsRecord, in_chans: int = 3, drop_path_rate: float = 0.0, **kwargs) -> nn.Module:
    """A timm model without its classifier: ``forward`` returns pooled features."""
    kwargs |= {"num_classes": 0, "in_chans": in_chans}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    return create_model(record, **kwargs)
