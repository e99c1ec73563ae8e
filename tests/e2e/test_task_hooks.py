"""What shared code asks a task instead of reading the task's keys. Whether it mixes its training inputs
(mixup, cutmix: ``Task.mixes_inputs``): phases and lr-find then train on images, never on cached backbone
features (real tiny runs: digits, random resnet10t, 32 px). How its test turned the model's outputs into
predictions (``Task.test_decisions``: classification's threshold, test-time flips, temperature): recorded in
the export by the task, applied at predict by the task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

import finetune
from finetune.export.bundle import training_summary
from finetune.tasks.classification import Classification
from finetune.tasks.registry import get_task
from finetune.training.features import FeatureDataModule
from finetune.training.lr_find import find_lr
from finetune.training.train import train

from ..conftest import compose_config
from ..helpers import TINY, rewrite_embedded

SEGMENTATION = ["task=segmentation", "dataset=seg_folder", "dataset.root=/nonexistent", "head=unet"]


class MixingClassification(Classification):
    """Classification that mixes its inputs by its own rule: no ``mix.*`` key is set."""

    def mixes_inputs(self, cfg) -> bool:
        return True


@pytest.mark.parametrize(
    "overrides, mixes",
    [
        ((), False),
        (("mix.mixup=0.2",), True),
        (("mix.cutmix=1.0",), True),
        (("mix.mixup=0.2", "mix.prob=0"), False),
    ],
)
def test_classification_mixes_its_inputs_when_its_mix_keys_say_so(overrides, mixes):
    assert get_task("classification").mixes_inputs(compose_config(*overrides)) is mixes


def test_segmentation_mixes_nothing():
    assert get_task("segmentation").mixes_inputs(compose_config(*SEGMENTATION)) is False


@pytest.fixture
def extracted(monkeypatch) -> list[int]:
    """Counts each feature-cache extraction (one per phase or scan that trains the head on cached features)."""
    calls: list[int] = []
    extract = FeatureDataModule.extract.__func__

    def spy(cls, *args):
        calls.append(1)
        return extract(cls, *args)

    monkeypatch.setattr(FeatureDataModule, "extract", classmethod(spy))
    return calls


def test_training_and_lr_find_ask_the_task_whether_it_mixes(tmp_path: Path, extracted):
    # linear_probe + augment=none + data.cache_features=auto: a head-only phase caches features ...
    cfg = compose_config(*TINY, "data.cache_features=auto")
    find_lr(get_task("classification"), cfg, tmp_path / "plain_scan", 0, 1e-6, 1.0, 3)
    assert len(extracted) == 1
    # ... unless the task mixes its inputs (before the backbone: cached features cannot be mixed)
    find_lr(MixingClassification(), cfg, tmp_path / "scan", 0, 1e-6, 1.0, 3)
    train(MixingClassification(), cfg, tmp_path / "run")
    assert len(extracted) == 1
    assert (tmp_path / "run" / "metrics.json").is_file()


DECISIONS = {"threshold", "tta", "temperature"}


def test_the_task_records_how_its_test_decided(tmp_path: Path):
    metrics = {"test": {"acc": 0.9, "threshold": 0.42}, "calibration": {"tta": ["hflip"], "temperature": 1.5}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    summary = training_summary(compose_config(), tmp_path, get_task("classification"))
    assert {k: summary[k] for k in DECISIONS} == {"threshold": 0.42, "tta": ["hflip"], "temperature": 1.5}
    assert summary["test"] == metrics["test"] and [p["name"] for p in summary["phases"]]
    segmentation = training_summary(compose_config(*SEGMENTATION), tmp_path, get_task("segmentation"))
    assert not DECISIONS & set(segmentation) and segmentation["test"] == metrics["test"]


def test_classification_predict_applies_the_recorded_flips_and_temperature(finished_run, tmp_path: Path):
    export = tmp_path / "head.safetensors"
    shutil.copy(finished_run / "exports" / "head.safetensors", export)
    rewrite_embedded(export, lambda meta: meta["training"].update(tta=["hflip"], temperature=2.0))
    model = finetune.load(export)
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    x = torch.from_numpy(model.preprocess(images))
    with torch.no_grad():
        net = model.torch_module.eval()
        expected = torch.softmax((net(x) + net(x.flip(-1))) / 2 / 2.0, dim=1).double().numpy()
    np.testing.assert_allclose(model.predict(images).probabilities, expected, atol=1e-6)
