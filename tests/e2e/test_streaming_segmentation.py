"""task=segmentation dataset=streaming: a segmentation pack trains on random crops streamed through LitData and
is evaluated, by index, on the same tensors as the folder it was packed from; packs of the other task are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.commands.args import compose_config
from finetune.commands.pack import pack_command
from finetune.data.streaming import INDEX
from finetune.data.transforms import Preprocessing
from finetune.tasks.registry import get_task

from ..helpers import cli_in_process, one_torch_thread, write_pair

PRE = Preprocessing((32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 3)
FOLDER = ["dataset.class_names=[background,road,car]", "dataset.crop_size=32", "dataset.num_workers=0"]
SHAPES = {"train": (40, 48), "val": (32, 45), "test": (36, 40)}  # val/test: several sliding windows


def _three_classes(root: Path) -> Path:
    """8 train, 2 val and 2 test images with index masks of 3 classes (a square of each foreground class)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        h, w = SHAPES[split]
        for i in range(n):
            image = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            mask = np.zeros((h, w), np.uint8)
            top, left = rng.integers(0, h - 12), rng.integers(0, w - 12)
            mask[top : top + 12, left : left + 12] = 1 + i % 2
            image[mask > 0] = 120 + 60 * (i % 2)
            write_pair(root, f"{split}{i}", image, mask, split)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    """(seg_folder root, its pack), made once for the module."""
    base = tmp_path_factory.mktemp("seg_stream")
    root = _three_classes(base / "data")
    pack_command(["dataset=seg_folder", f"dataset.root={root}", *FOLDER[:1], f"out={base / 'pack'}"])
    return root, base / "pack"


def _data(*overrides: str):
    """The task=segmentation data module of ``overrides``, as training builds it, with PRE set."""
    cfg = compose_config(["task=segmentation", "head=unet", "augment=none", "schedule.batch_size=4", *overrides])
    data = get_task("segmentation").data_module(cfg)
    data.set_preprocessing(PRE)
    return data


def test_streamed_training_crops_are_windows_of_the_packed_masks(packed):
    root, pack = packed
    data = _data("dataset=streaming", f"dataset.uri={pack}", *FOLDER[1:], "dataset.samples_per_image=2")
    assert data.info.class_names == ["background", "road", "car"] and data.info.image_channels == 3
    loader = data.train_dataloader()
    assert len(loader) == 8 * 2 // 4  # every image twice per epoch, batches of 4
    batches = list(loader)
    assert len(batches) == 4
    masks = [m for _, mask in batches for m in mask]
    for images, mask in batches:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert mask.shape == (4, 32, 32) and mask.dtype == torch.int64
    originals = [data.splits["train"].pair(i)[1] for i in range(8)]
    windows = [o[t : t + 32, left : left + 32] for o in originals for t in range(9) for left in range(17)]
    for mask in masks:  # each crop is a 32 px window of a packed training mask
        assert any(np.array_equal(mask.numpy(), w) for w in windows)


def test_a_segmentation_pack_trains_and_evaluates_on_the_folders_tensors(packed, tmp_path):
    from finetune.models.saved_runs import load_run
    from finetune.tasks.segmentation.module import full_image_logits

    root, pack = packed
    with one_torch_thread():
        out = cli_in_process(
            "task=segmentation",
            "dataset=streaming",
            f"dataset.uri={pack}",
            *FOLDER[1:],
            "head=unet",
            "head.decoder_channels=[16,16,16,16,16]",
            "backbone=resnet18",
            "backbone.pretrained=false",
            "schedule.batch_size=4",
            "schedule.epochs=1",
            "trainer.progress_bar=false",
            "segmentation.overlays=1",
            "logger=csv",
            "hydra.run.dir=run",
            cwd=tmp_path,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["miou"] <= 1
    assert len(list((tmp_path / "run" / "predictions").glob("*_overlay.png"))) == 1
    model = load_run(tmp_path / "run", get_task("segmentation")).model.eval()
    streamed = _data("dataset=streaming", f"dataset.uri={pack}", *FOLDER[1:])
    folder = _data("dataset=seg_folder", f"dataset.root={root}", *FOLDER)
    for split in ("val", "test"):
        pairs = list(zip(streamed.eval_dataloader(split), folder.eval_dataloader(split), strict=True))
        assert len(pairs) == 2
        for (image, mask), (want_image, want_mask) in pairs:
            assert image.shape[-2:] == SHAPES[split]
            assert torch.equal(image, want_image) and torch.equal(mask, want_mask)
            with torch.no_grad():  # the same weights: the same sliding-window predictions, so the same mIoU
                assert torch.equal(full_image_logits(model, image, 32), full_image_logits(model, want_image, 32))


def test_a_classification_pack_is_refused_by_task_segmentation(tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / INDEX).write_text(json.dumps({"version": 2, "kind": "imagefolder", "task_group": "classification"}))
    out = cli_in_process("task=segmentation", "head=unet", "dataset=streaming", f"dataset.uri={pack}", cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert f"dataset.uri={pack} is a classification pack (of dataset=imagefolder)" in line
    assert "task=classification" in line and "dataset=seg_folder|drive" in line


def test_a_segmentation_pack_is_refused_by_task_classification(packed, tmp_path):
    _, pack = packed
    out = cli_in_process("dataset=streaming", f"dataset.uri={pack}", cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert f"dataset.uri={pack} is a segmentation pack (of dataset=seg_folder)" in line
    assert "task=segmentation head=unet|fpn|deeplabv3plus dataset=streaming" in line
