"""The one documented command to watch a search, ``optuna-dashboard <storage> --host 127.0.0.1 --port <port>``,
serves a study from each kind of storage a search writes: the journal file (the default, ``<sweep dir>/study.log``),
an SQLite URL and a PostgreSQL URL (tests/postgres.py's server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from ..postgres import free_port, postgres_url  # noqa: F401  (postgres_url: a fixture)

DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")  # the console script beside this interpreter


def small_study(storage: optuna.storages.BaseStorage | str) -> None:
    """Study "search": three finished trials (values 1, 4, 9) and one pruned, as a search with pruning leaves."""
    study = optuna.create_study(study_name="search", storage=storage, direction="minimize")
    for x in (1.0, 2.0, 3.0):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 10)})
        study.tell(trial, x**2)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def served_study(base: str, process: subprocess.Popen, deadline_s: float = 60) -> dict:
    """The dashboard's detail of its one study, polled until it answers (or the process ends)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            (summary,) = get_json(f"{base}/api/studies")["study_summaries"]
            return get_json(f"{base}/api/studies/{summary['study_id']}")
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_the_dashboard_serves_a_study_from_each_storage(kind, tmp_path, request):
    if kind == "journal":
        storage = str(tmp_path / "study.log")
        small_study(JournalStorage(JournalFileBackend(storage)))
    else:
        storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
        small_study(storage)
    port = free_port()
    process = subprocess.Popen(
        [DASHBOARD, storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        study = served_study(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert study["name"] == "search" and study["directions"] == ["minimize"], output
    assert [(t["number"], t["state"], t.get("values")) for t in study["trials"]] == [
        (0, "Complete", [1.0]),
        (1, "Complete", [4.0]),
        (2, "Complete", [9.0]),
        (3, "Pruned", None),
    ]
    assert [t["number"] for t in study["best_trials"]] == [0]
