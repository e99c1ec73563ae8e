"""The freezing contract: frozen parameters AND BatchNorm buffers never change during training."""

from __future__ import annotations

import pytest
import timm
import torch

from finetune.models import HEADS
from finetune.models.backbones import build_stage_map
from finetune.models.freezing import (
    FineTuneModel,
    FreezeError,
    frozen_stages,
    param_groups,
    stage_learning_rates,
    stage_status,
)

from ..helpers import tensor_hashes, train_steps


def make_model(arch: str, **kw) -> FineTuneModel:
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    return FineTuneModel(backbone, HEADS["linear"].build(backbone.num_features, 3), build_stage_map(backbone))


CASES = [("test_efficientnet", {}, 32), ("resnet10t", {}, 32), ("test_vit", {"img_size": 32}, 32)]


@pytest.mark.parametrize("arch,kw,size", CASES)
@pytest.mark.parametrize("freeze", ["all", 2])
def test_frozen_tensors_unchanged_trainable_changed(arch, kw, size, freeze):
    model = make_model(arch, **kw)
    frozen = frozen_stages(model.stage_map, freeze)
    model.set_frozen(frozen, "frozen")
    before = tensor_hashes(model)
    train_steps(model, size)
    after = tensor_hashes(model)
    frozen_keys = [k for k in before if model.stage_of(k) in frozen]
    trained_keys = [k for k, p in model.named_parameters() if model.stage_of(k) not in frozen]
    buffers = [k for k, _ in model.named_buffers() if model.stage_of(k) in frozen]
    assert frozen_keys and trained_keys
    assert [k for k in frozen_keys if before[k] != after[k]] == []
    if arch != "test_vit":  # CNNs: the frozen BatchNorm statistics are among the checked tensors
        assert any("running_mean" in k for k in buffers)
    changed = [k for k in trained_keys if before[k] != after[k]]
    assert len(changed) == len(trained_keys)


def test_bn_train_policy_updates_running_stats_of_frozen_stages():
    model = make_model("resnet10t")
    frozen = frozen_stages(model.stage_map, 2)
    model.set_frozen(frozen, "train")
    before = tensor_hashes(model)
    train_steps(model, 32)
    after = tensor_hashes(model)
    stats = [k for k, _ in model.named_buffers() if model.stage_of(k) in frozen and "running_mean" in k]
    params = [k for k, _ in model.named_parameters() if model.stage_of(k) in frozen]
    assert stats and all(before[k] != after[k] for k in stats)
    assert all(before[k] == after[k] for k in params)


def test_frozen_modules_stay_in_eval_through_train_calls():
    model = make_model("resnet10t")
    model.set_frozen(frozen_stages(model.stage_map, 1), "frozen")
    model.train()
    torch.nn.Module.train(model, True)  # what a wrapper calling the base class would do…
    model.train()  # …is undone by the next regular train() call
    bn_stem = model.backbone.conv1[1]
    bn_last = model.backbone.layer4[0].bn1
    assert not bn_stem.training and bn_last.training
    assert [r.bn_mode for r in stage_status(model)][:3] == ["eval", "eval", "train"]


@pytest.mark.parametrize(
    "arch,expected", [("resnet18", 4), ("efficientnet_lite0", 7), ("vit_small_patch16_224", 12), ("convnext_atto", 4)]
)
def test_stages_come_from_timm_group_matcher(arch, expected):
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    stages = build_stage_map(model)
    assert stages.stages == ("stem", *[f"stage{i}" for i in range(1, expected + 1)])
    assert {stages.stage_of(n) for n, _ in model.named_parameters()} == set(stages.stages)


def test_freeze_depth_semantics():
    stages = build_stage_map(timm.create_model("resnet18", pretrained=False, num_classes=0))
    assert frozen_stages(stages, 0) == ()
    assert frozen_stages(stages, "all") == ("stem", "stage1", "stage2", "stage3", "stage4")
    assert frozen_stages(stages, 2) == ("stem", "stage1", "stage2")
    assert frozen_stages(stages, -1) == ("stem", "stage1", "stage2", "stage3")
    assert frozen_stages(stages, "3") == ("stem", "stage1", "stage2", "stage3")
    for bad in (5, -5, "most"):
        with pytest.raises(FreezeError, match="has 4 stages"):
            frozen_stages(stages, bad, "resnet18")


def test_param_groups_carry_real_stage_lrs_and_no_decay_on_norms_and_biases():
    model = make_model("resnet10t")
    model.set_frozen(frozen_stages(model.stage_map, 2), "frozen")
    lrs = stage_learning_rates(model, lr=1e-2, backbone_lr_mult=0.1, layer_decay=0.5)
    groups = {g["name"]: g for g in param_groups(model, lrs, weight_decay=0.05)}
    assert set(groups) == {"stage3", "stage3/no_decay", "stage4", "stage4/no_decay", "head", "head/no_decay"}
    assert groups["head"]["lr"] == pytest.approx(1e-2)
    assert groups["stage4"]["lr"] == pytest.approx(1e-3)
    assert groups["stage3"]["lr"] == pytest.approx(5e-4)
    assert all(p.ndim <= 1 for p in groups["stage4/no_decay"]["params"])
    assert groups["stage4/no_decay"]["weight_decay"] == 0.0 and groups["stage4"]["weight_decay"] == 0.05
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_trainable
