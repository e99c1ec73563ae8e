"""Concurrency and killed writes: one process at a time works in a run directory (its lock), and
nothing an interrupted write leaves behind outlives the next command.

Overlaps are made deterministic, never timed: the first command is a real ``finetune`` process that
stops itself (SIGSTOP) the moment it opens a given file, and the test waits for that stop with
``waitpid(WUNTRACED)``; the second command then runs against a directory the first one is known to be
working in.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ..helpers import TINY, assert_refused, cli_in_process, compose_config, finetune_env, tree_hashes

LOCK = ".finetune-lock"
CHILDREN: list[subprocess.Popen] = []  # started by start_finetune_until, killed after the test if still there

# A ``finetune`` command line that stops itself (SIGSTOP) or dies (SIGKILL) the first time it opens (or
# chmods) a file whose name matches a pattern and that exists already, or a file inside such a folder: a
# temporary made with mkstemp / mkdtemp, being written. argv = action, pattern, folder ('' for any), args.
CHILD = """
import fnmatch, os, signal, sys
action, pattern, folder = sys.argv[1:4]
EVENTS = ("open", "os.mkdir", "os.chmod")  # torch.save writes from C++: atomic_path's chmod is its last step
fired = []
def hook(event, args):
    if fired or event not in EVENTS or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if folder and not path.startswith(folder + os.sep):
        return
    base = folder or os.path.dirname(path)
    parts = os.path.relpath(path, base).split(os.sep)
    for n, part in enumerate(parts, 1):  # a file or folder made earlier, now written (again)
        if fnmatch.fnmatch(part, pattern) and os.path.exists(os.path.join(base, *parts[:n])):
            fired.append(path)
            os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
sys.addaudithook(hook)
sys.argv = ["finetune", *sys.argv[4:]]
from finetune.cli import main
sys.exit(main())
"""


def start_finetune_until(
    action: str, pattern: str, *args: str, cwd: Path, folder: Path | str = "", env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``finetune <args>`` that stops (``action='stop'``) or is killed (``'kill'``) when it first writes a
    file matching ``pattern`` (or inside such a folder) under ``folder``; output goes to ``cwd/child.out``
    (a pipe nobody reads could block it before that point)."""
    with open(cwd / "child.out", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, action, pattern, str(folder), *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or finetune_env(),
        )
    CHILDREN.append(proc)
    return proc


@pytest.fixture(autouse=True)
def no_child_left():
    """A test that fails while its child is stopped must not leave the child behind."""
    yield
    while CHILDREN:
        proc = CHILDREN.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def wait_stopped(proc: subprocess.Popen, cwd: Path) -> None:
    """Block until ``proc`` has stopped itself (no polling, no sleep)."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), (status, (cwd / "child.out").read_text()[-3000:])


def resume_and_finish(proc: subprocess.Popen, cwd: Path) -> None:
    """Let a stopped ``proc`` go on; its exit must be 0."""
    os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=300) == 0, (cwd / "child.out").read_text()[-3000:]


def killed(proc: subprocess.Popen) -> None:
    """SIGKILL a (stopped) process and reap it."""
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL


def temporaries(folder: Path) -> list[str]:
    """Names of the ``.<name>.<random>.tmp`` files and folders left under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def finished(tiny_finished_run) -> Path:
    """A finished tiny run (random-init resnet10t, 2 training batches): the session's, copied by each test."""
    assert not (tiny_finished_run / LOCK).exists()  # released at the end of a run
    return tiny_finished_run


def copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


# --- item 1: two resumes of one run ----------------------------------------------------------------


def test_a_second_resume_is_refused_while_the_first_holds_the_run(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    first = start_finetune_until("stop", ".metrics.json.*.tmp", f"resume={run}", "resume_finished=true", cwd=tmp_path)
    wait_stopped(first, tmp_path)  # the first resume is about to write metrics.json
    before = tree_hashes(run)
    second = cli_in_process(f"resume={run}", "resume_finished=true", cwd=tmp_path)
    line = assert_refused(
        second, f"{run} is locked by pid {first.pid} on host {socket.gethostname()} (finetune resume, started "
    )
    assert line.endswith("wait for it or stop it"), line
    assert tree_hashes(run) == before  # the second one wrote nothing
    resume_and_finish(first, tmp_path)
    assert not (run / LOCK).exists() and temporaries(run) == []


def test_export_and_resume_are_refused_while_a_training_run_works(tmp_path):
    first = start_finetune_until("stop", ".metrics.json.*.tmp", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    wait_stopped(first, tmp_path)  # trained and tested, writing metrics.json
    run = tmp_path / "run"
    before = tree_hashes(run)
    holder = f"{run} is locked by pid {first.pid} on host {socket.gethostname()} (finetune train, started "
    assert_refused(cli_in_process("export", f"run={run}", "format=safetensors", "out=elsewhere", cwd=tmp_path), holder)
    assert_refused(cli_in_process(f"resume={run}", cwd=tmp_path), holder)
    assert tree_hashes(run) == before and not (tmp_path / "elsewhere").exists()
    resume_and_finish(first, tmp_path)
    assert json.loads((run / "metrics.json").read_text())["test"]
    assert not (run / LOCK).exists()


# --- item 2: concurrent exports, and what a killed export leaves -----------------------------------


def test_a_second_export_is_refused_and_a_killed_one_is_cleaned_up_by_the_next(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    export = ("export", f"run={run}", "format=onnx")
    first = start_finetune_until("stop", ".model.onnx.*.tmp", *export, cwd=tmp_path)
    wait_stopped(first, tmp_path)  # its model.onnx is half written
    before = tree_hashes(run)
    second = cli_in_process(*export, "overwrite=true", cwd=tmp_path)
    assert_refused(
        second, f"{run} is locked by pid {first.pid} on host {socket.gethostname()} (finetune export, started "
    )
    assert tree_hashes(run) == before
    killed(first)  # kill -9 in the middle of the write: its lock and temporary file stay behind
    left = temporaries(run)
    assert (run / LOCK).exists() and len(left) == 1 and left[0].startswith("exports/.model.onnx."), left

    third = cli_in_process(*export, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the lock of {run}: pid {first.pid} on this host (finetune export, started " in third.stdout, (
        third.stdout
    )
    assert f"removed 1 temporary file left by an interrupted write in {run} ({left[0]})" in third.stdout
    assert temporaries(run) == [] and not (run / LOCK).exists() and (run / "exports" / "model.onnx").is_file()


def test_a_killed_folder_export_is_cleaned_from_the_out_folder_only_by_our_names(finished, tmp_path):
    run, out = copy_run(finished, tmp_path), tmp_path / "deploy"
    out.mkdir()
    mine = {".notes.tmp": "x", "draft.tmp": "y", ".timm.not-ours.tmp": "z"}  # not our pattern: kept
    for name, text in mine.items():
        (out / name).write_text(text)
    export = ("export", f"run={run}", "format=timm", f"out={out}")
    first = start_finetune_until("kill", ".timm.*.tmp", *export, cwd=tmp_path, folder=out)
    assert first.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "child.out").read_text()[-3000:]
    left = [name for name in temporaries(out) if name not in mine]
    assert len(left) == 1 and left[0].startswith(".timm.") and (out / left[0]).is_dir(), left

    second = cli_in_process(*export, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"removed 1 temporary file left by an interrupted write in {out} ({left[0]})" in second.stdout
    assert {p.name for p in out.iterdir()} == {*mine, "timm", "preprocess.py"}
    assert all((out / name).read_text() == text for name, text in mine.items())


# --- stale and foreign locks ---------------------------------------------------------------------------


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / LOCK).write_text(
        json.dumps(
            {
                "pid": 4242,
                "host": "gpu-node-7",
                "command": "finetune train",
                "started": "2026-12-01 10:00:00",
                "token": "abc",
            }
        )
    )
    before = tree_hashes(run)
    out = cli_in_process("report", f"run={run}", cwd=tmp_path)
    line = assert_refused(
        out,
        f"{run} is locked by pid 4242 on host gpu-node-7 (finetune train, started "
        "2026-12-01 10:00:00), which cannot be checked from this host",
    )
    assert f"delete {run / LOCK}" in line
    assert tree_hashes(run) == before


def test_an_unreadable_lock_is_refused_not_taken(tmp_path):
    from finetune.run.errors import FinetuneError
    from finetune.run.lock import run_lock

    (tmp_path / LOCK).write_text("")  # a process killed between creating the lock and writing it
    with pytest.raises(FinetuneError, match=f"{tmp_path} is locked, but {tmp_path / LOCK} does not say by whom") as err:
        with run_lock([tmp_path], "finetune report"):
            pass
    assert f"delete {tmp_path / LOCK}" in str(err.value)
    assert (tmp_path / LOCK).read_text() == ""


def test_the_lock_is_reentrant_in_one_process_and_released_by_its_taker(tmp_path):
    from finetune.run.lock import held_token, run_lock

    with run_lock([tmp_path], "finetune train"):
        record = json.loads((tmp_path / LOCK).read_text())
        assert (record["pid"], record["host"], record["command"]) == (
            os.getpid(),
            socket.gethostname(),
            "finetune train",
        )
        with run_lock([tmp_path], "finetune export"):  # train exports in-process: the same holder
            assert json.loads((tmp_path / LOCK).read_text()) == record
        assert (tmp_path / LOCK).exists() and held_token(tmp_path) == record["token"]
    assert not (tmp_path / LOCK).exists() and held_token(tmp_path) is None


def _take_stale_lock(args: tuple[str, object, object]) -> None:
    folder, barrier, wins = args
    from finetune.run.errors import FinetuneError
    from finetune.run.lock import run_lock

    barrier.wait()  # every process finds the same stale lock at the same moment
    try:
        with run_lock([Path(folder)], "finetune export"):
            wins.put(os.getpid())
            barrier.wait()  # hold it until every other process has tried
            return
    except FinetuneError:
        pass
    barrier.wait()


def test_of_several_processes_taking_over_one_stale_lock_exactly_one_wins(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / LOCK).write_text(
        json.dumps(
            {
                "pid": gone.pid,
                "host": socket.gethostname(),
                "command": "finetune train",
                "started": "then",
                "token": "old",
            }
        )
    )
    ctx = multiprocessing.get_context("fork")
    barrier, wins = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_take_stale_lock, args=((str(tmp_path), barrier, wins),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert wins.qsize() == 1
    assert not (tmp_path / LOCK).exists()


# --- multi-process runs ------------------------------------------------------------------------------


def test_a_worker_started_without_our_launcher_takes_the_lock_on_rank_0_only(tmp_path, monkeypatch):
    from finetune.commands import train as train_command
    from finetune.commands import worker

    held = []
    monkeypatch.setattr(
        train_command,
        "train",
        lambda cfg, run_dir, resume_from=None: held.append(
            json.loads((run_dir / LOCK).read_text()) if (run_dir / LOCK).exists() else None
        ),
    )
    (tmp_path / "job.yaml").write_text(OmegaConf.to_yaml(compose_config(*TINY)))  # as our launcher writes it
    args = [f"run_dir={tmp_path / 'run'}", f"config={tmp_path / 'job.yaml'}"]
    monkeypatch.setenv("RANK", "0")  # torchrun's rank 0
    assert worker.main(args) == 0
    monkeypatch.setenv("RANK", "1")
    assert worker.main([*args, "owner=resumed"]) == 0
    assert [(h["pid"], h["command"]) if h else None for h in held] == [(os.getpid(), "finetune worker"), None]
    assert not (tmp_path / "run" / LOCK).exists()


def test_a_worker_given_a_lock_it_does_not_hold_is_refused(finished, tmp_path, monkeypatch, capsys):
    from finetune.commands import worker

    run = copy_run(finished, tmp_path)
    (run / LOCK).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": "finetune train",
                "started": "now",
                "token": "theirs",
            }
        )
    )
    before = tree_hashes(run)
    monkeypatch.setenv("RANK", "0")  # torchrun's rank 0; the worker in this process (its output is checked)
    args = [f"run_dir={run}", f"config={run / 'config.yaml'}", "owner=resumed", "lock=mine"]
    out = subprocess.CompletedProcess(args, worker.main(args), *capsys.readouterr())
    assert_refused(
        out,
        f"{run} is locked by pid {os.getpid()} on host {socket.gethostname()} (finetune train, "
        "started now), not by the launcher that started this worker",
    )
    assert tree_hashes(run) == before


# --- item 3: checkpoints are staged in the run directory -------------------------------------------


def test_a_checkpoint_write_killed_midway_is_removed_by_the_resume_and_nothing_is_staged_in_tmpdir(tmp_path):
    spy = tmp_path / "system-tmp"
    spy.mkdir()
    # torch makes its (empty) compile cache folder in TMPDIR when torch._dynamo is imported: not ours, kept apart
    env = {**finetune_env(), "TMPDIR": str(spy), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "torch-cache")}
    proc = start_finetune_until("kill", ".last.ckpt.*.tmp", *TINY, "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "child.out").read_text()[-3000:]
    run = tmp_path / "run"
    left = temporaries(run)
    assert len(left) == 1 and left[0].startswith("checkpoints/.last.ckpt."), left
    out = subprocess.run(
        [sys.executable, "-m", "finetune", f"resume={run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"removed 1 temporary file left by an interrupted write in {run} ({left[0]})" in out.stdout
    assert temporaries(run) == [] and (run / "metrics.json").is_file()
    assert sorted(p.name for p in spy.iterdir()) == []  # every checkpoint of both processes was staged in the run
