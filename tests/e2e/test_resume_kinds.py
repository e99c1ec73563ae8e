"""Resume after an interrupt reproduces the uninterrupted run for every dataset kind and signal.

Each test trains the same tiny two-epoch run twice: once uninterrupted, once interrupted by a signal
the process sends itself at a fixed batch of epoch 2 (after epoch 1's checkpoint, mid-epoch), then
``finetune resume=<run>``. The resumed run replays epoch 2 from epoch 1's checkpoint and must end
with the uninterrupted run's test metrics. The kinds keep the worker processes a user gets by
default (image folder, CSV, segmentation pairs: ``num_workers=2``; MedMNIST: 0): a loader with
workers draws its first batches as soon as Lightning creates its iterator, before the epoch is set.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.datamodule import ClassificationDataModule
from finetune.data.transforms import Preprocessing

from ..helpers import RESUMABLE_TWO_EPOCHS, cli_in_process, one_torch_thread, squares, start_interrupted


def _noise_images(root: Path, per_class: int = 16, side: int = 40) -> list[tuple[str, str]]:
    """Two classes of PNGs in ``root/<class>/``, noise of overlapping brightness (not learnt at once, so the
    test metrics differ with every batch trained); (path relative to root, class)."""
    rng = np.random.default_rng(0)
    rows = []
    for label, (low, high) in {"darker": (0, 200), "brighter": (40, 240)}.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            name = f"{label}/{i:02d}.png"
            Image.fromarray(rng.integers(low, high, (side, side, 3), dtype=np.uint8)).save(root / name)
            rows.append((name, label))
    return rows


def _labels_csv(root: Path) -> Path:
    """A ``path,label`` CSV over noise PNGs next to it."""
    path = root / "labels.csv"
    rows = _noise_images(root)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return path


def _tiny_medmnist(root: Path, name: str = "breastmnist") -> None:
    """``root/<name>.npz``: 28 px gray noise of two overlapping brightness classes in MedMNIST's layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 26, "val": 8, "test": 8}.items():
        labels = np.arange(n) % 2
        images = (rng.integers(0, 200, (n, 28, 28)) + 40 * labels[:, None, None]).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(n, 1)
    root.mkdir(parents=True)
    np.savez(root / f"{name}.npz", **arrays)


def _validated_epochs(run_dir: Path, phase: str = "finetune") -> int:
    """Epochs of the phase's first attempt that reached validation (rows with a val/loss)."""
    with open(run_dir / "logs" / phase / "metrics.csv", newline="") as f:
        return sum(bool(row.get("val/loss")) for row in csv.DictReader(f))


def _test_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


def _assert_resume_matches_uninterrupted(tmp_path: Path, args: list[str], signal_name: str, batch: int = 3) -> None:
    """Run ``args`` whole and interrupted by ``signal_name`` at ``batch`` of epoch 2, resume the
    interrupted run, and compare every test metric (abs 1e-6, as the SIGKILL test of test_phases)."""
    interrupted = start_interrupted(
        *args,
        "hydra.run.dir=interrupted",
        cwd=tmp_path,
        signal_name=signal_name,
        epoch=1,
        batch=batch,
        log=tmp_path / "interrupted.log",
    )
    # The uninterrupted reference in this process (an interpreter start less), beside the interrupted one
    with one_torch_thread():
        whole = cli_in_process(*args, "hydra.run.dir=whole", cwd=tmp_path)
    interrupted.wait(timeout=300)
    interrupted_log = (tmp_path / "interrupted.log").read_text()
    assert whole.returncode == 0, whole.stderr[-3000:]

    run = tmp_path / "interrupted"
    assert not (run / "metrics.json").exists(), interrupted_log[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file(), interrupted_log[-3000:]
    assert _validated_epochs(run) == 1, interrupted_log[-3000:]  # stopped inside epoch 2, before its validation
    if signal_name != "SIGKILL":  # the line the interrupt printed names the command run next
        assert "`finetune resume=" in interrupted_log and "continues from" in interrupted_log, interrupted_log[-3000:]

    with one_torch_thread():  # the resume here too (resumes in a process: test_faults_concurrency)
        resumed = cli_in_process("resume=interrupted", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout, resumed.stdout[-3000:]
    assert (run / "logs" / "finetune" / "attempt-2").is_dir()  # epoch 2 was trained again, by the resume

    expected, got = _test_metrics(tmp_path / "whole"), _test_metrics(run)
    assert got.keys() == expected.keys()
    differing = {
        key: (got[key], expected[key]) for key in expected if got[key] != pytest.approx(expected[key], abs=1e-6)
    }
    assert not differing, f"resumed vs uninterrupted test metrics: {differing}"


def test_a_training_loader_with_workers_draws_its_first_batch_after_set_epoch(tmp_path):
    # Lightning creates the training iterator before it sets the sampler's epoch, and a resumed run
    # trains on that iterator: nothing may be drawn until the first batch is asked for.
    _noise_images(tmp_path / "folder")
    data = ClassificationDataModule(
        {"kind": "imagefolder", "root": str(tmp_path / "folder")}, {}, batch_size=4, num_workers=2, seed=0
    )
    data.set_preprocessing(Preprocessing((32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 3))
    early = data.train_dataloader()
    batches = iter(early)
    early.batch_sampler.sampler.set_epoch(1)
    late = data.train_dataloader()
    late.batch_sampler.sampler.set_epoch(1)
    images, targets = next(batches)
    expected_images, expected_targets = next(iter(late))
    assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)


@pytest.mark.slow
def test_image_folder_augmented_with_workers_resumes_after_sigint_mid_epoch(tmp_path):
    # random crops and flips: the augmentation of the first batches drawn is seeded by their epoch too
    _noise_images(tmp_path / "folder")
    _assert_resume_matches_uninterrupted(
        tmp_path,
        [*RESUMABLE_TWO_EPOCHS, "dataset=imagefolder", "dataset.root=folder", "dataset.image_size=32", "augment=light"],
        "SIGINT",
    )


@pytest.mark.slow
def test_csv_with_workers_resumes_after_sigterm_mid_epoch(tmp_path):
    labels = _labels_csv(tmp_path / "data")
    _assert_resume_matches_uninterrupted(
        tmp_path, [*RESUMABLE_TWO_EPOCHS, "dataset=csv", f"dataset.csv={labels}", "dataset.image_size=32"], "SIGTERM"
    )


@pytest.mark.slow
def test_medmnist_resumes_after_sigkill_mid_epoch(tmp_path):
    _tiny_medmnist(tmp_path / "medmnist")
    _assert_resume_matches_uninterrupted(
        tmp_path,
        [
            *RESUMABLE_TWO_EPOCHS,
            "dataset=medmnist",
            "dataset.name=breastmnist",
            "dataset.root=medmnist",
            "dataset.download=false",
            "dataset.image_size=32",
        ],
        "SIGKILL",
    )


@pytest.mark.slow
def test_segmentation_pairs_with_workers_resume_after_sigkill_mid_epoch(tmp_path):
    squares(tmp_path / "squares", n=12, size=48)
    _assert_resume_matches_uninterrupted(
        tmp_path,
        [
            *RESUMABLE_TWO_EPOCHS,
            "task=segmentation",
            "dataset=seg_folder",
            "dataset.root=squares",
            "dataset.mask_mode=binary",
            "dataset.crop_size=32",
            "dataset.samples_per_image=2",
            "head=unet",
            "head.decoder_channels=[16,16,16,16,16]",
            "segmentation.overlays=1",
        ],
        "SIGKILL",
    )
