"""Optuna's RDB storage on a real PostgreSQL server (tests/postgres.py): two worker processes join one study by
name and share its trials, as two search workers on two machines do; the server is gone after its block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from ..postgres import postgres_server, postgres_url, server_bindir  # noqa: F401  (postgres_url: a fixture)

# One worker: waits for the start file (both start together), joins the study, asks and tells 4 trials of a toy
# objective; prints the numbers of its trials.
WORKER = """
import json, sys, time
from pathlib import Path
import optuna
url, seed, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(storage=url, study_name="shared", load_if_exists=True,
                            sampler=optuna.samplers.RandomSampler(seed=seed))
numbers = []
for _ in range(4):
    trial = study.ask()
    x = trial.suggest_float("x", -10, 10)
    study.tell(trial, (x - 2) ** 2)
    numbers.append(trial.number)
print(json.dumps(numbers))
"""


def test_two_processes_share_one_study_on_postgres(postgres_url, tmp_path):  # noqa: F811
    # Optuna creates its tables on a database's first connection; two first connections at once race
    # ("type studydirection already exists"): finetune's sweeper creates them under its lock, here the test does.
    optuna.storages.RDBStorage(postgres_url).engine.dispose()
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, postgres_url, str(seed), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    go.touch()
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    numbers = [json.loads(out) for out, _ in outputs]
    assert not set(numbers[0]) & set(numbers[1])  # every trial belongs to one worker

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == sorted(numbers[0] + numbers[1]) == list(range(8))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.value == pytest.approx((t.params["x"] - 2) ** 2) for t in trials)
    assert len({t.params["x"] for t in trials}) == 8  # two sampler seeds: no parameter set twice
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_url)] == ["shared"]


def test_the_server_is_stopped_when_its_block_ends(tmp_path):
    if server_bindir() is None:
        pytest.skip("the PostgreSQL server is not installed")
    with postgres_server(tmp_path / "server") as url:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            row = connection.execute(sqlalchemy.text("select current_database(), inet_server_addr()::text")).one()
        assert tuple(row) == ("finetune_test", "127.0.0.1/32")
    assert not (tmp_path / "server" / "data" / "postmaster.pid").exists()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"), engine.connect():
        pass
    assert Path(tmp_path / "server" / "server.log").read_text().count("database system is shut down") == 1
