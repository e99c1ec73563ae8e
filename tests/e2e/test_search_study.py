"""finetune's Optuna sweeper (hydra/sweeper=search): a persistent study that worker processes share (journal
file, PostgreSQL), exactly n_trials across workers, a killed worker's trial failed, re-queued and re-run,
pruning by the median pruner and of diverging trials, seeded and reproducible suggestions."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from finetune.run.errors import ConfigError, FinetuneError
from finetune.run.rundir import claim_run_dir, claim_search_dir, forget_claims
from finetune.training.search import TrialPruned
from finetune.training.search.space import parse_space
from finetune.training.search.storage import open_storage, shown, storage_record, storage_spec
from finetune.training.search.study import make_pruner, next_trial, used
from finetune.training.search.sweeper import check_record

try:  # tests/postgres.py: a throwaway PostgreSQL server on 127.0.0.1 (skips without server binaries unless CI)
    from ..postgres import postgres_url  # noqa: F401  (a fixture)
except ImportError:  # pragma: no cover

    @pytest.fixture(scope="module")
    def postgres_url() -> str:
        pytest.skip("tests/postgres.py (the PostgreSQL fixture) is not there")


# A search of tiny trials: random-init resnet10t at 32 px, one epoch of two batches; lr and label smoothing
# searched (the recipe's freeze depths exceed resnet10t's stages: a plain value takes the key out).
SEARCH = [
    "-m",
    "+classification=digits_search",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "backbone.freeze=0",
    "dataset.image_size=32",
    "dataset.num_workers=0",
    "schedule.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=4",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def start(cwd: Path, *args: str) -> subprocess.Popen:
    """``finetune <args>`` as a worker process of its own session (its whole group can be killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(worker: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, out[-4000:]
    return out


def load(spec: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(spec))


def summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_workers_share_one_study_of_exactly_n_trials(tmp_path, kind, request):
    sweep = tmp_path / "sweep"
    storage = [] if kind == "journal" else [f"hydra.sweeper.storage={request.getfixturevalue('postgres_url')}"]
    name = f"two-workers-{kind}-{os.getpid()}"
    args = [*SEARCH, "hydra.sweeper.n_trials=4", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={sweep}"]
    workers = [start(tmp_path, *args, *storage) for _ in range(2)]
    for worker in workers:
        finish(worker)

    spec = storage_spec(storage[0].split("=", 1)[1] if storage else None, sweep)
    trials = load(spec, name).get_trials()
    assert len(trials) == 4 and used(trials) == 4
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 4 and {k for p in params for k, _ in p} == {"schedule.lr", "loss.label_smoothing"}
    rows = summary(sweep)
    assert sorted(r["run"] for r in rows) == ["0", "1", "2", "3"]  # job number = trial number: no collision
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert [r["rank"] for r in complete] == [str(i) for i in range(1, len(complete) + 1)]
    record = json.loads((sweep / "study.json").read_text())
    assert record["study_name"] == name and len(record["trials"]) == 4
    assert record["storage"] == shown(spec)  # a password never reaches a file
    assert shown("postgresql://user:secret@host/db") == "postgresql://user:***@host/db"
    # each job ran the trial it was given: its config names it, its params are the trial's
    for t in trials:
        cfg = yaml.safe_load((sweep / str(t.number) / "config.yaml").read_text())
        assert cfg["search"]["trial"] == t.number and cfg["schedule"]["lr"] == pytest.approx(t.params["schedule.lr"])


@pytest.mark.parametrize("kind", ["journal"])  # "postgres" passes too (Optuna's RDB heartbeat), 18 s more
def test_a_killed_workers_trial_is_failed_requeued_and_rerun(tmp_path, kind, request):
    """Journal: finetune's heartbeat (a trial system attr); a database: Optuna's RDB heartbeat."""
    sweep = tmp_path / "sweep"
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else None
    name = f"killed-{kind}-{os.getpid()}"
    args = [*SEARCH, "hydra.sweeper.n_trials=2", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={sweep}"]
    args += [f"hydra.sweeper.storage={url}"] if url else []
    spec = storage_spec(url, sweep)
    worker = start(tmp_path, *args)
    deadline = time.monotonic() + 120
    running = None
    while running is None and time.monotonic() < deadline:  # poll: a trial runs, its job has started
        if (sweep / "study.json").is_file() or (sweep / "0" / ".hydra").is_dir():
            states = load(spec, name).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            running = next((t.number for t in states if (sweep / str(t.number) / ".hydra").is_dir()), None)
        time.sleep(0.2)
    assert running is not None, "no trial started"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()

    out = finish(start(tmp_path, *args))  # the same command again: joins its sweep dir, resumes the study
    trials = load(spec, name).get_trials()
    killed = trials[running]
    assert killed.state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == running]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == killed.params
    assert used(trials) == 2 and sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert f"trial {running} stopped beating" in out
    rows = {r["run"]: r for r in summary(sweep)}
    assert rows[str(running)]["state"] == "FAIL, re-queued" and rows[str(retries[0].number)]["rank"]


def test_a_lagging_trial_is_pruned_and_a_diverging_one_too(tmp_path):
    """Trials enqueued in order: a sane lr completes, lr=5 trails its validation loss after the first epoch
    (the median pruner, after one completed trial), lr=1e30 diverges."""
    spec = storage_spec(f"journal:{tmp_path / 'pruning.log'}", tmp_path)
    study = optuna.create_study(study_name="pruning", storage=open_storage(spec), direction="minimize")
    for lr in (1e-3, 5.0, 1e30):
        study.enqueue_trial({"schedule.lr": lr})
    sweep = tmp_path / "sweep"
    finish(
        start(
            tmp_path,
            *SEARCH,
            "monitor=loss",
            "schedule.epochs=2",
            "schedule.lr=tag(log, interval(1e-4, 1e31))",
            "loss.label_smoothing=0.0",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweeper.storage={spec}",
            "hydra.sweeper.study_name=pruning",
            "hydra.sweeper.pruner.n_startup_trials=1",
            f"hydra.sweep.dir={sweep}",
        )
    )
    trials = load(spec, "pruning").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert trials[1].user_attrs["pruned"]["epoch"] == 1  # after its first epoch of two
    assert "training diverged" in trials[2].user_attrs["pruned"]["diverged"]
    pruned = json.loads((sweep / "1" / "metrics.json").read_text())
    assert pruned["pruned"]["epoch"] == 1 and pruned["test"] == {}  # no test, no export
    assert not (sweep / "1" / "exports").exists()
    rows = {r["run"]: r for r in summary(sweep)}
    assert rows["0"]["rank"] == "1" and rows["1"]["rank"] == rows["2"]["rank"] == ""
    assert rows["1"]["status"].startswith("pruned at epoch 1 (val/loss=") and rows["1"]["state"] == "PRUNED"
    assert rows["2"]["status"] == "pruned: diverged"
    assert "The study's best trial: value" in (sweep / "sweep_summary.md").read_text()


def test_a_pruned_trial_travels_back_from_another_process_with_its_record():
    record = {"epoch": 2, "phase": "probe", "monitor": "val/acc", "value": 0.25}
    back = pickle.loads(pickle.dumps(TrialPruned(record)))  # as submitit returns a job's exception
    assert back.record == record and str(back).startswith("pruned at epoch 2 (phase 'probe'): val/acc=0.25")


def test_the_space_parses_hydras_sweep_syntax_and_the_command_line_wins():
    space = parse_space(
        {"schedule.lr": "tag(log, interval(1e-4, 1e-2))", "backbone.freeze": "choice(0, 2, 4)", "seed": "range(0,3)"},
        ["backbone.freeze=4", "loss.label_smoothing=0.0,0.1", "schedule.epochs=interval(1, 5)"],
    )
    dists = space.distributions
    assert dists["schedule.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["loss.label_smoothing"] == optuna.distributions.CategoricalDistribution([0.0, 0.1])
    assert dists["seed"] == optuna.distributions.IntDistribution(0, 3, step=1)
    assert dists["schedule.epochs"] == optuna.distributions.FloatDistribution(1.0, 5.0)  # Hydra: intervals are floats
    assert "backbone.freeze" not in dists and space.fixed == ["backbone.freeze=4"]  # a plain value: not searched


def suggested(seed: int | None, workers: int = 2, n: int = 4) -> list[dict]:
    """Trials of one in-memory study asked by ``workers`` interleaved workers (each its own Study object)."""
    storage = optuna.storages.InMemoryStorage()
    sampler = {"kind": "tpe", "seed": seed, "n_startup_trials": 10}
    space = parse_space({"schedule.lr": "tag(log, interval(1e-4, 1e-2))", "freeze": "choice(0, 2, 4, 6)"}, [])
    optuna.create_study(storage=storage, study_name="s", pruner=make_pruner({"kind": "none"}))
    studies = [optuna.load_study(study_name="s", storage=storage) for _ in range(workers)]
    values = []
    for i in range(n):
        trial = next_trial(studies[i % workers], n, sampler)
        values.append(space.suggest(trial))  # left running: the next worker asks while it runs
    assert next_trial(studies[0], n, sampler) is None  # the budget is spent
    return values


def test_the_same_seed_gives_the_same_trials_and_workers_never_repeat_each_other():
    first = suggested(seed=0)
    assert first == suggested(seed=0)
    assert len({tuple(v.items()) for v in first}) == 4
    assert first != suggested(seed=1)


def test_a_search_joins_its_own_sweep_dir_only(tmp_path):
    sweep = tmp_path / "sweep"
    assert claim_search_dir(sweep) is not None  # made it
    forget_claims()
    assert claim_search_dir(sweep) is None  # a second worker of the search joins
    with pytest.raises(FinetuneError, match="already holds a run"):
        claim_run_dir(sweep)  # a plain run (or a grid sweep) does not
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's folder")
    with pytest.raises(FinetuneError, match=r"already holds a run \(notes.txt\)"):
        claim_search_dir(tmp_path / "mine")
    spec = storage_spec(None, sweep)
    (sweep / "study.json").write_text(json.dumps(storage_record(spec, "first")))
    check_record(sweep, spec, "first")
    with pytest.raises(FinetuneError, match="holds the search study 'first'.*not 'second'"):
        check_record(sweep, spec, "second")


def test_a_storage_url_with_a_password_is_refused_before_it_reaches_any_trials_config(tmp_path):
    with pytest.raises(ConfigError, match=r"user:\*\*\*@host/db: the URL holds a password.*PGPASSWORD"):
        storage_spec("postgresql://user:secret@host/db", tmp_path)
    assert storage_spec("postgresql://user@host/db", tmp_path) == "postgresql://user@host/db"
