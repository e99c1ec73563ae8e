"""Phases: fresh optimisers per phase, real per-group lrs, frozen sets per phase, resume, feature cache."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from finetune.commands import train as run_module
from finetune.run.optim import warmup_cosine_factor
from finetune.tasks.classification.module import ClassificationTask

from ..conftest import compose_config
from ..helpers import cli_in_process, one_torch_thread, squares

FAST = [
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=2",
    "trainer.deterministic=true",
]
TWO_PHASES = [
    "schedule=gradual",
    "schedule.phases=[{name: probe, epochs: 1, freeze: all, lr: 0.01, scheduler: cosine},"
    "{name: top, epochs: 3, freeze: -1, scheduler: warmup_cosine, warmup_epochs: 1}]",
]


def lr_trace(run_dir: Path, phase: str, group: str) -> list[tuple[int, float]]:
    with open(run_dir / "logs" / phase / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r[f"lr/{group}"])) for r in csv.DictReader(f) if r.get(f"lr/{group}")]


@pytest.mark.slow
def test_logged_group_lrs_follow_the_analytic_schedule_per_phase(tmp_path):
    cfg = compose_config(*FAST, *TWO_PHASES, "trainer.limit_train_batches=4", "schedule.backbone_lr_mult=0.1")
    run_module.train(cfg, tmp_path)
    probe = lr_trace(tmp_path, "probe", "head")
    assert [s for s, _ in probe] == [0, 1, 2, 3]
    for step, lr in probe:
        assert lr == pytest.approx(0.01 * warmup_cosine_factor(step, 4, 0), rel=1e-6)
    top_head, top_stage = lr_trace(tmp_path, "top", "head"), lr_trace(tmp_path, "top", "stage4")
    assert len(top_head) == 12 and not lr_trace(tmp_path, "probe", "stage4")  # frozen: no group at all
    for (step, head), (_, stage) in zip(top_head, top_stage):
        factor = warmup_cosine_factor(step, 12, 4)
        assert head == pytest.approx(5e-3 * factor, rel=1e-6)
        assert stage == pytest.approx(5e-4 * factor, rel=1e-6)  # the real lr of the stage group


def _hashes(model) -> dict[str, str]:
    return {
        k: hashlib.sha256(v.detach().contiguous().numpy().tobytes()).hexdigest() for k, v in model.state_dict().items()
    }


@pytest.mark.slow
def test_each_phase_keeps_its_frozen_stages_and_trains_the_unfrozen(tmp_path, monkeypatch):
    seen: list[tuple[tuple[str, ...], dict[str, str]]] = []
    monkeypatch.setattr(
        ClassificationTask, "on_train_start", lambda self: seen.append((self.model.frozen, _hashes(self.model)))
    )
    monkeypatch.setattr(
        ClassificationTask, "on_train_end", lambda self: seen.append((self.model.frozen, _hashes(self.model)))
    )
    cfg = compose_config(*FAST, *TWO_PHASES, "trainer.limit_train_batches=3", "data.cache_features=false")
    run_module.train(cfg, tmp_path)
    (frozen1, start1), (_, end1), (frozen2, start2), (_, end2) = seen
    assert set(frozen1) == {"stem", "stage1", "stage2", "stage3", "stage4"}
    assert set(frozen2) == {"stem", "stage1", "stage2", "stage3"}
    backbone = [k for k in start1 if k.startswith("backbone.")]
    assert all(start1[k] == end1[k] for k in backbone)  # phase 1: whole backbone fixed
    stage4 = [k for k in backbone if k.startswith("backbone.layer4.") and "num_batches" not in k]
    below = [k for k in backbone if not k.startswith("backbone.layer4.")]
    assert all(start2[k] == end2[k] for k in below)  # phase 2: stem..stage3 fixed (BN too)
    assert all(start2[k] != end2[k] for k in stage4)  # …and the unfrozen stage trained


def _run(args: list[str], cwd: Path, command: tuple[str, ...] = ("-m", "finetune")) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *command, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


# `python -m finetune` whose process SIGKILLs itself when phase 2 ("top") starts its second epoch: the
# first epoch of phase 2 is then validated and checkpointed. A fixed point, not a race with a poller.
KILLED_IN_PHASE_TWO = """
import os, runpy, signal
import lightning as L

class KillInPhaseTwo(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.logger is not None and trainer.logger.version == "top" and trainer.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

init = L.Trainer.__init__
L.Trainer.__init__ = lambda self, *a, callbacks=(), **kw: init(self, *a, callbacks=[*callbacks, KillInPhaseTwo()], **kw)
runpy.run_module("finetune", run_name="__main__", alter_sys=True)
"""


def _test_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


def _task_args(task: str, tmp_path: Path) -> tuple[list[str], str]:
    """Tiny two-phase command line of ``task`` and the validation metric its epochs log."""
    if task.startswith("classification"):
        # augmented: random crops, flips and colour; with LoRA adapters (their tensors are not in the
        # pretrained weights) and an EMA of the weights, whose average and training weights must both
        # resume (keep=last: the final weights are tested, whatever val says)
        extra = (
            ["augment=light", "ema.decay=0.9", "checkpoints.keep=last", "backbone.adapter=lora"]
            if task.endswith("augmented-ema-lora")
            else []
        )
        return [*FAST, *TWO_PHASES, *extra, "trainer.limit_train_batches=6"], "val/acc"
    squares(tmp_path / "squares", n=10, size=64)
    fast = [a for a in FAST if not a.startswith("dataset.image_size")]  # segmentation: dataset.crop_size
    return (
        [
            *fast,
            *TWO_PHASES,
            "task=segmentation",
            "dataset=seg_folder",
            f"dataset.root={tmp_path / 'squares'}",
            "dataset.mask_mode=binary",
            "dataset.crop_size=32",
            "dataset.num_workers=0",
            "dataset.samples_per_image=4",
            "head=unet",
            "head.decoder_channels=[16,16,16,16,16]",
            "schedule.batch_size=4",
            "segmentation.overlays=1",
        ],
        "val/dice",
    )


@pytest.mark.slow
# the plain classification case (keep=best, no augmentation) is a subset of the augmented one here and of
# test_resume_kinds.py's mid-epoch kills on every dataset kind
@pytest.mark.parametrize("task", ["classification-augmented-ema-lora", "segmentation"])
def test_sigkill_in_phase_two_then_resume_matches_an_uninterrupted_run(tmp_path, task):
    args, metric = _task_args(task, tmp_path)
    with one_torch_thread():  # the uninterrupted reference in this process (one interpreter start less)
        whole = cli_in_process(*args, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = _run([*args, "hydra.run.dir=killed"], tmp_path, ("-c", KILLED_IN_PHASE_TWO))
    log = killed.communicate(timeout=600)[0].decode()
    assert killed.returncode == -signal.SIGKILL, log[-3000:]
    with open(tmp_path / "killed" / "logs" / "top" / "metrics.csv", newline="") as f:
        assert sum(bool(r.get(metric)) for r in csv.DictReader(f)) == 1  # killed after phase 2's first epoch
    assert not (tmp_path / "killed" / "metrics.json").exists()
    records = {name: (tmp_path / "killed" / name).stat() for name in ("config.yaml", "data.json", "weights.json")}

    with one_torch_thread():  # the resume in this process too
        resumed = cli_in_process("resume=killed", cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "resuming" in output
    for name, before in records.items():  # the run's record is not rewritten, not even with the same text
        after = (tmp_path / "killed" / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    expected, got = _test_metrics(tmp_path / "whole"), _test_metrics(tmp_path / "killed")
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.slow
def test_resume_a_run_that_finished_phase_one_continues_into_phase_two(tmp_path):
    first = compose_config(
        *FAST,
        "schedule=gradual",
        "trainer.limit_train_batches=3",
        "checkpoints.keep=both",
        "schedule.phases=[{name: probe, epochs: 1, freeze: all}]",
    )
    run_module.train(first, tmp_path)  # a run that stopped after phase 1
    both = compose_config(*FAST, *TWO_PHASES, "trainer.limit_train_batches=3")
    run_module.train(both, tmp_path, resume_from=tmp_path / "checkpoints" / "last.ckpt")
    assert lr_trace(tmp_path, "top", "stage4"), "phase 2 did not run"
    assert (tmp_path / "metrics.json").exists()


def _head_after_probe(tmp_path: Path, cache: str, *extra: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = compose_config(
        *FAST,
        "schedule=linear_probe",
        "schedule.epochs=2",
        "trainer.limit_train_batches=5",
        f"data.cache_features={cache}",
        "checkpoints.keep=both",
        *extra,
    )
    run_module.train(cfg, tmp_path / cache)
    state = torch.load(tmp_path / cache / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return state["model.head.0.weight"], state["model.head.0.bias"]


@pytest.mark.slow
def test_cached_features_give_the_same_head_as_the_live_backbone(tmp_path):
    cached = _head_after_probe(tmp_path, "true")
    live = _head_after_probe(tmp_path, "false")
    for a, b in zip(cached, live):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_limited_run_caches_the_features_of_only_the_batches_it_draws(tmp_path, monkeypatch):
    """limit_train_batches=2 for 2 epochs, limit_val_batches=1, batches of 8: the training images of the first
    two batches of each epoch's shuffled order, the first 8 validation images; the run trains and validates."""
    from finetune.training import features

    caches = []
    extract = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a: caches.append(extract(*a)) or caches[-1])
    cfg = compose_config(
        *FAST,
        "schedule=linear_probe",
        "schedule.epochs=2",
        "schedule.batch_size=8",
        "seed=3",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "data.cache_features=true",
    )
    run_module.train(cfg, tmp_path)
    train, val = caches
    drawn = {
        int(i) for e in (0, 1) for i in torch.randperm(train.size, generator=torch.Generator().manual_seed(3 + e))[:16]
    }
    assert sorted(train.rows) == sorted(drawn) and len(train.features) == len(drawn) < train.size
    assert sorted(val.rows) == list(range(8)) and len(val.features) == 8 < val.size
    assert (tmp_path / "metrics.json").is_file()


def test_cache_turns_itself_off_with_random_augmentation_and_refuses_when_forced(tmp_path):
    from finetune.data.datamodule import ClassificationDataModule
    from finetune.models.freezing import frozen_stages
    from finetune.models.weights import resolve_weights
    from finetune.tasks.registry import get_task
    from finetune.training.features import use_feature_cache

    cfg = compose_config(*FAST, "schedule=linear_probe", "augment=light")
    data = ClassificationDataModule(cfg.dataset, cfg.augment, 8, 0, 0)
    model = get_task("classification").build_model(
        cfg, resolve_weights("resnet10t", pretrained=False), data.in_chans, 10
    )
    model.set_frozen(frozen_stages(model.stage_map, "all"), "frozen")
    assert use_feature_cache("auto", model, data) is False
    with pytest.raises(Exception, match="inputs are random"):
        use_feature_cache("true", model, data)
    model.set_frozen(frozen_stages(model.stage_map, 2), "frozen")
    assert use_feature_cache("auto", model, data) is False


def test_plan_prints_phases_and_fails_fast_on_inconsistent_configs(tmp_path):
    ok = cli_in_process("plan=true", "schedule=gradual", *FAST[:3], cwd=tmp_path)  # the plan: its output only
    assert ok.returncode == 0, ok.stderr
    for text in ("phase 1 'probe'", "phase 3 'all'", "stage4/no_decay", "imbalance", "global batch"):
        assert text in ok.stdout
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))
    bad = {
        "schedule.phases=[]": "schedule.phases is empty",
        "schedule.scheduler=linear": "scheduler",
        "schedule.phases.1.freeze=9": "has 4 stages",
        "schedule.backbone_lr_mult=0": "schedule.phases[1] ('last_stage') trains backbone stages (freeze=-1) "
        "with backbone_lr_mult=0",
        "dataset.grayscale=adapt dataset=imagefolder": "dataset.root",
    }
    for override, message in bad.items():  # in this process: only the refusal is checked
        out = cli_in_process("plan=true", "schedule=gradual", *FAST[:3], *override.split(), cwd=tmp_path)
        assert out.returncode != 0 and message in out.stderr, (override, out.stderr[-500:])


def test_a_run_written_before_a_config_key_existed_resumes_with_its_default(tmp_path):
    from finetune.run.records import resume_config

    current = compose_config("schedule.epochs=9")
    old = OmegaConf.to_container(compose_config("schedule.epochs=2"))
    del old["monitor"]  # a key added after this run was written
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    cfg = resume_config(tmp_path, current)
    assert cfg.monitor == "auto" and cfg.schedule.epochs == 2  # new key: today's default; the rest: as saved
