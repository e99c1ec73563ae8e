"""Training features of issue 16: early stopping per phase, gradient accumulation and clipping,
label smoothing, mixup / cutmix, and the ``logger`` config group. Real tiny runs (digits, random
resnet10t, 32 px, batches of 8, a few batches) and exact checks on fixed batches."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finetune.commands import train as run_module
from finetune.commands.args import compose_config as compose_checked
from finetune.run.errors import ConfigError, FinetuneError
from finetune.tasks.classification.mixing import BatchMixer
from finetune.tasks.classification.module import ClassificationTask
from finetune.tasks.registry import get_task
from finetune.training.validate import validate

from ..conftest import compose_config

TINY = [
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "schedule.batch_size=8",
    "trainer.progress_bar=false",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.cache_features=false",
]  # the cache would run the backbone over the whole train split
FLAT = "schedule.phases=[{name: a, epochs: 4, freeze: all, lr: 1.0e-12, scheduler: constant}"  # cannot improve
SEGMENTATION = ["task=segmentation", "dataset=seg_folder", "dataset.root=/nonexistent", "head=unet"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _phases(run_dir: Path) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads((run_dir / "metrics.json").read_text())["phases"]}


def _epochs(path: Path, key: str) -> list[int]:
    return sorted({int(r["epoch"]) for r in _rows(path) if r.get(key) and r.get("epoch")})


# 1. Early stopping


def test_early_stopping_ends_a_phase_and_the_next_phase_runs(tmp_path):
    """Phase a cannot improve (lr 1e-12): with patience 1 it stops after its 2nd of 4 epochs; phase b
    runs its epoch as usual. The default loggers (CSV + TensorBoard) log both phases."""
    cfg = compose_config(
        *TINY,
        "schedule=gradual",
        "trainer.limit_train_batches=2",
        "schedule.early_stop.patience=1",
        FLAT + ", {name: b, epochs: 1, freeze: all}]",
    )
    run_module.train(cfg, tmp_path)
    phases = _phases(tmp_path)
    assert phases["a"] | {"freeze": None} == {
        "name": "a",
        "epochs": 4,
        "freeze": None,
        "epochs_run": 2,
        "stopped_epoch": 2,
    }
    assert phases["b"]["epochs_run"] == 1 and phases["b"]["stopped_epoch"] is None
    assert _epochs(tmp_path / "logs" / "a" / "metrics.csv", "val/acc") == [0, 1]
    assert _epochs(tmp_path / "logs" / "b" / "metrics.csv", "val/acc") == [0]
    assert {p.name for p in (tmp_path / "tensorboard").iterdir()} == {"a", "b", "test", "hparams"}


def test_a_resumed_phase_that_had_stopped_early_trains_no_further(tmp_path):
    """Killed after phase a stopped early, before phase b wrote a checkpoint: resuming from a's last
    checkpoint goes straight to phase b (Lightning does not save ``should_stop``)."""
    first = compose_config(
        *TINY,
        "schedule=gradual",
        "trainer.limit_train_batches=2",
        "checkpoints.keep=both",
        "schedule.early_stop.patience=1",
        FLAT + "]",
    )
    run_module.train(first, tmp_path)
    assert _phases(tmp_path)["a"]["stopped_epoch"] == 2
    both = compose_config(
        *TINY,
        "schedule=gradual",
        "trainer.limit_train_batches=2",
        "checkpoints.keep=both",
        "schedule.early_stop.patience=1",
        FLAT + ", {name: b, epochs: 1, freeze: all}]",
    )
    run_module.train(both, tmp_path, resume_from=tmp_path / "checkpoints" / "last.ckpt")
    phases = _phases(tmp_path)
    assert phases["a"]["epochs_run"] == 2 and phases["a"]["stopped_epoch"] == 2  # no third epoch of a
    assert phases["b"]["epochs_run"] == 1


# 2. Gradient accumulation and clipping (the module optimises automatically: Lightning does both)


def test_accumulation_halves_the_optimizer_steps_and_clipping_bounds_the_gradient_norm(tmp_path, monkeypatch):
    seen: dict[str, list] = {"batches": [], "before_clip": [], "after_clip": [], "steps": []}

    def norm(module) -> float | None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else None

    monkeypatch.setattr(ClassificationTask, "on_train_batch_start", lambda self, b, i: seen["batches"].append(i))
    monkeypatch.setattr(
        ClassificationTask, "on_before_optimizer_step", lambda self, opt: seen["before_clip"].append(norm(self))
    )
    monkeypatch.setattr(
        ClassificationTask,
        "on_before_zero_grad",  # after the step: the clipped gradients
        lambda self, opt: seen["after_clip"].append(norm(self)),
    )
    monkeypatch.setattr(ClassificationTask, "on_train_end", lambda self: seen["steps"].append(self.trainer.global_step))
    cfg = compose_config(
        *TINY,
        "schedule=linear_probe",
        "schedule.epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.accumulate_grad_batches=2",
        "trainer.gradient_clip_val=0.001",
        "logger=csv",
    )
    run_module.train(cfg, tmp_path)
    assert len(seen["batches"]) == 8 and seen["steps"] == [4]  # 8 batches, one optimizer step per 2
    assert max(seen["before_clip"]) > 0.01  # clipping had work to do…
    clipped = [n for n in seen["after_clip"] if n is not None]
    assert len(clipped) >= 2 and max(clipped) <= 0.001 * 1.0001  # …and the stepped gradients obey it
    # 2 optimizer steps per epoch < log_every_n_steps (10): the interval is clamped to them, every epoch logs
    log = tmp_path / "logs" / "probe" / "metrics.csv"
    assert _epochs(log, "train/loss_step") == [0, 1]
    assert sorted({int(r["step"]) for r in _rows(log) if r.get("lr/head")}) == [1, 3]  # the lr of steps 2 and 4
    assert not (tmp_path / "tensorboard").exists()  # logger=csv: CSV alone


# 3. Label smoothing (the training loss only)


def test_label_smoothing_follows_its_formula_in_training_and_leaves_validation_plain():
    torch.manual_seed(0)
    model, eps = nn.Linear(4, 3), 0.1  # the module only calls model(inputs)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    task = ClassificationTask(model, 3, label_smoothing=eps)
    loss, _, targets = task._step((x, y), 0)
    log_p = F.log_softmax(model(x), dim=-1)
    expected = ((1 - eps) * -log_p[torch.arange(6), y] + eps * -log_p.mean(dim=-1)).mean()
    torch.testing.assert_close(loss, expected)
    assert torch.equal(targets, y)
    plain = F.cross_entropy(model(x), y)
    assert not torch.isclose(loss, plain)
    torch.testing.assert_close(task._step((x, y))[0], plain)  # validation / test: the plain loss

    multi = ClassificationTask(model, 3, multilabel=True, label_smoothing=0.2)
    hot = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1], [1, 0, 0]])
    loss = multi._step((x, hot), 0)[0]
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(model(x), hot * 0.8 + 0.1))


# 4. Mixup / CutMix


def test_batch_mixer_mixes_pairs_with_smoothed_soft_targets_reproducibly():
    torch.manual_seed(0)
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1])  # odd: the last image stays unmixed
    original = x.clone()
    mixer = BatchMixer(3, mixup=0.4, cutmix=0.0, prob=1.0, label_smoothing=0.3, seed=0)
    mixed, soft = mixer(x, y, 0, 0, 0, 0)
    assert torch.equal(x, original)  # the loader's batch is not touched
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(5))
    off, on = 0.1, 0.8  # smoothing 0.3 over 3 classes
    lam = (float(soft[0, 0]) - off) / (on - off)  # image 0 (class 0) is mixed with image 3 (class 2)
    assert 0 < lam < 1
    torch.testing.assert_close(mixed[0], lam * x[0] + (1 - lam) * x[3])
    assert torch.equal(mixed[4], x[4]) and torch.allclose(soft[4], torch.tensor([off, on, off]))
    again, _ = mixer(x, y, 0, 0, 0, 0)
    other, _ = mixer(x, y, 0, 0, 1, 0)  # another batch index: another draw
    assert torch.equal(mixed, again) and not torch.equal(mixed, other)


def test_mixup_changes_training_batches_only_and_trains_on_images_not_cached_features(tmp_path, monkeypatch):
    mixes, forwards = [], []
    mix, logits = BatchMixer.__call__, ClassificationTask._logits

    def spy_mix(self, inputs, targets, *key):
        out = mix(self, inputs, targets, *key)
        mixes.append((inputs.clone(), targets.clone(), *out))
        return out

    def spy_logits(self, inputs):
        forwards.append((self.trainer.state.stage.value, self.features_input, inputs.clone()))
        return logits(self, inputs)

    monkeypatch.setattr(BatchMixer, "__call__", spy_mix)
    monkeypatch.setattr(ClassificationTask, "_logits", spy_logits)
    # linear_probe + augment=none would train on cached features; mixing needs the images
    cfg = compose_config(
        *TINY[:-1], "schedule=linear_probe", "schedule.epochs=1", "trainer.limit_train_batches=3", "mix.mixup=0.2"
    )
    run_module.train(cfg, tmp_path)
    train = [x for stage, _, x in forwards if stage == "train"]
    evaluated = [x for stage, _, x in forwards if stage in ("validate", "test")]
    assert len(mixes) == len(train) == 3 and len(evaluated) == 4
    assert not any(cached for _, cached, _ in forwards)
    for (before, hard, after, soft), seen in zip(mixes, train):
        assert torch.equal(seen, after) and not torch.equal(after, before)  # the model saw the mixed batch
        assert soft.shape == (len(hard), 10) and not torch.equal(soft, F.one_hot(hard, 10).float())
    assert not any(torch.equal(x, m[2]) for x in evaluated for m in mixes if x.shape == m[2].shape)
    rows = _rows(tmp_path / "logs" / "probe" / "metrics.csv")
    assert any(r.get("train/acc") for r in rows) and any(r.get("val/loss") for r in rows)


def test_mixing_is_refused_for_multi_label_segmentation_and_forced_feature_caches(tmp_path):
    from PIL import Image

    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text(
        "path,label\n" + "".join(f"{i}.png,{'cat;dog' if i % 2 else 'dog'}\n" for i in range(6))
    )
    multi = compose_config(
        "dataset=csv",
        f"dataset.csv={tmp_path / 'labels.csv'}",
        "dataset.multilabel=true",
        "dataset.num_workers=0",
        "mix.cutmix=1.0",
    )
    with pytest.raises(ConfigError, match="this dataset is multi-label"):  # once the labels are read
        get_task("classification").data_module(multi)
    with pytest.raises(FinetuneError, match="multi-label"):
        ClassificationTask(nn.Linear(4, 3), 3, multilabel=True, mixup=0.2)
    for override in ("mix.mixup=0.2", "mix.cutmix=1.0", "loss.label_smoothing=0.1"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=f"^{override}: {key} is a key of task=classification, and this run is"):
            _validate(*SEGMENTATION, override)
    with pytest.raises(ConfigError, match="data.cache_features=true cannot be combined with mix"):
        _validate("mix.cutmix=1.0", "data.cache_features=true")
    _validate("mix.mixup=0.2", "mix.cutmix=1.0", "loss.label_smoothing=0.1")  # classification: fine


# 5. Bad values: one line naming the key and the fix


def _validate(*overrides: str):
    cfg = compose_checked(list(overrides))  # what the schema refuses is refused here, in one line
    return validate(cfg, get_task(cfg.task))


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.early_stop.patience=0", "a whole number of epochs >= 1"),
        ("schedule.early_stop.patience=1.5", "takes a whole number or null"),
        ("schedule.early_stop.min_delta=-0.1", "a number >= 0"),
        ("trainer.accumulate_grad_batches=0", "optimizer step >= 1"),
        ("trainer.gradient_clip_val=0", "a number > 0"),
        ("loss.label_smoothing=1.0", "in [0, 1)"),
        ("mix.mixup=-1", "alpha >= 0"),
        ("mix.cutmix=yes", "takes a number"),
        ("mix.prob=1.5", "in [0, 1]"),
        ("logger.tensorboard=maybe", "takes true or false"),
        ("logger.experiment=''", "a name for the MLflow experiment"),
    ],
)
def test_each_new_key_refuses_a_bad_value_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        _validate(override)
    text = str(err.value)
    assert text.startswith(override.split("=")[0] + "=") and message in text and "\n" not in text


def test_mlflow_without_the_package_is_one_line_saying_how_to_install_it(tmp_path):
    """The package is hidden from this process (``sys.modules['mlflow'] = None``): the config check
    refuses before any run directory is made, saying what to install."""
    code = "import sys; sys.modules['mlflow'] = None; from finetune.cli import main; sys.exit(main(['logger=mlflow']))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith("finetune: error: logger.mlflow=true needs the mlflow package")
    assert "pip install 'finetune[mlflow]'" in out.stderr and not (tmp_path / "runs").exists()
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="pip install wandb"):
            _validate("logger=wandb")


def test_mlflow_logs_every_phase_into_the_runs_one_mlflow_run_beside_the_run_directory(tmp_path, monkeypatch):
    """Read back through MLflow's own client: one MLflow run in the store beside the run directory
    (``<runs>/mlflow.db``), each epoch's validation metric and each step's per-stage learning rate under
    the phase's prefix, and the test's metrics."""
    from mlflow.tracking import MlflowClient

    from finetune.training.tracking import MLFLOW_DB

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config(
        *TINY,
        "schedule=linear_probe",
        "schedule.epochs=2",
        "trainer.limit_train_batches=2",
        "logger=mlflow",
        "logger.experiment=digits",
    )
    run_dir = tmp_path / "run"
    run_module.train(cfg, run_dir)
    client = MlflowClient(f"sqlite:///{tmp_path / MLFLOW_DB}")
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.data.tags["finetune.run_dir"] == str(run_dir.absolute())
    val = [m.value for m in client.get_metric_history(run.info.run_id, "probe/val/acc")]
    csv_val = [float(r["val/acc"]) for r in _rows(run_dir / "logs" / "probe" / "metrics.csv") if r.get("val/acc")]
    assert len(val) == 2 and val == pytest.approx(csv_val, abs=1e-6)  # the same numbers as the CSV log
    assert client.get_metric_history(run.info.run_id, "probe/lr/head")
    assert "test/acc" in run.data.metrics
    assert (run_dir / "logs" / "probe" / "metrics.csv").exists() and not (run_dir / "tensorboard").exists()
    assert not (run_dir / MLFLOW_DB).exists()


# 6. EMA of the weights


def test_ema_update_is_the_warmed_up_recurrence_and_leaves_unchanged_values_bit_identical():
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    from finetune.training.averaging import WeightsEMA, ema_decay

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16))
    fixed = net[0].bias.detach().clone()
    # Lightning's EMAWeightAveraging update (torch's get_ema_avg_fn) moves values that did not change:
    assert not torch.equal(get_ema_avg_fn(0.999)(fixed.clone(), fixed, torch.tensor(1)), fixed)
    ema = WeightsEMA(decay=0.999)
    average = AveragedModel(net, use_buffers=True, multi_avg_fn=ema._update)
    expected = net[0].weight.detach().clone()
    average.update_parameters(net)  # the first update copies
    for n in range(1, 6):
        with torch.no_grad():
            net[0].weight.add_(1.0)  # weights move, the bias does not
        d = ema_decay(0.999, n)
        expected = d * expected + (1 - d) * net[0].weight.detach()
        average.update_parameters(net)
    assert ema_decay(0.999, 1) == pytest.approx(1 - 2 ** (-2 / 3)) and ema_decay(0.999, 10**9) == 0.999
    torch.testing.assert_close(average.module[0].weight, expected)
    assert torch.equal(average.module[0].bias, fixed)  # bit-identical, not merely close
    assert average.module[1].num_batches_tracked.dtype == torch.int64


def test_ema_is_validated_tested_and_exported_and_frozen_stages_stay_bit_identical(tmp_path):
    """A real run with ema.decay: the checkpoints hold the average (training weights beside it), the
    export holds the average, and every tensor of the frozen stages equals the initial model's."""
    from safetensors.torch import load_file

    from finetune.training.train import build

    overrides = [
        *TINY,
        "schedule=linear_probe",
        "schedule.backbone_lr_mult=0.1",
        "schedule.epochs=2",
        "trainer.limit_train_batches=3",
        "schedule.phases=[{name: top, epochs: 2, freeze: 2, lr: 0.05}]",
        "ema.decay=0.9",
        "checkpoints.keep=both",
        "logger=csv",
    ]
    initial = build(get_task("classification"), compose_config(*overrides)).model.state_dict()
    run_module.train(compose_config(*overrides), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    average, current = state["state_dict"], state["current_model_state"]
    frozen = [
        k for k in initial if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1.", "backbone.layer2."))
    ]
    assert frozen and all(torch.equal(average[f"model.{k}"], initial[k]) for k in frozen)
    assert all(torch.equal(current[f"model.{k}"], initial[k]) for k in frozen)
    moved = [k for k in initial if k.startswith(("backbone.layer4.", "head.")) and initial[k].is_floating_point()]
    assert any(not torch.equal(average[f"model.{k}"], current[f"model.{k}"]) for k in moved)  # a real average
    exported = load_file(tmp_path / "exports" / "model.safetensors")
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert exported and all(torch.equal(v, best[f"model.{k}"]) for k, v in exported.items())
