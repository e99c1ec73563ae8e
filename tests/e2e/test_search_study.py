"""finetune's Optuna sweeper (hydra/sweeper=search): a persistent study that worker processes share (journal
file, PostgreSQL), exactly n_trials across workers, a killed worker's trial failed, re-queued and re-run,
pruning by the median pruner and of diverging trials, seeded and reproducible suggestions."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from finetune.resources import conf_dir
from finetune.run.errors import ConfigError, FinetuneError, RunInterrupted, TrainingDiverged
from finetune.run.rundir import claim_run_dir, claim_search_dir, forget_claims
from finetune.training.search import PRUNED_REASON, TrialPruned
from finetune.training.search.space import parse_space
from finetune.training.search.storage import (
    fail_stale_trials,
    open_storage,
    shown,
    storage_record,
    storage_spec,
    study_lock,
)
from finetune.training.search.study import PRUNERS, make_pruner, make_sampler, next_trial, used
from finetune.training.search.sweeper import SearchSweeper, claim_record

from ..helpers import cli_in_process, one_torch_thread

try:  # tests/postgres.py: a throwaway PostgreSQL server on 127.0.0.1 (skips without server binaries unless CI)
    from ..postgres import postgres_url  # noqa: F401  (a fixture)
except ImportError:  # pragma: no cover

    @pytest.fixture(scope="module")
    def postgres_url() -> str:
        pytest.skip("tests/postgres.py (the PostgreSQL fixture) is not there")


# A search of tiny trials: random-init test_resnet (timm's 0.5M-parameter test model) at 32 px, one epoch of two
# batches, CSV logs only; lr and label smoothing searched (the recipe's freeze depths exceed its stages: a plain
# value takes the key out).
SEARCH = [
    "-m",
    "+classification=digits_search",
    "backbone.name=test_resnet",
    "backbone.pretrained=false",
    "backbone.freeze=0",
    "dataset.image_size=32",
    "dataset.num_workers=0",
    "schedule.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
    "logger=csv",
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


@contextlib.contextmanager
def worker_process(cwd: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``start(cwd, *args)``; a worker still running when the block ends (a failed assertion) is killed with its
    jobs."""
    worker = start(cwd, *args)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()


def in_process(cwd: Path, *args: str) -> str:
    """``finetune <args>`` run in this process, exit 0; its output. A worker of its own (its own connection to the
    study, its own heartbeats) where the process is not the point: no ~8 s of imports per worker."""
    with one_torch_thread():
        out = cli_in_process(*args, cwd=cwd)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


def first_job_started(sweep: Path, worker: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until a job of ``worker``'s search has started (its run directory holds ``.hydra``)."""
    deadline = time.monotonic() + timeout
    while not any(sweep.glob("*/.hydra")) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(sweep.glob("*/.hydra")), "the worker started no trial"


def finish(worker: subprocess.Popen, timeout: float = 300) -> str:
    """The worker's output once it exited 0; a worker still running at ``timeout`` is killed with its jobs."""
    try:
        out, _ = worker.communicate(timeout=timeout)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()
    assert worker.returncode == 0, out[-4000:]
    return out


def marker_pid(run_dir: Path) -> int:
    """The process that claimed a job directory (its ``.finetune-run`` token says ``pid=<n>``)."""
    token = (run_dir / ".finetune-run").read_text().split()
    return int(next(part for part in token if part.startswith("pid=")).removeprefix("pid="))


def load(spec: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(spec))


def summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "sweep_summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_workers_share_one_study_of_exactly_n_trials(tmp_path, kind, request):
    """A worker process and, once its first trial runs, a second worker in this process (the same command, its
    own connection and heartbeats). On PostgreSQL one of the three trials (queued first) diverges: PRUNED through
    the database, no extra run."""
    sweep = tmp_path / "sweep"
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else None
    storage = [f"hydra.sweeper.storage={url}"] if url else []
    name = f"two-workers-{kind}-{os.getpid()}"
    spec = storage_spec(url, sweep)
    if url:
        study = optuna.create_study(study_name=name, storage=open_storage(spec), direction="maximize")
        study.enqueue_trial({"schedule.lr": 1e30})  # outside the recipe's range: Optuna warns and runs it
    search = [a for a in SEARCH if not a.startswith("hydra.sweeper.grace_period=")]
    search += ["hydra.sweeper.grace_period=60"]  # nobody dies here: no heartbeat may lapse on a busy machine
    args = [*search, "hydra.sweeper.n_trials=3", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={sweep}"]
    args += storage
    with worker_process(tmp_path, *args) as worker:
        first_job_started(sweep, worker)
        outs = [in_process(tmp_path, *args), finish(worker)]

    trials = load(spec, name).get_trials()
    assert len(trials) == 3 and used(trials) == 3
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert {marker_pid(sweep / str(t.number)) for t in trials} == {worker.pid, os.getpid()}  # both ran trials
    assert not any("Error executing job" in out for out in outs)  # a pruned trial is no error of Hydra's
    if url:
        assert trials[0].state.name == "PRUNED" and "training diverged" in trials[0].user_attrs["pruned"]["diverged"]
        assert {r["run"]: r["status"] for r in summary(sweep)}["0"] == "pruned: diverged"
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 3 and {k for p in params for k, _ in p} == {"schedule.lr", "loss.label_smoothing"}
    rows = summary(sweep)
    assert sorted(r["run"] for r in rows) == ["0", "1", "2"]  # job number = trial number: no collision
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert [r["rank"] for r in complete] == [str(i) for i in range(1, len(complete) + 1)]
    record = json.loads((sweep / "study.json").read_text())
    assert record["study_name"] == name and len(record["trials"]) == 3
    assert record["storage"] == shown(spec)  # a password never reaches a file
    assert shown("postgresql://user:secret@host/db") == "postgresql://user:***@host/db"
    # each job ran the trial it was given: its config names it, its params are the trial's
    for t in trials:
        cfg = yaml.safe_load((sweep / str(t.number) / "config.yaml").read_text())
        assert cfg["search"]["trial"] == t.number and cfg["schedule"]["lr"] == pytest.approx(t.params["schedule.lr"])


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_a_killed_workers_trial_is_failed_requeued_and_rerun(tmp_path, kind, request):
    """Journal: finetune's heartbeat (a trial system attr); a database: Optuna's RDB heartbeat."""
    sweep = tmp_path / "sweep"
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else None
    name = f"killed-{kind}-{os.getpid()}"
    args = [*SEARCH, "hydra.sweeper.n_trials=2", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={sweep}"]
    args += [f"hydra.sweeper.storage={url}"] if url else []
    spec = storage_spec(url, sweep)
    with worker_process(tmp_path, *args) as worker:
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

    out = in_process(tmp_path, *args)  # the same command again (this process): joins its sweep dir, resumes
    trials = load(spec, name).get_trials()
    killed = trials[running]
    assert killed.state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == running]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == killed.params
    assert used(trials) == 2 and sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert f"trial {running} stopped beating" in out
    rows = {r["run"]: r for r in summary(sweep)}
    assert rows[str(running)]["state"] == "FAIL, re-queued" and rows[str(retries[0].number)]["rank"]


def test_a_sigtermed_trial_is_requeued_and_its_line_says_to_run_the_search_again(tmp_path, monkeypatch):
    """The search runs in this process; its trial's run sends the process SIGTERM at its second training batch (a
    fixed point of the run, not a race with a timer), which the run's own handler takes."""
    import lightning as L

    class SigtermAtBatch1(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    def unhandled(signum, frame):  # the run's handler missing must fail this test, not end the test process
        raise AssertionError("SIGTERM reached the test process: the run did not handle it")

    init = L.Trainer.__init__

    def with_sigterm(self, *args, callbacks=(), **kwargs) -> None:
        init(self, *args, callbacks=[*callbacks, SigtermAtBatch1()], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", with_sigterm)
    before = signal.signal(signal.SIGTERM, unhandled)
    sweep = tmp_path / "sweep"
    args = [*SEARCH, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=s", f"hydra.sweep.dir={sweep}"]
    try:
        with one_torch_thread():
            out = cli_in_process(*args, cwd=tmp_path)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert out.returncode == 143, (out.stdout + out.stderr)[-3000:]
    (line,) = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("finetune:")]
    assert line.endswith("(SIGTERM): trial 0 of the search; run the search command again (the trial is re-queued)")
    trials = load(storage_spec(None, sweep), "s").get_trials()
    assert [(t.state.name, t.system_attrs.get("failed_trial")) for t in trials] == [("FAIL", None), ("WAITING", 0)]


def test_a_lagging_trial_is_pruned_and_a_diverging_one_too(tmp_path):
    """Trials enqueued in order: a sane lr completes, lr=5 trails its validation loss after the first epoch
    (the median pruner, after one completed trial), lr=1e30 diverges."""
    spec = storage_spec(f"journal:{tmp_path / 'pruning.log'}", tmp_path)
    study = optuna.create_study(study_name="pruning", storage=open_storage(spec), direction="minimize")
    for lr in (1e-3, 5.0, 1e30):
        study.enqueue_trial({"schedule.lr": lr})
    sweep = tmp_path / "sweep"
    in_process(
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
    assert "The study's best trial 0: val/loss=" in (sweep / "sweep_summary.md").read_text()


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
    claim_record(sweep, spec, "first")  # the first worker records its study as it opens it, before any trial
    assert json.loads((sweep / "study.json").read_text()) == storage_record(spec, "first")
    claim_record(sweep, spec, "first")  # a worker of the same study joins
    with pytest.raises(FinetuneError, match="holds the search study 'first'.*not 'second'"):
        claim_record(sweep, spec, "second")


def test_a_storage_url_with_a_password_is_refused_before_it_reaches_any_trials_config(tmp_path):
    with pytest.raises(ConfigError, match=r"user:\*\*\*@host/db: the URL holds a password.*PGPASSWORD"):
        storage_spec("postgresql://user:secret@host/db", tmp_path)
    assert storage_spec("postgresql://user@host/db", tmp_path) == "postgresql://user@host/db"


# The sweeper's parts without training (review fixes): each test fails on the code before its fix.


def test_int_intervals_stay_ints_and_a_log_tag_is_kept_or_refused():
    dists = parse_space(
        {"a": "int(interval(1, 64))", "b": "tag(log, int(interval(1, 64)))", "c": "tag(log, range(1, 64))"}, []
    ).distributions
    assert dists["a"] == optuna.distributions.IntDistribution(1, 64)
    assert dists["b"] == optuna.distributions.IntDistribution(1, 64, log=True)
    assert dists["c"] == optuna.distributions.IntDistribution(1, 64, log=True)
    with pytest.raises(ConfigError, match=r"tag\(log, range\(1, 64, 2\)\): a log scale takes no step"):
        parse_space({"d": "tag(log, range(1, 64, 2))"}, [])
    with pytest.raises(ConfigError, match=r"tag\(log, interval\(0, 1\)\): .*log"):  # Optuna's ValueError: one line
        parse_space({"e": "tag(log, interval(0, 1))"}, [])


@pytest.mark.parametrize("kind", ["median", "hyperband", "none"])
def test_every_pruner_kind_builds_from_the_sweepers_default_keys(kind):
    defaults = yaml.safe_load((conf_dir() / "hydra" / "sweeper" / "search.yaml").read_text())
    pruner = make_pruner({**defaults["pruner"], "kind": kind})
    assert type(pruner).__name__ == PRUNERS[kind]
    sampler = make_sampler({**defaults["sampler"], "kind": "random" if kind == "none" else "tpe"})
    assert type(sampler).__name__ == ("RandomSampler" if kind == "none" else "TPESampler")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.pruner.n_warmup_step: .*n_warmup_steps"):
        make_pruner({"kind": kind, "n_warmup_step": 1})  # a typo is no key of any pruner


def test_a_requeued_trial_with_fixed_values_and_the_next_new_trial_are_seeded_apart():
    study = optuna.create_study(study_name="s")
    study.enqueue_trial({"freeze": 2})  # a retry of trial 0, say: freeze fixed, lr sampled
    space = parse_space({"lr": "tag(log, interval(1e-4, 1e-2))", "freeze": "choice(0, 2)"}, [])
    first = space.suggest(next_trial(study, 2, {"kind": "random", "seed": 0}))
    second = space.suggest(next_trial(study, 2, {"kind": "random", "seed": 0}))
    assert first["freeze"] == 2 and first["lr"] != second["lr"]


def test_a_trial_failed_normally_meanwhile_is_not_reported_as_stale(tmp_path, monkeypatch):
    spec = storage_spec(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    storage = open_storage(spec, heartbeat_interval=60, grace_period=120, max_retry=3)
    study = optuna.create_study(study_name="s", storage=storage)
    with warnings.catch_warnings():  # the sweeper beats for its trials itself (Optuna's note assumes optimize())
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    optuna_fail_stale = optuna.storages.fail_stale_trials

    def failed_meanwhile(study_: optuna.Study) -> None:  # its worker tells FAIL (the run raised) as we look
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        optuna_fail_stale(study_)

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", failed_meanwhile)
    assert fail_stale_trials(study, storage, 120, 3) == []


def test_an_unreachable_database_or_a_missing_driver_is_one_line_at_the_lock():
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql://user@127.0.0.1:{closed.getsockname()[1]}/db"
        with pytest.raises(ConfigError, match=r"storage=postgresql://user@127.0.0.1:\d+/db: cannot open the study's"):
            with study_lock(url, "s"):
                pass
    with pytest.raises(ConfigError, match=r"cannot open the study's database \(\w+: .*nodriver"):
        with study_lock("postgresql+nodriver://user@127.0.0.1/db", "s"):
            pass


def test_an_unreachable_database_stops_the_search_in_one_line(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql://user@127.0.0.1:{closed.getsockname()[1]}/db"
        out = cli_in_process(*SEARCH, f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if line.strip()] == [
        f"finetune: error: hydra.sweeper.storage={url}: cannot open the study's database "
        + out.stderr.split("cannot open the study's database ", 1)[1].strip()
    ]


def bare_sweeper(study: optuna.Study, spec: str, sweep_dir: Path, launcher: object = None) -> SearchSweeper:
    """A sweeper on ``study`` as ``_sweep`` leaves it, without Hydra (``launcher`` stands in for Hydra's)."""
    sweeper = SearchSweeper(direction=study.direction.name.lower(), n_trials=4, heartbeat_interval=60)
    sweeper.study, sweeper.storage_obj, sweeper.spec, sweeper.sweep_dir = study, study._storage, spec, sweep_dir
    sweeper.launcher = launcher
    return sweeper


def test_pruned_and_diverged_trials_are_told_without_hydras_error_line(tmp_path, capsys):
    study = optuna.create_study(study_name="s", direction="maximize")
    sweeper = bare_sweeper(study, "memory", tmp_path)
    record = {"epoch": 1, "phase": "probe", "monitor": "val/acc", "value": 0.1}
    returns = [
        JobReturn(overrides=["a=1"], status=JobStatus.FAILED, _return_value=TrialPruned(record)),
        JobReturn(overrides=["a=2"], status=JobStatus.FAILED, _return_value=TrainingDiverged("training diverged")),
        JobReturn(overrides=["a=3"], status=JobStatus.COMPLETED, _return_value=0.5),
    ]
    errors = [sweeper._tell(study.ask(), ret) for ret in returns]
    assert errors == [None, None, None]
    assert [(t.state.name, t.value) for t in study.trials] == [("PRUNED", None), ("PRUNED", None), ("COMPLETE", 0.5)]
    assert study.trials[0].user_attrs[PRUNED_REASON] == record
    assert "Error executing job" not in capsys.readouterr().err


class DyingLauncher:
    """submitit's launcher when a job of its batch died: ``results()`` raises, no JobReturn of the batch comes back."""

    def launch(self, job_overrides: list, initial_job_idx: int) -> list:
        raise RuntimeError("Job 2 (task: 0) with path .submitit/2 has not produced any output (state: FAILED)")


def test_a_batch_whose_job_died_is_told_trial_by_trial_from_the_run_directories(tmp_path):
    spec = storage_spec(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(spec), direction="maximize")
    sweeper = bare_sweeper(study, spec, tmp_path, DyingLauncher())
    trials = [study.ask() for _ in range(3)]
    for number in range(3):
        (tmp_path / str(number) / ".hydra").mkdir(parents=True)  # every job started
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"test": {}, "checkpoint": {"best": 0.75}}))
    pruned = {"epoch": 1, "phase": "probe", "monitor": "val/acc", "value": 0.1}
    (tmp_path / "1" / "metrics.json").write_text(json.dumps({"test": {}, PRUNED_REASON: pruned}))
    returns = sweeper._launch(trials, [[] for _ in trials])  # job 2 died: no metrics.json
    errors = [sweeper._tell(t, ret) for t, ret in zip(trials, returns)]
    states = [(t.state.name, t.value) for t in study.get_trials()]
    assert states == [("COMPLETE", 0.75), ("PRUNED", None), ("FAIL", None), ("WAITING", None)]
    assert study.trials[1].user_attrs[PRUNED_REASON] == pruned and study.trials[3].system_attrs["failed_trial"] == 2
    assert errors[:2] == [None, None] and "has not produced any output" in str(errors[2])

    lone = study.ask()  # a launcher that fails before any job started: its own error, the trial failed
    with pytest.raises(RuntimeError, match="has not produced any output"):
        sweeper._launch([lone], [[]])
    assert study.trials[lone.number].state.name == "FAIL"


def test_an_interrupted_run_travels_back_from_another_process():
    back = pickle.loads(pickle.dumps(RunInterrupted("interrupted in phase 'probe' (SIGTERM)", signal.SIGTERM)))
    assert back.message == "interrupted in phase 'probe' (SIGTERM)" and back.exit_code == 143


def test_a_search_trials_interrupt_line_says_to_run_the_search_again():
    from finetune.commands.train import search_interrupt

    message = "interrupted in phase 'probe', epoch 1/2 (SIGTERM); `finetune resume=runs/s/3` continues from …"
    line = search_interrupt(RunInterrupted(message, signal.SIGTERM), trial=3).message
    assert line == (
        "interrupted in phase 'probe', epoch 1/2 (SIGTERM): trial 3 of the search; "
        "run the search command again (the trial is re-queued)"
    )


def test_a_trial_runs_as_a_plain_run_unless_the_search_launched_it_and_it_runs(tmp_path, capsys):
    from finetune.commands.train import detach_from_study

    spec = storage_spec(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(spec), direction="maximize")
    running, failed = study.ask(), study.ask()
    study.tell(failed.number, state=optuna.trial.TrialState.FAIL)  # its worker was stopped: re-queued

    def cfg(trial: int) -> DictConfig:
        return OmegaConf.create({"search": {"storage": spec, "study": "s", "trial": trial}})

    search = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweeper": {"direction": "maximize"}})
    launched = cfg(running.number)
    detach_from_study(launched, search, resumed=False)
    assert launched.search.study == "s" and capsys.readouterr().out == ""
    for config, hydra_cfg, resumed in [
        (cfg(running.number), search, True),  # finetune resume=<sweep>/0 (-m or not)
        (cfg(failed.number), search, False),
        (cfg(running.number), OmegaConf.create({"mode": RunMode.RUN, "sweeper": {}}), False),
    ]:
        detach_from_study(config, hydra_cfg, resumed)
        assert config.search == {"storage": None, "study": None, "trial": None}
        assert "trains as a plain run" in capsys.readouterr().out


def test_a_trials_run_dir_trained_again_outside_the_search_is_a_plain_run(tmp_path):
    """``finetune resume=<sweep>/0`` of a trial the sweeper failed and re-queued (SIGTERM) trains with the trial's
    config: a run that names trial 0 but was not launched by the search trains as a plain run, the study untouched
    (it reported to the finished trial before: UpdateFinishedTrialError, a traceback)."""
    spec = storage_spec(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(spec), direction="maximize")
    study.tell(study.ask().number, state=optuna.trial.TrialState.FAIL)
    tiny = [a for a in SEARCH[2:] if not a.startswith("hydra.")]
    search = [f"search.storage={spec}", "search.study=s", "search.trial=0", f"hydra.run.dir={tmp_path / 'run'}"]
    out = in_process(tmp_path, "+classification=digits", *tiny, *search)
    assert "trial 0 of the search study 's' trains as a plain run" in out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint"]["best"] is not None
    assert load(spec, "s").trials[0].intermediate_values == {}


def test_a_running_job_whose_trial_the_study_finished_meanwhile_trains_on_unpruned(tmp_path):
    """Its trial was failed and re-queued under it (a lapsed heartbeat; a submitit batch given up after another
    job died): reporting to it raised UpdateFinishedTrialError and killed the run."""
    import torch

    from finetune.run.schema import SearchSchema
    from finetune.training.search.pruning import TrialPruning

    spec = storage_spec(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(spec), direction="maximize")
    study.tell(study.ask().number, state=optuna.trial.TrialState.FAIL)
    pruning = TrialPruning(SearchSchema(storage=spec, study="s", trial=0), "val/acc")
    trainer = types.SimpleNamespace(
        sanity_checking=False,
        callback_metrics={"val/acc": torch.tensor(0.5)},
        is_global_zero=True,
        world_size=1,
        default_root_dir=str(tmp_path),
    )
    for _ in range(2):  # no error, no prune; the study is not told
        pruning.on_validation_end(trainer, None)
    assert pruning.detached and load(spec, "s").trials[0].intermediate_values == {}


def test_the_journal_lock_file_is_optunas_own_name(tmp_path, monkeypatch):
    """``study.log.lock``: the name Optuna's default lock (optuna-dashboard's) takes, not ``study.log.lock.lock``."""
    created = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        if flags & os.O_EXCL:
            created.append(Path(path).name)
        return real_open(path, flags, *args, **kwargs)

    storage = open_storage(storage_spec(None, tmp_path))
    monkeypatch.setattr(os, "open", spy)
    optuna.create_study(study_name="s", storage=storage)
    assert created and set(created) == {"study.log.lock"}
