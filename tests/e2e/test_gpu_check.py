"""benchmarks/gpu_check.py, the prepared GPU check, runs on the CPU (``--smoke``, tiny sizes): the throughput
section (a real run vs the bare loop) and the FSDP section (refused here); the feature-cache section is two more
real runs of the same code path, left out to keep the test short."""

from __future__ import annotations

import copy
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
    assert_failures_decide_the_exit_code(json.loads((tmp_path / "gpu_check.json").read_text()))


def assert_failures_decide_the_exit_code(results: dict) -> None:
    """The smoke run exited 0 with no failures; the same results with one section failed in each way are one."""
    from benchmarks.gpu_check import failures

    assert failures(results) == []
    forced = {
        "throughput": {"error": "Traceback ...\nRuntimeError: CUDA out of memory"},
        "fsdp": {"exit_code": 1, "stderr_tail": "Traceback ...\nMisconfigurationException"},
        "gpu_tests": {"exit_code": 1, "tail": "1 failed, 3 passed"},
    }
    for name, values in forced.items():
        broken = copy.deepcopy(results)
        broken["sections"][name] = values
        assert failures(broken) == [name], name
    exported_badly = copy.deepcopy(results)
    exported_badly["sections"]["fsdp"] = {"exit_code": 0, "export_exit_code": 1}
    assert failures(exported_badly) == ["fsdp"]
    on_a_gpu = copy.deepcopy(results) | {"mode": "full"}  # the CPU's refusal is a failure on a GPU machine
    assert failures(on_a_gpu) == ["fsdp"]
