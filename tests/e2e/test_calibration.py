"""Calibration (temperature scaling fitted on val, ECE / adaptive ECE, reliability bins) and test-time
augmentation (the flips training used), from the formulas to a real run, its export and predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchmetrics.classification import MulticlassCalibrationError

import finetune
from finetune.commands import train as run_module
from finetune.commands.args import compose_config as compose_checked
from finetune.export.loading import load_export
from finetune.run.errors import ConfigError
from finetune.tasks.classification.calibration import calibration_errors, confidences, fit_temperature, reliability_bins
from finetune.tasks.classification.module import ClassificationTask, probabilities
from finetune.tasks.registry import TASKS, get_task

from ..conftest import compose_config

BREAST = [
    "dataset=medmnist",
    "dataset.name=breastmnist",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=28",
    "schedule=linear_probe",
    "schedule.epochs=1",
    "schedule.batch_size=16",
    "trainer.limit_train_batches=3",
    "trainer.progress_bar=false",
    "data.cache_features=false",
    "logger=csv",
]


def test_ece_equals_torchmetrics_and_adaptive_bins_hold_equal_mass():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=500)
    targets = rng.integers(0, 4, size=500)
    ours = calibration_errors(probs, targets, multilabel=False)
    library = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")(
        torch.tensor(probs).float(), torch.tensor(targets)
    )
    assert ours["ece"] == pytest.approx(float(library), abs=1e-5)
    adaptive = reliability_bins(*confidences(probs, targets, False), adaptive=True)
    assert set(adaptive.count.tolist()) <= {33.0, 34.0} and adaptive.count.sum() == 500
    assert adaptive.error == pytest.approx(ours["adaptive_ece"])
    perfect = rng.random(20000)  # outcomes drawn with the stated confidence: both errors near 0
    assert reliability_bins(perfect, (rng.random(20000) < perfect).astype(float)).error < 0.02


@pytest.mark.parametrize("multilabel", [False, True])
def test_temperature_fit_recovers_the_temperature_the_labels_were_drawn_with(multilabel):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 3, generator=generator, dtype=torch.float64) * 4
    if multilabel:
        targets = torch.bernoulli(torch.sigmoid(logits / 2.5), generator=generator)
    else:
        targets = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, targets, multilabel) == pytest.approx(2.5, rel=0.05)


def test_tta_averages_the_logits_of_the_image_and_its_flips():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.randn(5, 2, 4, 4)
    task = ClassificationTask(model, 3, tta=("hflip", "vflip", "hvflip"))
    expected = (model(x) + model(x.flip(-1)) + model(x.flip(-2)) + model(x.flip(-2, -1))) / 4
    torch.testing.assert_close(task.eval_logits(x), expected)
    assert not torch.allclose(expected, model(x))


def test_tta_is_refused_where_training_flipped_nothing():
    cfg = compose_config("tta=true", "trainer.progress_bar=false")  # digits: a mirrored digit is another digit
    with pytest.raises(ConfigError, match="tta=true .* flipped no image .*allow_flips=false"):
        get_task("classification").data_module(cfg)
    with pytest.raises(ConfigError, match="calibration=temperature: calibration is a key of task=classification"):
        compose_checked(
            ["task=segmentation", "dataset=seg_folder", "dataset.root=/x", "head=unet", "calibration=temperature"]
        )


def test_a_calibrated_tta_run_records_it_and_predict_applies_it(shared_data, tmp_path):
    """BreastMNIST (flips on, threshold tuned, temperature fitted on val): metrics.json holds the
    calibration record; the export and the Python API give the probabilities the test computed:
    mean logits over the image and its flip, divided by T."""
    cfg = compose_config(
        *BREAST,
        f"dataset.root={shared_data / 'medmnist'}",
        "augment.hflip=0.5",
        "tta=true",
        "calibration=temperature",
        "threshold=tune",
    )
    run_module.train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    record = metrics["calibration"]
    assert record["method"] == "temperature" and record["tta"] == ["hflip"] and record["temperature"] > 0
    assert record["val"]["after"]["nll"] <= record["val"]["before"]["nll"] + 1e-9  # fitted to minimise it
    assert metrics["test"]["ece"] == record["test"]["after"]["ece"]
    assert (tmp_path / "plots" / "reliability.png").stat().st_size > 1000
    assert "Calibration" in (tmp_path / "report.html").read_text()

    exported = load_export(tmp_path / "exports" / "model.safetensors", tasks=TASKS)
    training = exported.metadata["training"]
    assert training["tta"] == ["hflip"] and training["temperature"] == pytest.approx(record["temperature"])
    data = get_task("classification").data_module(cfg)
    images = [data.splits["test"].image(i, 1) for i in range(6)]
    model = finetune.load(tmp_path)
    x = torch.from_numpy(model.preprocess(images))
    net = model.torch_module.eval()
    with torch.no_grad():
        expected = probabilities((net(x) + net(x.flip(-1))) / 2 / record["temperature"], "binary").double().numpy()
    np.testing.assert_allclose(model.predict(images).probabilities, expected, atol=1e-6)


def test_a_finished_run_is_re_tested_at_another_threshold_with_the_checkpoint_it_had(shared_data, tmp_path):
    """``resume=<run> resume_finished=true threshold=0.3``: the same checkpoint, picked by the monitor it was
    picked by (monitor=auto follows threshold=tune: val/auc), decided at 0.3; training a run further with
    another threshold stays refused."""
    from ..helpers import cli_in_process

    run = tmp_path / "run"
    cfg = compose_config(*BREAST, f"dataset.root={shared_data / 'medmnist'}", "threshold=tune")
    run_module.train(cfg, run)
    before = json.loads((run / "metrics.json").read_text())
    assert before["checkpoint"]["monitor"] == "val/auc"
    out = cli_in_process(f"resume={run}", "resume_finished=true", "threshold=0.3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert after["test"]["threshold"] == 0.3 and after["checkpoint"] == before["checkpoint"]
    assert after["test"]["auc"] == pytest.approx(before["test"]["auc"], abs=1e-6)  # the same checkpoint
    saved = OmegaConf.load(run / "config.yaml")  # how the tested checkpoint was picked, not what auto now picks
    assert saved.threshold == 0.3 and saved.monitor == "auc"
    (run / "metrics.json").unlink()  # as if it had not finished: a threshold would change what training picks
    out = cli_in_process(f"resume={run}", "threshold=0.4", cwd=tmp_path)  # the re-test recorded 0.3
    assert out.returncode == 2 and "would change the experiment: threshold=0.4" in out.stderr


def test_a_finished_run_without_a_checkpoint_keeps_its_threshold(tiny_finished_run, tmp_path):
    """A finished run that kept no checkpoint (``checkpoints.keep=none``, or deleted) has nothing to re-test:
    ``resume_finished=true`` trains it again, so ``threshold=`` (which monitor=auto follows) stays refused."""
    from ..helpers import assert_refused, cli_in_process

    run = tmp_path / "run"
    shutil.copytree(tiny_finished_run, run, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    before = (run / "metrics.json").read_text()
    out = cli_in_process(f"resume={run}", "resume_finished=true", "threshold=0.3", cwd=tmp_path)
    line = assert_refused(out, "would change the experiment: threshold=0.3")
    assert "kept no checkpoint to re-test" in line
    assert (run / "metrics.json").read_text() == before
