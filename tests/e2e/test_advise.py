"""``finetune advise``: pooled features after every stage are the backbone's own stage outputs, the
recommendation follows its rules, and the command writes advice.json + advice.png with a training
command that composes. Real tiny runs: digits, random resnet10t, 32 px."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from finetune.commands import advise as command
from finetune.commands.precheck import check_config
from finetune.models.backbones import build_stage_map
from finetune.models.freezing import FineTuneModel
from finetune.training.probing import mean_auc, probe, probed_stages, stage_features
from finetune.training.recommend import recommend, tolerance

from ..conftest import compose_config

TINY = ["+classification=digits", "backbone.name=resnet10t", "backbone.pretrained=false", "dataset.image_size=32"]


def _features(backbone: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage features of a model in training mode: extracted in eval mode (BatchNorm statistics as
    pretrained), the mode restored after."""
    model = FineTuneModel(backbone, nn.Linear(backbone.num_features, 2), build_stage_map(backbone)).train()
    features, targets = stage_features(model, [(images, torch.tensor([0, 1]))], torch.device("cpu"))
    assert targets.tolist() == [0, 1] and list(features) == probed_stages(model.stage_map)
    assert model.training and backbone.training
    backbone.eval()
    return features


@pytest.mark.parametrize(
    ("name", "kwargs", "first"),
    [
        ("resnet10t", {}, 1),  # intermediates: stem, layer1 … layer4 = stage1 … stage4
        ("tf_efficientnet_lite0", {"extra_blocks": True}, 1),  # stem, blocks.0 … blocks.6 = stage1 … stage7
        ("vit_tiny_patch16_224", {}, 0),  # blocks.0 … blocks.11 = stage1 … stage12 (patch-token maps)
    ],
)
def test_stage_features_are_the_pooled_stage_outputs(name, kwargs, first):
    """Against timm's own forward_intermediates: every stage but the last is its output map averaged
    over space (a ViT: over its patch tokens); the last stage is the backbone's pooled output, what a
    linear probe trains on."""
    torch.manual_seed(0)
    extra = {"img_size": 32} if name.startswith("vit") else {}
    backbone = timm.create_model(name, pretrained=False, num_classes=0, **extra)
    images = torch.randn(2, 3, 32, 32)
    features = _features(backbone, images)
    with torch.no_grad():
        maps = backbone.forward_intermediates(images, intermediates_only=True, **kwargs)[first:]
        pooled = backbone(images)
    stages = list(features)
    for stage, feature_map in zip(stages[:-1], maps):
        torch.testing.assert_close(features[stage], feature_map.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features[stages[-1]], pooled)
    assert len(stages) == len(maps)


RISING, EARLY = [0.5, 0.6, 0.7, 0.8, 0.9], [0.5, 0.8, 0.9, 0.85, 0.7]


def test_few_images_freeze_more_and_far_data_trains_more():
    few, medium, many = (recommend(RISING, 500, n) for n in (50, 300, 2000))
    assert (few.rule, few.domain, few.settings["schedule"], few.settings["backbone.freeze"]) == (
        1,
        "close",
        "linear_probe",
        "all",
    )
    assert (medium.rule, medium.settings["schedule"]) == (4, "gradual")
    assert (many.rule, many.settings["backbone.freeze"], many.settings["schedule.backbone_lr_mult"]) == (5, 0, 0.1)

    few_far, many_far = recommend(EARLY, 500, 50), recommend(EARLY, 500, 2000)
    assert (few_far.rule, few_far.domain, few_far.peak) == (2, "far", 3)
    assert few_far.settings["backbone.freeze"] == 3  # stem..stage3 kept, stages 4-5 retrained
    assert "peaks early" in few_far.reasons[0]
    assert (many_far.rule, many_far.settings["backbone.freeze"]) == (3, 0)
    assert many_far.settings["schedule.backbone_lr_mult"] > many.settings["schedule.backbone_lr_mult"]
    assert many_far.settings["schedule.layer_decay"] == 0.8


def test_a_flat_top_reads_far_and_ties_go_to_the_later_stage():
    flat = recommend([0.5, 0.9, 0.9, 0.9, 0.895], 100, 50)
    assert (flat.domain, flat.peak, flat.settings["backbone.freeze"]) == ("far", 4, 4) and "flattens" in flat.reasons[0]
    saturated = recommend([0.7, 1.0, 1.0, 1.0], 100, 50)  # a probe that is already perfect: nothing to retrain
    assert (saturated.domain, saturated.rule) == ("close", 1)
    assert tolerance(0.9, 100) == pytest.approx(0.03)


def test_imbalance_and_the_adapter_alternative():
    advice = recommend(RISING, 500, 50, imbalance=5.0, transformer=True)
    assert advice.settings["imbalance"] == "weighted_loss" and "backbone.adapter=lora" in advice.alternative
    assert recommend(RISING, 500, 2000, imbalance=2.0, transformer=True).alternative is None


def test_the_command_writes_advice_and_a_command_that_composes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert command.main(TINY) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("_advise_digits_resnet10t")
    assert (run_dir / "advice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((run_dir / "advice.json").read_text())
    assert [s["stage"] for s in record["stages"]] == ["stage1", "stage2", "stage3", "stage4"]
    assert [s["dim"] for s in record["stages"]] == [64, 128, 256, 512]
    assert all(0 <= s["acc"] <= 1 and 0 <= s["auc"] <= 1 for s in record["stages"])
    assert record["data"]["train"] + record["data"]["val"] > 1000 and record["metric"] == "acc"
    assert set(record["seconds"]) == {"build", "features", "probes", "total"}
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == record["command"] and "note: backbone.pretrained=false" in "\n".join(out)
    args = shlex.split(record["command"])
    assert args[: len(TINY) + 1] == ["finetune", *TINY]
    cfg = compose_config(*args[1:])
    check_config(cfg)  # the settings are a valid training config
    for key, value in record["recommendation"]["settings"].items():
        if key != "schedule":
            assert OmegaConf.select(cfg, key) == value


def test_a_recipe_that_pins_its_phases_gets_the_recommended_ones():
    """recipes/medical/blood.yaml sets schedule.phases itself: switching the schedule group alone would
    leave them, so the ready command sets the phases of the recommended schedule too."""
    ready = command.ready_overrides(
        ["+medical=blood", "dataset.root=/data", "backbone.freeze=2"], {"schedule": "gradual", "schedule.lr": 0.005}
    )
    assert ready[:2] == ["+medical=blood", "dataset.root=/data"] and "backbone.freeze=2" in ready
    assert ready[-1].startswith("schedule.phases=[{name:probe,")
    cfg = compose_config(*ready)
    assert [p.name for p in cfg.schedule.phases] == ["probe", "last_stage", "all"]
    plain = command.ready_overrides(["+classification=digits"], {"schedule": "linear_probe", "backbone.freeze": "all"})
    assert plain == ["+classification=digits", "schedule=linear_probe", "backbone.freeze=all"]


def test_segmentation_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # a root that exists: the task is the only thing wrong
    root = f"dataset.root={tmp_path / 'data'}"
    assert command.main(["task=segmentation", "dataset=seg_folder", "head=unet", root]) == 2
    assert "classification-only" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert command.main([*TINY, "hydra.run.dir=x"]) == 2 and "out=DIR" in capsys.readouterr().err


def test_probe_scores_single_and_multi_label_data():
    """Separable features score 1.0; a class absent from train keeps probability 0 and the AUC is the
    mean over the classes (labels) val holds both ways."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = np.eye(3)[y] * 5 + rng.normal(0, 0.1, (60, 3))
    assert probe(x, y, x, y, 3, False) == (1.0, 1.0)
    acc, auc = probe(x[y < 2], y[y < 2], x, y, 3, False)  # class 2 never seen in train
    assert acc == pytest.approx(40 / 60) and 0 <= auc <= 1
    labels = np.stack([y == 0, y != 0], axis=1).astype(float)
    labels[:, 1][:5] = 1.0  # the two labels overlap: multi-label
    acc, auc = probe(x, labels, x, labels, 2, True)
    assert 0.9 <= acc <= 1 and 0.9 <= auc <= 1
    assert mean_auc(np.ones((4, 1)), np.zeros((4, 1))) is None
