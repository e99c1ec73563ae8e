"""``finetune lr-find``: Lightning's range test on one phase, per-stage learning-rate ratios kept, the
suggestion taken against log(lr) from debiased losses, the plot and JSON in a run directory of its own.
Real tiny scans: digits, random resnet10t, 32 px, 20 steps."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

from finetune.commands import lr_find as command
from finetune.run.schedule import lr_key, phases_from
from finetune.tasks.registry import get_task
from finetune.training.lr_find import debiased, default_phase, find_lr, range_test, scan_trainer, steepest_descent
from finetune.training.phases import PlannedPhase

from ..conftest import compose_config
from ..helpers import squares

TINY = [
    "+classification=digits",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "trainer.progress_bar=false",
]


def test_the_scan_keeps_the_ratio_between_the_stages_learning_rates(tmp_path):
    """Every optimizer step of the scan runs each stage at its configured ratio to the head (backbone
    x0.1, layer decay x0.5 per stage further down), while the head's lr sweeps min_lr -> max_lr: read
    from the real optimizer's param groups just before each step."""
    cfg = compose_config(*TINY, "backbone.freeze=0", "schedule.layer_decay=0.5")
    steps: list[dict[str, float]] = []
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})
    )
    try:
        scan = find_lr(get_task("classification"), cfg, tmp_path, None, 1e-6, 1.0, 20)
    finally:
        hook.remove()
    expected = {"head": 1.0, "stage4": 0.1, "stage3": 0.05, "stage2": 0.025, "stage1": 0.0125, "stem": 0.00625}
    assert len(steps) == 20
    for lrs in steps:
        assert {name: lr / lrs["head"] for name, lr in lrs.items()} == pytest.approx(
            {name: expected[name.split("/")[0]] for name in lrs}
        )
    head = [lrs["head"] for lrs in steps]
    assert head == pytest.approx(scan.lrs)  # the lr recorded against each loss is the head's
    assert head[0] == pytest.approx(1e-6) and head[-1] > 0.1 and head == sorted(head)
    assert scan.lr_ratios == pytest.approx({name: expected[name.split("/")[0]] for name in steps[0]})


def test_the_command_writes_the_plot_and_the_json_in_a_new_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert command.main([*TINY, "steps=20"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("_lr-find_digits_resnet10t")
    assert (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((run_dir / "lr_find.json").read_text())
    assert record["phase"] == "finetune" and record["phase_index"] == 0 and record["lr_key"] == "schedule.lr"
    assert record["min_lr"] <= record["suggestion"] <= record["max_lr"]
    assert len(record["lrs"]) == len(record["losses"]) == record["steps"] == 20
    assert record["config_lr"] == 5e-3 and record["frozen"] == ["stem", "stage1", "stage2", "stage3", "stage4"]
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == record["command"] == " ".join(["finetune", *TINY, f"schedule.lr={record['suggestion']:.3g}"])
    assert not list(run_dir.glob(".lr_find_*.ckpt"))  # Lightning's temporary checkpoint is gone


def test_a_phase_that_does_not_exist_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # a root that exists: the phase is the only thing wrong
    args = ["+classification=hymenoptera", "schedule=gradual", f"dataset.root={tmp_path / 'data'}", "phase=warmup"]
    assert command.main(args) == 2
    error = capsys.readouterr().err
    assert "phase='warmup'" in error and "0=probe, 1=last_stage, 2=all" in error
    assert not (tmp_path / "runs").exists()
    assert command.main([*TINY, "steps=5"]) == 2 and "steps>=20" in capsys.readouterr().err


def test_segmentation_scans_its_decoder_and_encoder_stages(tmp_path):
    """The seam carries segmentation: a U-Net over a random resnet10t, freeze=-1 (the top encoder stage
    trains at x0.1 of the decoder + head)."""
    squares(tmp_path / "data", n=10, foreground=1)
    cfg = compose_config(
        "task=segmentation",
        "dataset=seg_folder",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.class_names=[background,thing]",
        "dataset.test_fraction=0.2",
        "dataset.crop_size=32",
        "dataset.num_workers=0",
        "head=unet",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "backbone.freeze=-1",
        "schedule.batch_size=2",
        "trainer.progress_bar=false",
    )
    scan = find_lr(get_task("segmentation"), cfg, tmp_path, None, 1e-6, 1.0, 20)
    assert scan.lr_ratios == pytest.approx({"head": 1.0, "head/no_decay": 1.0, "stage4": 0.1, "stage4/no_decay": 0.1})
    assert len(scan.lrs) == 20 and scan.min_lr <= scan.suggestion <= scan.max_lr


def test_the_default_phase_and_the_key_that_sets_its_lr():
    """gradual: probe (own lr, head only), last_stage and all (both read schedule.lr): the default is
    last_stage, and its key sets its lr alone."""
    cfg = compose_config("schedule=gradual")
    plan = [PlannedPhase(p, frozen) for p, frozen in zip(phases_from(cfg), [("stem", "s1", "s2"), ("stem", "s1"), ()])]
    assert default_phase(plan, ("stem", "s1", "s2")) == 1
    assert default_phase(plan[:1], ("stem", "s1", "s2")) == 0
    assert [lr_key(cfg, i) for i in range(3)] == [
        "schedule.phases.0.lr",
        "++schedule.phases.1.lr",
        "++schedule.phases.2.lr",
    ]
    assert lr_key(compose_config("+classification=digits"), 0) == "schedule.lr"


class _ConstantLoss(L.LightningModule):
    """A loss of 3.0 at every step, two named param groups."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(1, 1), nn.Linear(1, 1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return 3.0 + 0 * (self.body(batch[0]) + self.head(batch[0])).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(
            [
                {"name": "stage1", "params": self.body.parameters(), "lr": 0.1},
                {"name": "head", "params": self.head.parameters(), "lr": 1.0},
            ]
        )


def test_the_recorded_loss_is_debiased(tmp_path):
    """Lightning's running mean divides by 1 - beta^(k+1) after k steps (its first point is half the
    loss); debiased() gives back the constant loss at every step."""
    data = L.LightningDataModule.from_datasets(TensorDataset(torch.ones(64, 1)), batch_size=2)
    finder = range_test(scan_trainer(compose_config(), tmp_path, 20), _ConstantLoss(), data, 1e-6, 1.0, 20)
    assert finder.results["loss"][0] == pytest.approx(1.5, rel=0.02)
    assert debiased(finder.results["loss"], finder.beta) == pytest.approx([3.0] * 20)
    assert finder.ratios == {"stage1": pytest.approx(0.1), "head": 1.0}


def test_the_suggestion_is_the_steepest_descent_against_log_lr():
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    losses = [2 - math.tanh(math.log10(lr) + 2.5) for lr in lrs]  # falls fastest at 10^-2.5
    assert steepest_descent(lrs, losses) == pytest.approx(10**-2.5, rel=0.1)
    assert steepest_descent(lrs[:12], losses[:12]) is None
