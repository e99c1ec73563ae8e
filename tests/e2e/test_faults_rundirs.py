"""Fault injection for run directories and resume: each case asserts the exact outcome (message,
exit code 2, no traceback) and that input folders and finished runs are unchanged, by sha256 of
every file."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import torch

from finetune.report.plots import epoch_history
from finetune.run.rundir import RUN_MARKER, forget_claims, log_attempts, log_version, unique_run_dir

from ..conftest import compose_config
from ..helpers import TINY, assert_refused, cli_in_process, tree_hashes


@pytest.fixture(scope="module")
def finished(tiny_finished_run) -> Path:
    """A finished tiny run (random-init resnet10t, 2 training batches): the session's, copied by each test."""
    return tiny_finished_run


def copy_run(finished: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(finished, target)
    return target


# --- unique run directories -------------------------------------------------------------------------


def _claim(args: tuple[str, multiprocessing.synchronize.Barrier]) -> str:
    base, barrier = args
    barrier.wait()  # every process asks for the name at the same moment
    return unique_run_dir(base)


def _claim_in_process(base: str, barrier, queue) -> None:
    queue.put(_claim((base, barrier)))


def test_runs_started_at_the_same_moment_get_different_directories(tmp_path):
    base = str(tmp_path / "runs" / "2026-01-01_00-00-00_digits_resnet10t")
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(base, barrier, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    dirs = sorted(queue.get(timeout=5) for _ in procs)
    assert len(set(dirs)) == 6
    assert dirs == sorted([base, *(f"{base}-{n}" for n in range(2, 7))])
    tokens = {(Path(d) / RUN_MARKER).read_text() for d in dirs}
    assert len(tokens) == 6  # each directory's marker names the one process that made it


def test_the_default_run_and_sweep_dirs_are_made_unique_by_the_resolver(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    import finetune.commands.train  # noqa: F401  (registers the unique_dir resolver)
    from finetune.resources import conf_dir

    monkeypatch.chdir(tmp_path)
    setup_globals()
    dirs = []
    for _ in range(2):  # two commands in the same second
        forget_claims()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = compose(config_name="config", return_hydra_config=True)
        dirs.append(cfg.hydra.run.dir)
        assert cfg.hydra.run.dir == dirs[-1]  # resolving again names the same directory
    forget_claims()
    assert dirs[0] != dirs[1] and all((tmp_path / d / RUN_MARKER).is_file() for d in dirs)


def test_an_explicit_run_dir_holding_a_finished_run_is_refused_untouched(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = tree_hashes(run)
    out = cli_in_process(*TINY, "seed=7", f"hydra.run.dir={run}", cwd=tmp_path)
    assert_refused(out, f"{run} already holds a run")
    assert f"resume={run}" in out.stderr
    assert tree_hashes(run) == before


def test_an_explicit_run_dir_that_is_a_user_folder_is_refused_untouched(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("mine")
    out = cli_in_process(*TINY, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert_refused(out, "already holds a run (a.txt)")
    assert tree_hashes(folder) == {"a.txt": hashlib.sha256(b"mine").hexdigest()}


def test_multirun_jobs_each_own_a_directory(tmp_path):
    from finetune.run.rundir import claim_run_dir

    sweep = Path(unique_run_dir(tmp_path / "multirun"))
    tokens = {claim_run_dir(sweep / str(n), hydra_files_allowed=True) for n in range(3)}
    assert len(tokens) == 3
    with pytest.raises(Exception, match="already holds a run"):
        forget_claims()
        claim_run_dir(sweep / "0", hydra_files_allowed=True)
    forget_claims()


# --- no directory for plan and for runs refused before training --------------------------------------


def test_plan_makes_no_run_directory(tmp_path):
    for args in (["plan", *TINY], ["plan=true", *TINY], ["plan=true", *TINY, "hydra.run.dir=run"]):
        out = cli_in_process(*args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "phase 1 'probe'" in out.stdout
        assert sorted(p.name for p in tmp_path.iterdir()) == [], args


def test_a_run_refused_on_its_data_leaves_no_directory_and_its_input_unchanged(tmp_path):
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)
    (data / "notes" / "readme.txt").write_text("no images here")
    before = tree_hashes(data)
    out = cli_in_process(*TINY, "dataset=imagefolder", f"dataset.root={data}", cwd=tmp_path)
    assert_refused(out, "no images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no runs/ folder
    assert tree_hashes(data) == before


# --- resume -------------------------------------------------------------------------------------------


def test_resuming_a_finished_run_is_refused_unless_asked(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = tree_hashes(run)
    out = cli_in_process(f"resume={run}", cwd=tmp_path)
    assert_refused(out, "has finished (metrics.json exists)")
    assert "resume_finished=true" in out.stderr
    assert tree_hashes(run) == before


def test_resume_finished_re_tests_without_training_and_may_calibrate(finished, tmp_path):
    """``resume_finished=true`` re-tests the kept checkpoint; it never trains again (fit from
    ``best.ckpt``, all a keep=best run keeps, would continue from the best epoch). The test-only
    options ``calibration`` and ``tta`` may change; the training record stays."""
    run = copy_run(finished, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    checkpoints, logs = tree_hashes(run / "checkpoints"), sorted(p.name for p in (run / "logs").rglob("*.csv"))
    out = cli_in_process(f"resume={run}", "resume_finished=true", "calibration=temperature", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert tree_hashes(run / "checkpoints") == checkpoints  # nothing trained, nothing saved
    assert sorted(p.name for p in (run / "logs").rglob("*.csv")) == logs + ["metrics.csv"]  # the test's log only
    assert after["checkpoint"] == before["checkpoint"] and after["phases"] == before["phases"]
    assert after["wall_time_s"] == before["wall_time_s"]
    assert after["test"]["acc"] == before["test"]["acc"]  # a temperature changes no decision
    assert after["calibration"]["method"] == "temperature" and after["calibration"]["temperature"] != 1.0
    assert "calibration: temperature" in (run / "config.yaml").read_text()


def test_resume_overrides_that_change_the_experiment_are_refused_by_name(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = tree_hashes(run)
    out = cli_in_process(
        f"resume={run}",
        "resume_finished=true",
        "dataset=imagefolder",
        f"dataset.root={tmp_path}",
        "seed=3",
        "schedule.epochs=4",
        "trainer.devices=1",
        "dataset.num_workers=0",
        cwd=tmp_path,
    )
    assert_refused(
        out,
        f"would change the experiment: dataset=imagefolder dataset.root={tmp_path} seed=3 schedule.epochs=4 (allowed",
    )
    assert tree_hashes(run) == before


def test_resume_safe_overrides_are_allowed_and_applied(finished):
    from finetune.run.records import experiment_changes, resume_config

    overrides = [
        "resume=x",
        "trainer.devices=1",
        "dataset.num_workers=0",
        "trainer.progress_bar=true",
        "seed=0",
        "schedule=linear_probe",
    ]  # the last two: the values the run has
    current = compose_config(*TINY[:-1], *overrides)
    cfg = resume_config(finished, current, overrides)
    assert cfg.trainer.progress_bar is True and cfg.dataset.num_workers == 0 and cfg.resume is None
    assert experiment_changes(cfg, current, overrides) == []
    assert experiment_changes(cfg, compose_config("seed=1"), ["seed=1"]) == ["seed=1"]
    assert experiment_changes(cfg, compose_config(), ["+medical=pneumonia"]) == ["+medical=pneumonia"]


class Foreign:  # a pickled object weights_only refuses to load
    pass


@pytest.mark.parametrize("fault", ["truncated", "blocked_pickle", "foreign"])
def test_a_corrupt_or_foreign_checkpoint_is_refused_before_anything_is_rewritten(finished, tmp_path, fault):
    run = copy_run(finished, tmp_path)
    (run / "metrics.json").unlink()  # an unfinished run
    ckpt = run / "checkpoints" / "last.ckpt"
    good = (run / "checkpoints" / "best.ckpt").read_bytes()
    if fault == "truncated":
        ckpt.write_bytes(good[: len(good) // 2])
        message = "last.ckpt cannot be read (PytorchStreamReader failed"
    elif fault == "blocked_pickle":
        torch.save({"finetune_phase": 0, "state_dict": {}, "object": Foreign()}, ckpt)
        message = "last.ckpt holds Python objects that are not loaded for safety (weights_only)"
    else:
        torch.save({"state_dict": {}}, ckpt)
        message = "last.ckpt was not written by finetune (no phase record)"
    before = tree_hashes(run)
    out = cli_in_process(f"resume={run}", cwd=tmp_path)
    assert_refused(out, message)
    assert f"resume={run / 'checkpoints' / 'best.ckpt'}" in out.stderr
    assert tree_hashes(run) == before


def test_a_run_killed_before_its_first_checkpoint_resumes_from_phase_one_keeping_its_logs(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    keep = {".finetune-run", ".hydra", "finetune.log", "config.yaml", "data.json", "weights.json", "logs"}
    for path in run.iterdir():  # what a SIGKILL during phase 1's first epoch leaves
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(run / "logs" / "test")
    stray = run / "logs" / ".metrics.csv.abc12345.tmp"  # atomic_path's name: mkstemp, 8 random characters
    stray.write_text("half a file")
    first_log = (run / "logs" / "probe" / "metrics.csv").read_bytes()
    out = cli_in_process(f"resume={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stopped before its first checkpoint, so phase 1 starts from the beginning" in out.stdout
    assert (
        f"removed 1 temporary file left by an interrupted write in {run} (logs/.metrics.csv.abc12345.tmp)" in out.stdout
    )
    assert not stray.exists() and not list(run.rglob(".*.tmp"))
    assert (run / "logs" / "probe" / "metrics.csv").read_bytes() == first_log  # the first attempt's lines kept
    assert (run / "logs" / "probe" / "attempt-2" / "metrics.csv").is_file()
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()


def test_a_directory_no_run_wrote_is_not_resumed(tmp_path):
    (tmp_path / "photos").mkdir()
    out = cli_in_process(f"resume={tmp_path / 'photos'}", cwd=tmp_path)
    assert_refused(out, "not a finetune run directory")
    assert list((tmp_path / "photos").iterdir()) == []


# --- per-attempt logs ---------------------------------------------------------------------------------


def test_a_resumed_phase_logs_to_a_new_attempt_and_history_reads_every_attempt(tmp_path):
    logs = tmp_path / "logs"
    assert log_version(logs, "top") == "top"
    (logs / "top").mkdir(parents=True)
    (logs / "top" / "metrics.csv").write_text("epoch,step,val/acc,train/loss_epoch\n0,5,0.5,1.0\n1,9,,\n")
    assert log_version(logs, "top") == "top/attempt-2"
    (logs / "top" / "attempt-2").mkdir()
    (logs / "top" / "attempt-2" / "metrics.csv").write_text("epoch,step,val/acc\n1,11,0.7\n2,15,0.8\n")
    assert log_version(logs, "top") == "top/attempt-3"
    (logs / "probe").mkdir()
    (logs / "probe" / "metrics.csv").write_text("epoch,step,val/acc\n0,3,0.3\n")
    phases = [log_attempts(logs / "probe"), log_attempts(logs / "top")]
    assert phases[1] == [logs / "top" / "metrics.csv", logs / "top" / "attempt-2" / "metrics.csv"]
    history = epoch_history(phases)
    assert history["val/acc"] == [(1, 0.3), (2, 0.5), (3, 0.7), (4, 0.8)]
    assert history["train/loss_epoch"] == [(2, 1.0)]
    assert epoch_history([logs / "probe" / "metrics.csv"])["val/acc"] == [(1, 0.3)]  # a plain path still works
