"""Sweeps through submitit (``hydra/launcher=submitit_slurm`` on a cluster), run here with ``submitit_local``: each
job of a grid sweep or a search trains in a process of its own, writes its run directory under the sweep directory,
and the sweep's summary ranks them all, as under Hydra's in-process launcher."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..helpers import TINY, finetune_env

# TINY on timm's 0.5M-parameter test model, CSV logs only; features not cached (a head-only phase would first run
# the backbone over every training image).
SUBMITIT_LOCAL = ["-m", "hydra/launcher=submitit_local", *(a for a in TINY if not a.startswith("backbone.name="))]
SUBMITIT_LOCAL += ["backbone.name=test_resnet", "logger=csv", "data.cache_features=false"]


def marker_pid(directory: Path) -> int:
    """The process that claimed a run directory (its ``.finetune-run`` token says ``pid=<n>``)."""
    token = (directory / ".finetune-run").read_text().split()
    return int(next(part for part in token if part.startswith("pid=")).removeprefix("pid="))


def finish(*args: str, cwd: Path) -> tuple[int, int, str]:
    """``finetune <args>`` in ``cwd``: its pid, exit code and stderr. It runs in a session of its own: one still
    running at the timeout is killed with its submitit job processes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=finetune_env(),
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process.pid, process.returncode, stderr


def test_a_grid_sweep_runs_each_job_as_a_submitit_job_and_a_failed_job_fails_it_in_one_line(tmp_path):
    """Each job is a submitit job in a process of its own. Job 1 diverges (lr 1e6): its own log says so, job 0
    still finishes, the summary ranks it and lists both, and the command exits 1 with our line naming the failed
    job, no traceback (a job process that exited would leave submitit no result: it would wait 15 s for one, then
    raise with a traceback)."""
    pid, code, stderr = finish(*SUBMITIT_LOCAL, "schedule.epochs=2", "schedule.lr=0.01,1e6", cwd=tmp_path)
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    (sweep,) = (tmp_path / "runs").glob("multirun_*")  # the default sweep directory, made once (unique_dir)
    assert marker_pid(sweep) == pid
    assert "Error executing job with overrides: [" in stderr and "'schedule.lr=1000000.0']" in stderr  # Hydra's
    lines = [line for line in stderr.splitlines() if line.startswith("finetune:")]
    assert lines == [
        f"finetune: error: job 1 of the sweep stopped ({sweep.resolve() / '1'}): training diverged in phase 'probe' "
        + lines[0].split(" phase 'probe' ", 1)[-1]
    ], stderr[-3000:]

    job_logs = sorted(sweep.glob(".submitit/*/*_0_log.out"))
    assert len(job_logs) == 2  # two submitit jobs, each with its own log
    assert json.loads((sweep / "0" / "metrics.json").read_text())["checkpoint"]["monitor"] == "val/acc"
    for job, lr in (("0", 0.01), ("1", 1e6)):
        run = sweep / job
        assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["lr"] == lr
        assert marker_pid(run) != pid  # claimed by its job's process, not by the command's
        assert "Job completed successfully" not in (run / "finetune.log").read_text()  # submitit's lines: its log
    assert marker_pid(sweep / "0") != marker_pid(sweep / "1")
    errors = {log: log.with_name(log.name.replace(".out", ".err")).read_text() for log in job_logs}
    (failed_log,) = [log for log, text in errors.items() if "finetune: error:" in text]
    assert "finetune: error: training diverged in phase 'probe'" in errors[failed_log]
    assert "phase 1/1 'probe': 2 epoch(s)" in failed_log.read_text()  # its run's output: in its own job log
    (finished_log,) = set(job_logs) - {failed_log}
    assert "Job completed successfully" in finished_log.read_text()
    assert finished_log.read_text().split("run directory: ", 1)[1].split()[0] == str(sweep.resolve() / "0")
    # a job process quiets the library chatter a plain run never shows
    assert not any("eval mode" in text or "LeafSpec" in text for text in errors.values()), errors

    with open(sweep / "sweep_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["rank"], r["run"], r["swept"], r["status"]) for r in rows] == [
        ("1", "0", "schedule.lr=0.01", "finished"),
        ("", "1", "schedule.lr=1000000.0", "no metrics.json"),
    ]


@pytest.mark.slow
def test_a_search_launches_its_trials_as_parallel_submitit_jobs(tmp_path):
    """``hydra/sweeper=search`` with ``n_jobs=2``: the two trials of one launch run as two submitit jobs; the study
    (the sweep's journal file) holds both, complete, with the values their runs' metrics.json report."""
    from optuna import load_study
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    search = ["+classification=digits_search", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    tiny = [*(a for a in SUBMITIT_LOCAL[2:] if not a.startswith("schedule=")), "backbone.freeze=4"]
    tiny += ["trainer.limit_val_batches=2"]
    launch = ["-m", "hydra/launcher=submitit_local", "hydra.sweep.dir=sweep"]
    pid, code, stderr = finish(*launch, *search, *tiny, cwd=tmp_path)
    assert code == 0, stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert len(list(sweep.glob(".submitit/*/*_0_result.pkl"))) == 2
    assert len({marker_pid(sweep / "0"), marker_pid(sweep / "1"), pid}) == 3
    study = load_study(study_name="sweep", storage=JournalStorage(JournalFileBackend(str(sweep / "study.log"))))
    assert sorted((t.number, t.state.name) for t in study.trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
    for trial in study.trials:
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert trial.value == metrics["checkpoint"]["best"]
    with open(sweep / "sweep_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = max(study.trials, key=lambda t: t.value).number
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[0]["run"] == str(best)
