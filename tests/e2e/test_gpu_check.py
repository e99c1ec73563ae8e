"""benchmarks/gpu_check.py, the prepared GPU check, runs on the CPU (``--smoke``, tiny sizes): the throughput
section (a real run vs the bare loop) and the FSDP section (refused here); the feature-cache section is two more
real runs of the same code path, left out to keep the test short."""

from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import REPO
from ..helpers import finetune_env


def test_gpu_check_smoke_writes_its_figures(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--smoke", f"--out={tmp_path}", "--sections=throughput,fsdp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=finetune_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert not [name for name, values in sections.items() if "error" in values], sections
    throughput = sections["throughput"]
    assert throughput["stack_samples_per_s"] > 0 and throughput["bare_samples_per_s"] > 0
    assert sections["fsdp"]["exit_code"] == 2 and "trainer=fsdp needs CUDA GPUs" in sections["fsdp"]["stderr_tail"]
    assert "| throughput | ratio_stack_over_bare |" in (tmp_path / "gpu_check.md").read_text()
