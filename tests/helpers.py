"""Helpers shared by test modules (a test module never imports another test module)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# A CPU-sized classification run on digits: random-init resnet10t, 32 px, one epoch of two batches.
TINY = ["backbone.name=resnet10t", "backbone.pretrained=false", "dataset.image_size=32", "schedule=linear_probe",
        "schedule.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.progress_bar=false"]


def finetune_env() -> dict[str, str]:
    """The environment a ``finetune`` subprocess runs in: offline hub, one torch thread."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_finetune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m finetune <args>`` in ``cwd``; waits for it and captures its output."""
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=cwd, capture_output=True, text=True,
                          env=finetune_env(), timeout=timeout)


def start_finetune(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m finetune <args>`` started in ``cwd`` without waiting (stdout/stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=finetune_env())


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (names relative to it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(out: subprocess.CompletedProcess, message: str, code: int = 2) -> str:
    """Exit ``code``, one ``finetune: error:`` line holding ``message``, no traceback; the line."""
    assert out.returncode == code, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("finetune: error: "), out.stderr[-2000:]
    assert message in lines[0], lines[0]
    return lines[0]
