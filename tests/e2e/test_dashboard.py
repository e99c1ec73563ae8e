"""The one documented command to watch a search, ``optuna-dashboard <storage> --host 127.0.0.1 --port <port>``,
serves a study from each kind of storage a search writes: the journal file (the default, ``<sweep dir>/study.log``),
an SQLite URL and a PostgreSQL URL (tests/postgres.py's server); a port taken before the dashboard binds it is
replaced by another."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from ..postgres import free_port, postgres_url  # noqa: F401  (postgres_url: a fixture)

DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")  # the console script beside this interpreter
PORT_TRIES = 5  # ports tried when another process binds the chosen one before the dashboard does


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


def served_study(base: str, process: subprocess.Popen, deadline_s: float = 60) -> dict | None:
    """The dashboard's detail of its one study, polled until it answers; None if the process ends first."""
    deadline = time.monotonic() + deadline_s
    while process.poll() is None:
        try:
            (summary,) = get_json(f"{base}/api/studies")["study_summaries"]
            return get_json(f"{base}/api/studies/{summary['study_id']}")
        except OSError:  # not answering yet: URLError, ConnectionError, a timeout
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return None


def serve(storage: str, tries: int = PORT_TRIES) -> tuple[dict, str]:
    """``optuna-dashboard <storage>`` on a free port of 127.0.0.1, stopped after: its one study's detail and its
    output. A port another process bound first ("Address already in use") is replaced, ``tries`` ports in all."""
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
        process.kill()
        output, _ = process.communicate()
    if study is None and "in use" in output and tries > 1:
        return serve(storage, tries - 1)
    assert study is not None, output[-4000:]
    return study, output


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_the_dashboard_serves_a_study_from_each_storage(kind, tmp_path, request):
    if kind == "journal":
        storage = str(tmp_path / "study.log")
        small_study(JournalStorage(JournalFileBackend(storage)))
    else:
        storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
        small_study(storage)
    study, output = serve(storage)
    assert study["name"] == "search" and study["directions"] == ["minimize"], output
    assert [(t["number"], t["state"], t.get("values")) for t in study["trials"]] == [
        (0, "Complete", [1.0]),
        (1, "Complete", [4.0]),
        (2, "Complete", [9.0]),
        (3, "Pruned", None),
    ]
    assert [t["number"] for t in study["best_trials"]] == [0]


def test_a_port_taken_before_the_dashboard_binds_it_is_replaced(tmp_path, monkeypatch):
    storage = str(tmp_path / "study.log")
    small_study(JournalStorage(JournalFileBackend(storage)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        picks, pick = [taken.getsockname()[1]], free_port
        monkeypatch.setattr(sys.modules[__name__], "free_port", lambda: picks.pop() if picks else pick())
        study, output = serve(storage)
    assert picks == [] and study["name"] == "search", output
