"""Interrupts say what happened (SIGINT, SIGTERM, SLURM's SIGUSR1, through the DDP launcher) and divergence
is detected (issue 25, items 5 and 6). Signals are sent at a fixed batch by a callback that a
``sitecustomize`` module adds to every Trainer of the run (also in DDP workers): no timers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.run.schedule import PHASE_KEY
from finetune.training.divergence import DivergenceRule

from ..helpers import TINY, cli_in_process, finetune_env, one_torch_thread, start_finetune

# Added to every Trainer when SIGNAL_AT="<signal>:<phase>:<epoch index>:<batch index>" is set: rank 0 sends
# the signal once, to the process whose pid SIGNAL_PID_FILE holds (the DDP launcher), else to itself.
SITECUSTOMIZE = """
import os
if os.environ.get("SIGNAL_AT"):
    import signal
    import lightning as L

    name, phase, epoch, batch = os.environ["SIGNAL_AT"].split(":")
    sent = []

    class SendSignal(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch_data, batch_idx):
            if sent or os.environ.get("RANK", "0") != "0" or trainer.logger is None:
                return
            if (trainer.logger.version, trainer.current_epoch, batch_idx) == (phase, int(epoch), int(batch)):
                sent.append(1)
                pid_file = os.environ.get("SIGNAL_PID_FILE")
                pid = int(open(pid_file).read()) if pid_file else os.getpid()
                os.kill(pid, getattr(signal, name))

    init = L.Trainer.__init__
    L.Trainer.__init__ = lambda self, *a, callbacks=(), **kw: init(self, *a, callbacks=[*callbacks, SendSignal()], **kw)
"""

TWO_EPOCHS = [*TINY, "schedule.epochs=2", "trainer.limit_train_batches=3"]


def _start(args: list[str], cwd: Path, signal_at: str, **env: str) -> subprocess.Popen:
    """``python -m finetune <args>`` with the signal-sending callback installed."""
    inject = cwd / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))
    return start_finetune(*args, cwd=cwd, env={"PYTHONPATH": path, "SIGNAL_AT": signal_at, **env})


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _last_line(stderr: str) -> str:
    """The one ``finetune:`` line of an interrupted run; no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("finetune:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _checkpoint_epoch(path: Path) -> tuple[int, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state[PHASE_KEY], state["epoch"]


def _interrupted_in_process(tmp_path: Path, monkeypatch, signal_at: str) -> subprocess.CompletedProcess:
    """``finetune <TWO_EPOCHS>`` in this process (cli_in_process) with the signal-sending callback of SITECUSTOMIZE
    added to every Trainer (for this test only): finetune's handlers catch the signal as in a ``finetune``
    process; the exit code of a real process is checked by the DDP launcher test below."""
    import lightning as L

    monkeypatch.setenv("SIGNAL_AT", signal_at)
    monkeypatch.setattr(L.Trainer, "__init__", L.Trainer.__init__)  # the original comes back after the test
    exec(SITECUSTOMIZE, {})
    with one_torch_thread():
        return cli_in_process(*TWO_EPOCHS, "hydra.run.dir=run", cwd=tmp_path)


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", 143)])
def test_a_signal_mid_epoch_says_where_and_exits_with_its_code(tmp_path, monkeypatch, name, code):
    run = tmp_path / "run"
    out = _interrupted_in_process(tmp_path, monkeypatch, f"{name}:probe:1:1")
    assert out.returncode == code, out.stderr[-3000:]
    line = _last_line(out.stderr)
    assert line == (
        f"finetune: interrupted in phase 'probe', epoch 2/2 ({name}); `finetune resume={run}` "
        "continues from the checkpoint of phase 'probe', epoch 1"
    ), line
    assert line.removeprefix("finetune: ") in (run / "finetune.log").read_text()  # the run's log says it too
    assert _checkpoint_epoch(run / "checkpoints" / "last.ckpt") == (0, 0)  # epoch 1's, as the line says
    assert not (run / "metrics.json").exists() and not list(run.glob("export*"))
    assert not list(run.rglob("*.tmp")) and not list(run.glob("hpc_ckpt_*"))


def test_a_signal_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    out = _interrupted_in_process(tmp_path, monkeypatch, "SIGINT:probe:0:1")
    assert out.returncode == 130, out.stderr[-3000:]
    assert _last_line(out.stderr) == (
        f"finetune: interrupted in phase 'probe', epoch 1/2 (SIGINT); no checkpoint was "
        f"written yet: `finetune resume={tmp_path / 'run'}` starts phase 'probe' from "
        "the beginning"
    )


def test_sigusr1_under_slurm_requeues_the_job_without_lightnings_mid_epoch_checkpoint(tmp_path, monkeypatch):
    """SLURM is simulated: its variables, and an ``scontrol`` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "finetune",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    out = _interrupted_in_process(tmp_path, monkeypatch, "SIGUSR1:probe:1:1")
    assert out.returncode == 143, out.stderr[-3000:]
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"  # once, by rank 0
    assert "interrupted in phase 'probe', epoch 2/2 (SIGUSR1)" in _last_line(out.stderr)
    assert not list((tmp_path / "run").rglob("hpc_ckpt_*"))  # Lightning's auto-requeue checkpoint is off


@pytest.mark.slow
def test_a_signal_to_the_ddp_launcher_reaches_the_workers(tmp_path):
    pid_file = tmp_path / "launcher.pid"
    process = _start(
        ["trainer=ddp", *TWO_EPOCHS, "hydra.run.dir=run"], tmp_path, "SIGTERM:probe:1:0", SIGNAL_PID_FILE=str(pid_file)
    )
    pid_file.write_text(str(process.pid))
    returncode, _, stderr = _finish(process)
    assert returncode == 143, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("finetune:")]
    assert len(lines) == 1 and lines[0].startswith("finetune: interrupted in phase 'probe', epoch 2/2 (SIGTERM)"), (
        stderr[-3000:]
    )
    assert not (tmp_path / "run" / "metrics.json").exists()
    # Known gap: torchrun, which the launcher signals, still prints its own SignalException traceback.


def _diverged_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("finetune:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_a_phase_that_diverges_stops_without_test_or_export_and_keeps_the_good_epochs(tmp_path):
    """Phase 1 trains as usual; phase 2 at lr 1e30 reaches a non-finite loss."""
    run = tmp_path / "run"
    phases = (
        "schedule.phases=[{name: probe, epochs: 1, freeze: all, lr: 0.01}, {name: top, epochs: 1, freeze: 0, lr: 1e30}]"
    )
    # in this process (exit code 3 from a process: test_a_ddp_run_that_diverges_exits_3_with_rank_0s_line_only)
    with one_torch_thread():
        out = cli_in_process(*TINY, "schedule=gradual", phases, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 3, out.stderr[-3000:]
    line = _diverged_line(out.stderr)
    assert line.startswith("finetune: error: training diverged in phase 'top' at step 2 (loss nan, lr 1e+30"), line
    assert line.endswith("); lower schedule.lr or run finetune lr-find"), line
    assert line.removeprefix("finetune: error: ") in (run / "finetune.log").read_text()
    assert not (run / "metrics.json").exists() and not list(run.glob("export*")) and not (run / "report.html").exists()
    for name in ("best.ckpt", "last.ckpt"):  # phase 1's epoch, with finite weights
        state = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert state[PHASE_KEY] == 0
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


def test_a_finite_loss_far_above_its_start_stops_the_phase(tmp_path):
    """schedule.lr=1e6 (the issue's case: val loss 9.5e12, test accuracy 0.0, exports written)."""
    with one_torch_thread():  # in this process (exit code 3 from a process: the DDP test below)
        out = cli_in_process(*TWO_EPOCHS, "schedule.lr=1e6", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 3, out.stderr[-3000:]
    assert "training diverged in phase 'probe' at step" in _diverged_line(out.stderr)
    assert not (tmp_path / "run" / "metrics.json").exists()


# Step losses measured for the rule (finetune/training/divergence.py), every step of the phase, in order.
BREASTMNIST_SGD_LR1 = [
    0.669,
    0.798,
    1.492,
    5.804,
    0.9,
    5.022,
    10.576,
    0.717,
    8.355,
    19.304,
    3.797,
    9.05,
    28.275,
    0.847,
    0.61,
    0.518,
    3.046,
    26.829,
    1.512,
    7.312,
    43.231,
    5.384,
    6.643,
    7.687,
    12.164,
    0.635,
    30.604,
    0.495,
    0.489,
    0.388,
    39.265,
    0.565,
    0.638,
    0.487,
]  # recovers: final 0.487
DIGITS_LR1 = [
    2.275,
    16.952,
    16.514,
    32.743,
    6.544,
    61.062,
    54.886,
    42.602,
    19.763,
    4.333,
    9.359,
    2.905,
    36.447,
    81.939,
    11.316,
    430.895,
    310.404,
    94.582,
    120.784,
    182.457,
    61.365,
    46.419,
    10.404,
]  # chance, finite
DIGITS_LR10 = [2.275, 197.581, 236.61, 293.535, 397.963, 618.87, 263.73]


def _first_stop(losses: list[float]) -> int | None:
    """The 1-based step at which a fresh rule stops a phase with these step losses, or None."""
    rule = DivergenceRule()
    return next((step for step, loss in enumerate(losses, 1) if rule.diverged(loss)), None)


def test_the_divergence_rule_on_measured_step_losses():
    assert _first_stop(BREASTMNIST_SGD_LR1) is None  # single steps 64.6x the first, then it recovers
    assert _first_stop(DIGITS_LR1) is None  # two steps above 100 x 2.275 (430.9, 310.4), never three
    assert _first_stop(DIGITS_LR10) == 5  # 236.6, 293.5, 398.0: three steps above 100 x 2.275 = 227.5
    assert _first_stop([2.3, math.nan]) == 2 and _first_stop([math.inf]) == 1


def test_a_phase_starting_from_a_trained_head_is_not_stopped_by_a_small_absolute_jump():
    # phase 2 of gradual: the head is trained (first loss 0.01); unfreezing moves BatchNorm statistics and the
    # loss jumps to 1-2 for a while: 150x the start, but far below divergence (the start counts as at least 1)
    assert _first_stop([0.01, 1.5, 1.8, 1.2, 0.9, 0.4]) is None
    assert _first_stop([0.01, 150.0, 200.0, 300.0]) == 4  # above 100 x max(0.01, 1) three steps running


def test_a_ddp_run_that_diverges_exits_3_with_rank_0s_line_only(tmp_path):
    phases = "schedule.phases=[{name: probe, epochs: 1, freeze: all, lr: 1e30}]"
    out = subprocess.run(
        [sys.executable, "-m", "finetune", "trainer=ddp", *TINY, "schedule=gradual", phases, "hydra.run.dir=run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=finetune_env(),
        timeout=300,
    )
    assert out.returncode == 3, out.stderr[-3000:]
    assert _diverged_line(out.stderr).startswith("finetune: error: training diverged in phase 'probe'"), out.stderr
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / ".finetune-diverged").exists()
