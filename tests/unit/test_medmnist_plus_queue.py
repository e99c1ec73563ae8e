"""benchmarks/medmnist_plus.py's queue: every job's source is queued, runs are reproduced as measured (the
pneumonia runs with the layer decay they had), a re-test's copy is its own run, and the README tables render
from a result file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import medmnist_plus as bench


def test_job_names_are_unique_and_every_source_is_a_queued_job() -> None:
    jobs = bench.queue()
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    assert {j.source for j in jobs if j.source} <= set(names)
    assert set(bench.BEFORE_FIX) <= set(names)


def test_a_log_odds_re_test_has_its_source_s_recipe_and_seed() -> None:
    jobs = {j.name: j for j in bench.queue()}
    log_odds = [j for j in jobs.values() if j.group == "log_odds"]
    assert [j.source for j in log_odds] == list(bench.BEFORE_FIX) and "pneumonia_s0_ema" in bench.BEFORE_FIX
    assert all((j.recipe, j.seed) == (jobs[j.source].recipe, jobs[j.source].seed) for j in log_odds)


def _finished(run: Path, **metrics: object) -> None:
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"acc": 0.9}, **metrics}))


def test_a_copy_s_robustness_waits_for_its_re_test(tmp_path) -> None:
    """A copy holds its source's MedMNIST-C record until it is re-tested: that is not the copy's robustness."""
    record = {"robustness": {"medmnistc": {"acc": 0.8}}}
    _finished(tmp_path / "breast_s0", **record)
    _finished(tmp_path / "breast_s0_threshold_half", **record)
    job = next(j for j in bench.queue() if j.name == "robustness_breast_threshold_half")
    assert not bench.done(job, tmp_path)
    (tmp_path / "breast_s0_threshold_half" / ".retested").write_text("threshold=0.5\n")
    assert bench.done(job, tmp_path)


def test_a_re_test_copies_neither_the_lock_nor_the_source_s_marks_and_records(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(bench, "_finetune", lambda args, cwd, log: calls.append(args))
    source = tmp_path / "breast_s0"
    _finished(source, robustness={"medmnistc": {"acc": 0.8}})
    for name in (".finetune-lock", ".finetune-lock.abc.takeover", bench.LOG_ODDS_MARK, "checkpoints/best.ckpt"):
        (source / name).parent.mkdir(exist_ok=True)
        (source / name).write_text("x")
    bench._retest(next(j for j in bench.queue() if j.name == "breast_s0_threshold_half"), tmp_path)
    copy = tmp_path / "breast_s0_threshold_half"
    assert sorted(p.name for p in copy.iterdir()) == [".retested", "checkpoints", "metrics.json"]
    assert json.loads((copy / "metrics.json").read_text()) == {"test": {"acc": 0.9}}
    assert "robustness" in json.loads((source / "metrics.json").read_text())
    assert calls == [
        [f"resume={copy}", "resume_finished=true", "trainer.progress_bar=false", "logger=csv", "threshold=0.5"]
    ]


@pytest.mark.parametrize(
    ("name", "layer_decay"),
    [("pneumonia_s1", "0.8"), ("pneumonia_s2_ema", "0.8"), ("pneumonia_s2_no_layer_decay", "1.0"), ("blood_s2", None)],
)
def test_a_training_job_is_reproduced_as_measured(name, layer_decay, tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(bench, "_finetune", lambda args, cwd, log: calls.append(args))
    bench._train(next(j for j in bench.queue() if j.name == name), tmp_path)
    decays = [a.split("=")[1] for a in calls[0] if a.startswith("schedule.phases.1.layer_decay=")]
    assert decays == ([layer_decay] if layer_decay else [])
    assert f"hydra.run.dir={tmp_path / name}" in calls[0]


def _row(name: str, group: str, variant: str = "recipe", **test: float) -> dict:
    """A row of medmnist_plus.json with the fields ``markdown`` reads (seed from the name's ``_s<seed>``)."""
    seed = int(name.split("_s")[1][0])
    test = {"acc": 0.9, "auc": 0.94 + 0.01 * seed, "ece": 0.03, **test}
    row = {"name": name, "group": group, "recipe": name.split("_")[0], "seed": seed, "variant": variant}
    return {**row, "overrides": [], "wall_s": 600.0, "test": test, "checkpoint": {"monitor": "val/auc", "best": 0.99}}


def _robustness_row(source: str) -> dict:
    clean, corrupted = {"acc": 0.9, "ece": 0.05}, {"acc": 0.8, "ece": 0.1}
    paper = {"balanced_error": {"blur": 0.2}, "alexnet_balanced_error": {"blur": 0.25}, "clean_balanced_error": 0.1}
    row = {"name": f"robustness_{source}", "group": "robustness", "recipe": source.split("_")[0], "variant": "recipe"}
    return {**row, "source": source, "clean": clean, "mean": corrupted, "paper": {**paper, "be": 0.8, "rbe": 0.9}}


@pytest.fixture
def result() -> dict:
    """A small medmnist_plus.json: three seeds of each recipe (pneumonia: as measured and the recipe now),
    one robustness row and one job not finished."""
    rows = [_row(f"pneumonia_s{s}", "recipe") for s in bench.SEEDS]
    rows += [_row(f"pneumonia_s{s}_no_layer_decay", "ablation", "no_layer_decay") for s in bench.SEEDS]
    rows += [_row(f"breast_s{s}", "recipe", **{"acc_at_0.5": 0.85}) for s in bench.SEEDS]
    rows += [_row(f"blood_s{s}", "blood") for s in bench.SEEDS]
    rows.append(_robustness_row("pneumonia_s0"))
    return {"paper": bench.PAPER, "rows": rows, "not_finished": ["blood_s2_log_odds_auc"]}


def test_the_readme_tables_render_from_a_result_file(result) -> None:
    text = bench.markdown(result)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    names = [name for name in rows if "MNIST" in name]
    assert [n.split(" (")[0].split(",")[0] for n in names] == ["| PneumoniaMNIST"] * 2 + [
        "| BreastMNIST",
        "| BloodMNIST",
    ]
    assert "the recipe (layer decay 1.0)" in names[0] and "as first measured (layer decay 0.8)" in names[1]
    for name in names:  # ACC@0.5 and AUC over the three seeds
        assert rows[name].split(" | ")[2] == "95.0 ± 1.0 (3 seeds)", rows[name]
    breast = rows[names[2]].split(" | ")
    assert breast[1:4] == [
        "85.0 ± 0.0 (3 seeds)",
        "95.0 ± 1.0 (3 seeds)",
        "90.0 ± 0.0 (3 seeds): the recipe now decides at 0.5",
    ]
    assert rows["| pneumonia_s0"].split(" | ")[1:] == ["0.900 / 0.050", "0.800 / 0.100", "0.100", "0.200 / 0.250"] + [
        "0.80",
        "0.90 |",
    ]
    assert text.endswith("not finished: blood_s2_log_odds_auc")


def test_the_robustness_summary_averages_only_the_scored_severities() -> None:
    """A severity not applicable to the images' size (BloodMNIST's bubble at severity 5 on 28 px) is recorded
    unscored (None): the corruption's mean accuracy is over the severities that were scored."""
    from benchmarks.robustness import summary

    unscored = {"acc": None, "ece": None}
    record = {
        "clean": {"acc": 0.97},
        "mean": {"acc": 0.5},
        "by_severity": {},
        "results": {"bubble": {"1": {"acc": 0.3, "ece": 0.4}, "2": {"acc": 0.5, "ece": 0.4}, "3": unscored}},
        "skipped": {"bubble": "not applicable to 28x28 px images at severity 3"},
    }
    assert summary(record)["acc_per_corruption"] == {"bubble": 0.4}
