"""``finetune evaluate``: a run on corrupted copies of its test split (ImageNet-C-style from albumentations,
MedMNIST-C from the medmnistc package), the numbers in metrics.json, the report's Robustness section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from finetune.data.corruptions import corrupt, corruption_set, restored_global_random, seed_of

from ..helpers import cli_in_process

CORRUPTIONS = ("gaussian_noise", "impulse_noise")  # at 8x8 px, severity 5 leaves no digit to read


@pytest.fixture(scope="module")
def evaluated(finished_run, tmp_path_factory):
    """A copy of the session's digits run (3 linear-probe batches, ~40 % test accuracy), its metrics.json
    before, and ``finetune evaluate`` at severities 1 and 5 of two noises."""
    run = tmp_path_factory.mktemp("evaluate") / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    before = json.loads((run / "metrics.json").read_text())
    out = cli_in_process(
        "evaluate", f"run={run}", "corruptions=imagenet-c", "severity=1,5", f"only={','.join(CORRUPTIONS)}", cwd=run
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return run, before, json.loads((run / "metrics.json").read_text()), out.stdout


def test_clean_scores_are_the_runs_own_test_and_other_keys_are_kept(evaluated):
    run, before, after, stdout = evaluated
    record = after["robustness"]["imagenet-c"]
    for metric in ("acc", "balanced_acc", "auc", "ece"):  # the same images, preprocessing and decisions
        assert record["clean"][metric] == pytest.approx(before["test"][metric], abs=1e-5), metric
    assert {k: v for k, v in after.items() if k != "robustness"} == before
    assert record["images"] == 270 and record["image_size"] == [8, 8] and record["severities"] == [1, 5]
    assert set(record["results"]) == set(CORRUPTIONS) and not record["skipped"]
    assert "gaussian_noise" in stdout and "clean" in stdout


def test_severity_5_hurts_more_than_severity_1(evaluated):
    record = evaluated[2]["robustness"]["imagenet-c"]
    by_severity = record["by_severity"]
    assert by_severity["5"]["acc"] < by_severity["1"]["acc"] - 0.1
    assert by_severity["5"]["acc"] < 0.2  # ten classes: near chance
    assert record["mean"]["acc"] == pytest.approx((by_severity["1"]["acc"] + by_severity["5"]["acc"]) / 2, abs=1e-6)


def test_report_has_the_robustness_section(evaluated):
    page = (evaluated[0] / "report.html").read_text()
    section = page[page.index("<h2>Robustness</h2>") :]
    assert section.count('src="data:image/png;base64,') == 2  # heatmap, calibration under shift
    assert "<h3>imagenet-c</h3>" in section and "severity 5" in section


def test_an_export_is_evaluated_on_its_runs_data(evaluated, tmp_path):
    run = evaluated[0]
    out, record = evaluate_export(run, run, 5, tmp_path)
    ours = evaluated[2]["robustness"]["imagenet-c"]
    assert record["clean"]["acc"] == pytest.approx(ours["clean"]["acc"], abs=1e-6)
    assert record["results"]["gaussian_noise"]["5"] == pytest.approx(ours["results"]["gaussian_noise"]["5"], abs=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["corruptions=medmnistc"], "defines corruptions per MedMNIST dataset"),
        (["corruptions=imagenet"], "corruptions='imagenet' is not known"),
        (["corruptions=imagenet-c", "severity=7"], "severity='7': use all, one of 1..5"),
        (["corruptions=imagenet-c", "only=snow"], "only=snow: not in corruptions=imagenet-c"),
    ],
)
def test_refused_in_one_line(finished_run, tmp_path, args, message):
    out = cli_in_process("evaluate", f"run={finished_run}", *args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_an_unfinished_run_is_refused_before_any_model(finished_run, tmp_path):
    """Without metrics.json the run has no temperature or threshold yet, and a metrics.json written by evaluate
    would make ``finetune resume`` refuse it as finished."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    (run / "metrics.json").unlink()
    out = cli_in_process("evaluate", f"run={run}", "corruptions=imagenet-c", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert "has not finished (no metrics.json): resume it first, then evaluate" in out.stderr
    assert not (run / "metrics.json").exists()


def test_the_corruption_set_is_built_and_the_runs_config_read_once(finished_run, tmp_path, monkeypatch):
    from finetune.run import records
    from finetune.training import robustness

    built, read = [], []
    build, read_config = robustness.corruption_set, records.run_config
    monkeypatch.setattr(robustness, "corruption_set", lambda *args: built.append(args) or build(*args))
    monkeypatch.setattr(records, "run_config", lambda path: read.append(path) or read_config(path))
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    args = ("corruptions=imagenet-c", "severity=1", "only=gaussian_noise", "report=false")
    out = cli_in_process("evaluate", f"run={run}", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [name for name, _ in built] == ["imagenet-c"] and read == [run]
    assert json.loads((run / "metrics.json").read_text())["robustness"]["imagenet-c"]["severities"] == [1]


def test_a_re_test_keeps_the_robustness_record(evaluated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated[0], run, symlinks=True)
    out = cli_in_process(f"resume={run}", "resume_finished=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["robustness"] == evaluated[2]["robustness"]


def test_a_re_test_that_changes_the_decisions_drops_the_robustness_record(evaluated, tmp_path):
    """Robustness measured with the old decisions would no longer describe the model the run now tests."""
    run = tmp_path / "run"
    shutil.copytree(evaluated[0], run, symlinks=True)
    assert evaluated[2]["calibration"]["temperature"] == 1.0
    out = cli_in_process(f"resume={run}", "resume_finished=true", "calibration=temperature", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] != 1.0 and "robustness" not in metrics
    log = " ".join((out.stdout + out.stderr).split())
    assert "robustness record (imagenet-c) was measured with the decisions of the previous test" in log
    assert "temperature 1.0 ->" in log
    assert f"run finetune evaluate run={run} corruptions=imagenet-c again" in log  # the set measured before


def test_without_a_test_split_the_val_split_is_recorded_and_named(evaluated, tmp_path):
    """A dataset without a test split tests on val: evaluate's split=test is val, and says so."""
    run = evaluated[0]
    data = tmp_path / "data_run"
    shutil.copytree(run, data, symlinks=True)
    config = data / "config.yaml"
    config.write_text(config.read_text().replace("test_fraction: 0.15", "test_fraction: 0.0"))
    out, record = evaluate_export(run, data, 1, tmp_path)
    assert record["split"] == "test" and record["test_is_val"] is True and record["images"] == 270  # val: 15 %
    assert "on val (no test split; also used to pick the checkpoint)" in " ".join(out.stdout.split())
    assert evaluated[2]["robustness"]["imagenet-c"]["test_is_val"] is False


def test_the_split_is_streamed_and_only_size_failures_are_skipped(evaluated, monkeypatch):
    """Images are corrupted a batch at a time between forwards (no corrupted copy of the split); a severity
    a corruption cannot place at 8 px is skipped with the scored severities kept; any other ValueError is a bug
    and propagates."""
    import dataclasses

    import finetune
    from finetune.data.corruptions import CorruptionSet, NotApplicable
    from finetune.run.records import run_config
    from finetune.tasks.registry import get_task
    from finetune.training import robustness

    calls = {"corrupt": 0, "most": 0}

    def shrink(image, severity, rng):
        if severity == 5:
            raise NotApplicable("no room to place it")
        calls["corrupt"] += 1
        calls["most"] = max(calls["most"], calls["corrupt"])
        return image // 2

    def broken(image, severity, rng):
        raise ValueError("a bug in the corruption")

    fake = CorruptionSet("fake", {"shrink": shrink, "broken": broken})
    monkeypatch.setattr(robustness, "corruption_set", lambda name, dataset: fake)
    run = evaluated[0]
    model, cfg = finetune.load(run).exported, run_config(run)
    forward = model.forward

    def counted(batch):
        calls["corrupt"] = 0
        return forward(batch)

    model = dataclasses.replace(model, forward=counted)
    samples = get_task(cfg.task).data_module(cfg).splits["test"]
    options = robustness.EvaluateOptions("fake", severities=(1, 5), only=("shrink",))
    record = robustness.evaluate_robustness(model, model.task, samples, 1, fake, ["shrink"], options)
    assert 0 < calls["most"] <= 64  # the scorer's batch, not the 270 images of the split
    assert record["results"]["shrink"]["1"]["acc"] is not None and record["results"]["shrink"]["5"]["acc"] is None
    assert record["skipped"]["shrink"].startswith("not applicable to 8x8 px images at severity 5")
    assert record["mean"]["acc"] == record["results"]["shrink"]["1"]["acc"]
    options = dataclasses.replace(options, only=("broken",))
    with pytest.raises(ValueError, match="a bug in the corruption"):
        robustness.evaluate_robustness(model, model.task, samples, 1, fake, ["broken"], options)


# --- the corruption sets ------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["breastmnist", "bloodmnist", "pneumoniamnist"])
def test_medmnistc_corruptions_keep_dtype_shape_and_are_seeded(dataset):
    """As the package's own DatasetManager writes them: uint8 in 0..255, the image's size, gray stays gray
    (Pillow's L); the same seed gives the same image, another seed another noise."""
    corruptions = corruption_set("medmnistc", dataset)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3 if dataset == "bloodmnist" else 1), np.uint8)
    with restored_global_random():
        for name in corruptions.corruptions:
            if name in ("stain_deposit", "bubble"):
                continue  # drawn for 224 px images (test below)
            out = corrupt(corruptions, name, image, 5, seed_of(0, name, 5, 0))
            assert out.dtype == np.uint8 and out.shape == image.shape, name
            assert np.array_equal(out, corrupt(corruptions, name, image, 5, seed_of(0, name, 5, 0))), name
            assert not np.array_equal(out, image), name
    noisy = [corrupt(corruptions, "jpeg_compression", image, 5, s) for s in (1, 2)]
    assert np.array_equal(*noisy)  # deterministic corruption: no seed dependence


def test_the_global_random_state_is_restored():
    corruptions = corruption_set("imagenet-c", None)
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    with restored_global_random():
        corrupt(corruptions, "gaussian_noise", np.zeros((8, 8, 1), np.uint8), 3, 7)
    assert np.random.random() == expected


def test_medmnistc_stains_do_not_fit_a_28px_image():
    """The microscopy stains are placed 10 px from the border of 224 px images: at 28 px the package
    raises, and evaluate lists the corruption under skipped."""
    corruptions = corruption_set("medmnistc", "bloodmnist")
    with pytest.raises(ValueError), restored_global_random():
        corrupt(corruptions, "stain_deposit", np.zeros((28, 28, 3), np.uint8), 1, 0)


def test_medmnistc_paper_summary_is_the_packages_formula():
    """Balanced error per corruption (mean over 5 severities) / AlexNet's, and (BE - clean) / (AlexNet's BE -
    AlexNet's clean), averaged over corruptions."""
    from medmnistc.utils.baselines import BASELINES

    corruptions = corruption_set("medmnistc", "breastmnist")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)

    def probs(noise: float) -> np.ndarray:
        p1 = np.clip(labels + rng.normal(0, noise, 100), 0, 1)
        return np.stack([1 - p1, p1], axis=1)

    def balanced_error(p: np.ndarray) -> float:
        decided = p[:, 1] > 0.5
        return 1 - np.mean([np.mean(decided[labels == c] == c) for c in (0, 1)])

    clean = probs(0.3)
    corrupted = {"pixelate": [probs(0.3 + 0.1 * s) for s in range(5)], "motion_blur": [probs(0.5) for _ in range(5)]}
    summary = corruptions.summary("binary", labels, clean, corrupted, None)
    alexnet = BASELINES["breastmnist"]
    be = {k: np.mean([balanced_error(p) for p in v]) for k, v in corrupted.items()}
    expected_be = np.mean([be[k] / alexnet["raw_scores"][k] for k in be])
    expected_rbe = np.mean(
        [(be[k] - balanced_error(clean)) / (alexnet["raw_scores"][k] - alexnet["clean_score"]) for k in be]
    )
    assert summary["be"] == pytest.approx(expected_be) and summary["rbe"] == pytest.approx(expected_rbe)
    assert summary["complete"] is False and summary["clean_balanced_error"] == pytest.approx(balanced_error(clean))


def test_medmnistc_end_to_end_with_skipped_corruptions_and_the_papers_summary(evaluated):
    """The digits run scored with BloodMNIST's MedMNIST-C corruptions (both multi-class): the stains do not
    fit 8x8 images and are skipped; with every severity the paper's summary is computed from the rest."""
    import finetune
    from finetune.run.records import run_config
    from finetune.tasks.registry import get_task
    from finetune.training.robustness import EvaluateOptions, chosen_corruptions, evaluate_robustness

    run = evaluated[0]
    model, cfg = finetune.load(run), run_config(run)
    data = get_task(cfg.task).data_module(cfg)
    options = EvaluateOptions("medmnistc", only=("pixelate", "stain_deposit"))
    chosen = chosen_corruptions(options, "bloodmnist")
    record = evaluate_robustness(model.exported, model.exported.task, data.splits["test"], 1, *chosen, options)
    assert list(record["results"]) == ["pixelate"] and list(record["skipped"]) == ["stain_deposit"]
    assert "not applicable to 8x8 px images" in record["skipped"]["stain_deposit"]
    paper = record["paper"]
    assert paper["corruptions"] == ["pixelate"] and paper["complete"] is False
    error = np.mean([1 - record["results"]["pixelate"][str(s)]["balanced_acc"] for s in range(1, 6)])
    assert paper["balanced_error"]["pixelate"] == pytest.approx(error, abs=1e-5)
    assert paper["be"] == pytest.approx(error / paper["alexnet_balanced_error"]["pixelate"], abs=1e-5)


def evaluate_export(run: Path, data: Path, severity: int, tmp_path: Path):
    """``finetune evaluate`` of ``run``'s head export on ``data``'s split (gaussian noise at ``severity``): the
    finished process and the record it wrote."""
    out = cli_in_process(
        "evaluate",
        f"run={run / 'exports' / 'head.safetensors'}",
        f"data={data}",
        "corruptions=imagenet-c",
        f"severity={severity}",
        "only=gaussian_noise",
        f"out={tmp_path / 'r.json'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out, json.loads((tmp_path / "r.json").read_text())
