"""Sweeps and hyperparameter search: the summary ranks runs by the validation score that picked their
checkpoint and marks test columns as not for selection; a search's study (hydra/sweeper=search) optimises
that same score. The study itself (workers, resume, pruning): test_search_study.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir

from finetune.commands import train as _registers_the_resolvers  # noqa: F401  (search_direction)
from finetune.resources import conf_dir
from finetune.run.errors import ConfigError
from finetune.training.search import TrialWithoutScore, check_search, objective
from finetune.training.sweep import write_summary

from ..helpers import cli_in_process, one_torch_thread


def fake_run(
    sweep: Path,
    job: int,
    overrides: list[str],
    val: float | None = None,
    test: float | None = None,
    monitor: str = "val/acc",
) -> None:
    """A job directory as Hydra and a run leave it; without ``val`` it failed (no metrics.json)."""
    (sweep / str(job) / ".hydra").mkdir(parents=True)
    (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["+classification=digits", *overrides]))
    if val is not None:
        metrics = {
            "test": {"acc": test, "loss": 1 - test},
            "wall_time_s": 3.0,
            "checkpoint": {"monitor": monitor, "best": val, "tested": "best.ckpt"},
        }
        (sweep / str(job) / "metrics.json").write_text(json.dumps(metrics))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_ranks_by_validation_marks_test_columns_and_names_the_studys_best(tmp_path):
    # The test scores run the other way round: a table sorted by them would pick run 0.
    fake_run(tmp_path, 0, ["schedule.lr=0.001", "search.trial=0"], val=0.80, test=0.95)
    fake_run(tmp_path, 1, ["schedule.lr=0.003", "search.trial=1"], val=0.90, test=0.70)
    fake_run(tmp_path, 2, ["schedule.lr=0.01", "search.trial=2"], val=0.85, test=0.90)
    fake_run(tmp_path, 3, ["schedule.lr=0.1", "search.trial=3"])  # failed: no metrics.json
    fake_run(tmp_path, 4, ["schedule.lr=5", "search.trial=4"])  # pruned after its first epoch
    pruned = {"epoch": 1, "phase": "finetune", "monitor": "val/acc", "value": 0.1}
    (tmp_path / "4" / "metrics.json").write_text(json.dumps({"test": {}, "pruned": pruned}))
    states = ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    study = {
        "study_name": "s",
        "storage": "journal:study.log",
        "best": {"trial": 1, "value": 0.9, "params": {"schedule.lr": 0.003}},
        "trials": [{"trial": n, "state": state, "requeued": False} for n, state in enumerate(states)],
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    write_summary(tmp_path)

    rows = read_csv(tmp_path / "sweep_summary.csv")
    assert [r["run"] for r in rows] == ["1", "2", "0", "4", "3"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "", ""]
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["pruned at epoch 1 (val/acc=0.1000)", "no metrics.json"]
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 + ["PRUNED", "FAIL"]
    assert rows[0]["swept"] == "schedule.lr=0.003" and rows[0]["val/acc"] == "0.9" and rows[0]["test/acc"] == "0.7"
    notes, table = (tmp_path / "sweep_summary.md").read_text().split("\n\n")
    assert notes.startswith("Ranked by val/acc (higher is better)") and "test columns are for reporting" in notes
    assert "Study 's' (journal:study.log): 3 complete, 1 fail, 1 pruned." in notes
    assert "The study's best trial 1: val/acc=0.9000 (lr=0.003), run 1." in notes
    assert "Swept keys: lr = schedule.lr." in notes and "The other test metrics (test/loss): sweep_summary.csv" in notes
    header = table.splitlines()[0]
    assert header == "| rank | run | status | state | lr | val/acc | test/acc | time_s |"
    assert table.splitlines()[2] == "| 1 | 1 | finished | COMPLETE | 0.003 | 0.9000 | 0.7000 | 3.0 |"


def test_a_loss_ranks_lowest_first_mixed_monitors_and_failed_sweeps_are_not_ranked(tmp_path):
    fake_run(tmp_path / "loss", 0, ["seed=0"], val=0.40, test=0.9, monitor="val/loss")
    fake_run(tmp_path / "loss", 1, ["seed=1"], val=0.20, test=0.8, monitor="val/loss")
    write_summary(tmp_path / "loss")
    assert [r["run"] for r in read_csv(tmp_path / "loss" / "sweep_summary.csv")] == ["1", "0"]
    assert "Ranked by val/loss (lower is better)" in (tmp_path / "loss" / "sweep_summary.md").read_text()

    fake_run(tmp_path / "mixed", 0, ["monitor=loss"], val=0.40, test=0.9, monitor="val/loss")
    fake_run(tmp_path / "mixed", 1, ["monitor=acc"], val=0.95, test=0.8)
    write_summary(tmp_path / "mixed")
    assert [r["rank"] for r in read_csv(tmp_path / "mixed" / "sweep_summary.csv")] == ["", ""]
    assert "not ranked" in (tmp_path / "mixed" / "sweep_summary.md").read_text()

    fake_run(tmp_path / "failed", 0, ["seed=0"])
    write_summary(tmp_path / "failed")
    assert (tmp_path / "failed" / "sweep_summary.md").read_text().startswith("No run finished")


def test_files_another_worker_is_still_writing_do_not_break_the_summary(tmp_path):
    """Workers of a search summarise the shared sweep directory while other workers' jobs write into it."""
    fake_run(tmp_path, 0, ["seed=0"], val=0.5, test=0.4)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n- '+classif")  # Hydra writes it
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "metrics.json").write_text('{"test": {"acc"')
    (tmp_path / "study.json").write_text('{"storage": "journal:')
    write_summary(tmp_path)
    rows = read_csv(tmp_path / "sweep_summary.csv")
    assert [(r["run"], r["rank"], r["status"]) for r in rows] == [
        ("0", "1", "finished"),
        ("1", "", "no metrics.json"),
        ("2", "", "no metrics.json"),
    ]


def hydra_config(*overrides: str):
    """The ``hydra`` node a job of ``finetune -m <overrides>`` sees, and the job's config."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=[*overrides, "hydra.mode=MULTIRUN"], return_hydra_config=True)
    return cfg.hydra, cfg


def test_the_search_recipe_derives_its_direction_from_the_monitor():
    check_search(*hydra_config("+classification=digits_search"))  # maximize val/acc
    hydra_cfg, cfg = hydra_config("+classification=digits_search", "monitor=loss")
    assert hydra_cfg.sweeper.direction == "minimize"
    check_search(hydra_cfg, cfg)


@pytest.mark.parametrize(
    "overrides, says",
    [
        (
            ["hydra/sweeper=search", "hydra.sweeper.direction=minimize"],
            "hydra.sweeper.direction=minimize, but trials report monitor=auto",
        ),
        (
            ["+classification=digits_search", "monitor=loss", "hydra.sweeper.direction=maximize"],
            "set hydra.sweeper.direction=minimize",
        ),
        (["+classification=digits_search", "hydra.sweeper.direction=[maximize,minimize]"], "give one direction"),
        (["+classification=digits_search", "plan=true"], "plan=true trains nothing"),
    ],
)
def test_a_search_that_cannot_mean_what_it_says_is_refused(overrides, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("(", r"\(")):
        check_search(*hydra_config(*overrides))


def test_a_search_without_multirun_is_refused():
    hydra_cfg, cfg = hydra_config("+classification=digits_search")
    hydra_cfg.mode = "RUN"
    with pytest.raises(ConfigError, match="runs only under -m"):
        check_search(hydra_cfg, cfg)


def test_the_objective_is_the_validation_score_that_picked_the_checkpoint():
    metrics = {"test": {"acc": 0.99}, "checkpoint": {"monitor": "val/acc", "best": 0.875, "tested": "best.ckpt"}}
    assert objective(metrics) == 0.875
    with pytest.raises(TrialWithoutScore, match="val/acc never had a value"):
        objective({"test": {"acc": 0.99}, "checkpoint": {"monitor": "val/acc", "best": None}})


TINY_SEARCH = [
    "-m",
    "+classification=digits_search",
    "hydra.sweeper.n_trials=2",
    "backbone.name=test_resnet",  # timm's 0.5M-parameter test model, random init
    "backbone.pretrained=false",
    "backbone.freeze=2",  # fixed
    "dataset.image_size=32",
    "schedule.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
    "hydra.sweep.dir=sweep",
]


@pytest.mark.slow
def test_an_optuna_search_optimises_each_runs_validation_score(tmp_path, monkeypatch):
    """The real command line (in this process) with optuna's Study.tell watched: the numbers the study was told."""
    told, tell = {}, optuna.study.Study.tell

    def spy(self, trial, values=None, **kwargs):
        told[str(trial if isinstance(trial, int) else trial.number)] = values
        return tell(self, trial, values, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "tell", spy)
    with one_torch_thread():
        out = cli_in_process(*TINY_SEARCH, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "sweep"
    best = {}
    for trial, value in told.items():  # one job per trial, numbered by trial (n_jobs: 1)
        metrics = json.loads((sweep / trial / "metrics.json").read_text())
        assert metrics["checkpoint"]["monitor"] == "val/acc" and value == metrics["checkpoint"]["best"]
        best[trial] = metrics["checkpoint"]["best"]
    assert len(best) == 2
    results = json.loads((sweep / "study.json").read_text())
    assert results["best"]["value"] == max(best.values())
    assert set(results["best"]["params"]) == {"schedule.lr", "loss.label_smoothing"}  # a plain value is not searched
    assert all(yaml.safe_load((sweep / t / "config.yaml").read_text())["backbone"]["freeze"] == 2 for t in told)
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [float(r["val/acc"]) for r in rows] == sorted(best.values(), reverse=True)
    assert all("schedule.lr=" in r["swept"] for r in rows)  # the trial's parameters, as its overrides
    summary = (sweep / "sweep_summary.md").read_text()
    assert "| val/acc | test/acc |" in summary and "The study's best trial " in summary
    number = results["best"]["trial"]
    best = f"search: best trial {number}: val/acc={results['best']['value']:.4f} (lr="
    assert best in out.stdout + out.stderr and f"run directory sweep/{number}\n" in out.stdout + out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "+classification=digits", "hydra/sweeper=optuna"],
        ["-m", "+classification=old_search", "hydra.searchpath=[file://{recipes}]"],  # a recipe of the old kind
    ],
)
def test_the_old_optuna_sweeper_gets_one_line_on_the_migration(tmp_path, args):
    (tmp_path / "classification").mkdir()
    (tmp_path / "classification" / "old_search.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "finetune", *(a.format(recipes=tmp_path) for a in args)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("finetune: error: hydra/sweeper=optuna: hydra-optuna-sweeper")
    assert "write hydra/sweeper=search" in out.stderr and len(out.stderr.strip().splitlines()) == 1
