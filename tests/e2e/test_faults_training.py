"""Training robustness and a readable console (issue 14): every epoch of every phase checkpointed,
no crash on a last batch of one sample, checkpoint and step-log hygiene, warnings and console lines."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.commands import train as run_module
from finetune.models.saved_runs import load_run
from finetune.tasks.registry import get_task
from finetune.training.phases import PhaseCheckpoint

from ..conftest import compose_config
from ..helpers import SMALL_RESNET

TINY = [*SMALL_RESNET, "trainer.deterministic=true"]


def image_folder(root: Path, train: int = 14, val: int = 3, test: int = 3) -> Path:
    """``root/{train,val,test}/{a,b}/*.png``: 8x8 images, class a dark, class b bright."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val), ("test", test)):
        for i in range(n):
            label = "ab"[i % 2]
            pixels = rng.integers(0, 100, (8, 8, 3)) + (150 if label == "b" else 0)
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# 1. Every epoch of every phase is checkpointed and considered for "best".


def test_a_phase_whose_first_epoch_ends_at_the_previous_phases_last_step_is_checkpointed(tmp_path, monkeypatch):
    """Phase a: 1 epoch of 6 batches (ends at step 6); phase b: epochs of 6 batches, so its first epoch
    also ends at (its own Trainer's) step 6 — Lightning's shared callback used to skip that save."""
    saves, considered = [], []
    save, topk = PhaseCheckpoint._save_checkpoint, PhaseCheckpoint._save_topk_checkpoint

    def record_save(self, trainer, filepath):
        saves.append((trainer.logger.version, trainer.current_epoch, Path(filepath).name))
        save(self, trainer, filepath)

    def record_topk(self, trainer, candidates):
        considered.append((trainer.logger.version, trainer.current_epoch))
        topk(self, trainer, candidates)

    monkeypatch.setattr(PhaseCheckpoint, "_save_checkpoint", record_save)
    monkeypatch.setattr(PhaseCheckpoint, "_save_topk_checkpoint", record_topk)
    cfg = compose_config(
        *TINY,
        "schedule=gradual",
        "trainer.limit_train_batches=6",
        "checkpoints.keep=both",
        "schedule.phases=[{name: a, epochs: 1, freeze: all, lr: 0.01, scheduler: cosine},"
        "{name: b, epochs: 2, freeze: -1, scheduler: cosine}]",
    )
    run_module.train(cfg, tmp_path)
    assert considered == [("a", 0), ("b", 0), ("b", 1)]  # every epoch competes for best.ckpt
    lasts = [(phase, epoch) for phase, epoch, name in saves if name == "last.ckpt"]
    assert lasts == [("a", 0), ("b", 0), ("b", 1)]  # and writes last.ckpt, improved or not
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["finetune_phase"] == 1 and state["epoch"] == 1


# 2. A last training batch of one sample never crashes.


def test_train_batches_drop_only_a_last_batch_of_exactly_one_sample():
    from finetune.data.datamodule import TrainBatches

    def batches(n: int, size: int) -> list[int]:
        sampler = TrainBatches(range(n), size)
        out = [len(b) for b in sampler]
        assert len(out) == len(sampler)
        return out

    assert batches(14, 13) == [13]  # remainder 1: dropped
    assert batches(15, 13) == [13, 2]  # remainder 2: kept
    assert batches(13, 13) == [13]
    assert batches(3, 1) == [1, 1, 1]  # batch size 1: nothing dropped
    assert batches(1257, 8)[-1] == 8 and len(batches(1257, 8)) == 157  # digits' train split


def test_fourteen_images_with_batch_size_thirteen_train_and_warn_about_tiny_splits(tmp_path, caplog):
    root = image_folder(tmp_path / "images", train=14, val=3, test=3)
    cfg = compose_config(
        *[a for a in TINY if not a.startswith("trainer.limit_val")],
        "dataset=imagefolder",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "schedule.batch_size=13",
        "schedule.epochs=2",
        "data.cache_features=false",
    )
    with caplog.at_level(logging.WARNING, logger="finetune.training.input_warnings"):
        metrics = run_module.train(cfg, tmp_path / "run")  # BatchNorm on a 1x1 map of one sample raised here
    assert metrics["test"]
    rows = [r for r in _csv_rows(tmp_path / "run" / "logs" / "finetune" / "metrics.csv") if r.get("train/loss_step")]
    assert [int(r["step"]) for r in rows] == [0, 1]  # one batch of 13 per epoch (and step logs at 1 batch/epoch)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "the val split has 3 image(s)" in warned and "1/3 = 0.33" in warned
    assert "the test split has 3 image(s)" in warned


def test_cached_features_use_the_same_batches_as_the_image_loader(tmp_path):
    from finetune.data.datamodule import ClassificationDataModule
    from finetune.training.features import FeatureDataModule
    from finetune.training.train import model_preprocessing

    root = image_folder(tmp_path / "images", train=14)
    cfg = compose_config(*TINY, "dataset=imagefolder", f"dataset.root={root}", "dataset.num_workers=0")
    data = ClassificationDataModule(cfg.dataset, cfg.augment, 13, 0, 0)
    import timm

    data.set_preprocessing(model_preprocessing(timm.create_model("resnet10t", num_classes=0), 32, 3))
    features = torch.utils.data.TensorDataset(torch.randn(14, 4), torch.zeros(14, dtype=torch.long))
    cached = FeatureDataModule(data, {"train": features, "val": features}).train_dataloader()
    assert [len(t) for _, t in cached] == [len(t) for _, t in data.train_dataloader()] == [13]


# 3. Checkpoint and log hygiene.


@pytest.mark.parametrize("keep", ["best", "last", "both"])
def test_checkpoints_keep_and_step_logs_with_fewer_batches_than_the_log_interval(tmp_path, keep):
    cfg = compose_config(
        *TINY,
        "schedule=linear_probe",
        "schedule.epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.log_every_n_steps=50",
        f"checkpoints.keep={keep}",
    )
    run_module.train(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file() == (keep != "last")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() == (keep != "best")
    tested = json.loads((tmp_path / "metrics.json").read_text())["checkpoint"]["tested"]
    assert tested == ("last.ckpt" if keep == "last" else "best.ckpt")
    assert (
        load_run(tmp_path, get_task("classification")).checkpoint.name == tested
    )  # exports, report and explain read the tested one
    report = (tmp_path / "report.html").read_text()
    assert ("the tested checkpoint holds the final weights" in report) == (keep == "last")
    rows = _csv_rows(tmp_path / "logs" / "probe" / "metrics.csv")  # linear_probe's one phase
    assert [int(r["step"]) for r in rows if r.get("lr/head")] == [2]  # 3 batches < 50: clamped to 3
    assert any(r.get("train/loss_step") for r in rows)


def test_checkpoints_keep_refuses_other_values():
    from finetune.commands.precheck import check_config
    from finetune.run.errors import ConfigError

    with pytest.raises(ConfigError, match=r"checkpoints.keep='all' is not known: choose one of best, last, both"):
        check_config(compose_config("checkpoints.keep=all"))


# 4. A console a person can read.


def test_progress_bar_names_the_phase_in_full_hides_v_num_and_reports_a_rate(tmp_path, capsys):
    cfg = compose_config(
        *[a for a in TINY if a != "trainer.progress_bar=false"],
        "schedule=gradual",
        "trainer.limit_train_batches=3",
        "trainer.log_every_n_steps=2",
        "schedule.phases=[{name: probe_the_head, epochs: 1, freeze: all}]",
    )
    run_module.train(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "probe_the_head · epoch 1/1" in out
    assert "v_num" not in out and "0.00it/s" not in out
    assert "it/s" in out or "s/it" in out


def test_rate_column_counts_batches_over_the_time_they_took():
    from rich.progress import Progress

    from finetune.training.display import RateColumn

    progress = Progress(RateColumn(None), auto_refresh=False, disable=True)
    task_id = progress.add_task("x", total=10)
    task = progress.tasks[task_id]
    assert RateColumn(None).render(task).plain == "–it/s"  # nothing done yet: no made-up 0.00
    progress.update(task_id, completed=4, updated=task.start_time + 2.0)  # one throttled redraw
    assert RateColumn(None).render(task).plain == "2.00it/s"


def test_one_line_says_once_which_file_was_loaded(tmp_path, caplog):
    """Our one line instead of timm's two, once per file however often the model is built."""
    import timm
    from safetensors.torch import save_file

    from finetune.models.weights import create_model, resolve_weights

    file = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), file)
    with caplog.at_level(logging.INFO):
        record = resolve_weights("resnet10t", str(file), True)
        for _ in range(3):
            create_model(record, num_classes=0)
    said = [r.getMessage() for r in caplog.records if "weights" in r.getMessage()]
    assert said == [f"weights: timm resnet10t from backbone.weights={file}"]


def test_long_paths_are_printed_whole_when_output_is_not_a_terminal():
    from finetune.training.display import console

    path = "/runs/" + "a_rather_long_directory_name/" * 12 + "report.html"
    with console.capture() as captured:
        console.print(f"report: {path}")
    assert captured.get().strip() == f"report: {path}"


def test_image_size_far_below_the_backbones_downsampling_is_warned():
    import timm

    from finetune.training.input_warnings import image_size_advice, split_advice, total_stride

    model = timm.create_model("resnet10t", num_classes=0)
    assert total_stride(model) == 32
    [message] = image_size_advice(model, (16, 16))
    assert "dataset.image_size=16 is small for resnet10t" in message and "0.5 px" in message
    assert "dataset.image_size>=64" in message
    assert image_size_advice(model, (64, 64)) == []
    assert split_advice({"train": 100, "val": 30, "test": 270}) == []
