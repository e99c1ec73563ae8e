"""The GPU code paths, exercised on the CPU: ``trainer.precision=bf16-mixed`` (autocast), ``trainer.channels_last``
(memory format of model and batches) and ``trainer.compile`` (torch.compile of the training forward).

One tiny two-phase run with every option at once (torch.compile with aot_eager on the CPU: see CPU_OPTIONS): a
head-only phase, then the whole model trains (the frozen set changes, so the compiled forward recompiles); the
training loss falls, a run stopped in phase 2 resumes with ``finetune resume=<run>`` (the checkpoints hold the
model's own float32 weights under its own names, no ``_orig_mod.``), and the exports pass their parity gate. The
gpu-marked twin runs it on CUDA with inductor (``pytest -m gpu``: benchmarks/gpu_check.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ..helpers import cli_in_process, one_torch_thread, run_finetune, step_losses, stopped_in_phase_2

# digits (in the package), resnet10t with stand-in weights, 32 px: a probe epoch, then the whole model trains (the
# frozen set changes between phases: a compiled forward recompiles). The probe of random stand-in weights barely
# learns; the whole model does, within the top phase's 12 steps (loss about 2.3 -> 1.3).
TWO_PHASES = [
    "backbone.name=resnet10t",
    "dataset.image_size=32",
    "schedule=gradual",
    "schedule.phases=[{name: probe, epochs: 1, freeze: all, lr: 0.003},{name: top, epochs: 1, freeze: 0, lr: 0.003}]",
    "schedule.batch_size=16",
    "data.cache_features=false",  # the probe phase runs the (compiled) backbone too
    "trainer.limit_train_batches=12",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
]
# torch.compile: aot_eager, the graph capture, guards and recompiles of inductor without its C++ code generation,
# which takes about a minute for resnet10t on this CPU (the gpu-marked test runs inductor on CUDA).
GPU_OPTIONS = ["trainer.precision=bf16-mixed", "trainer.channels_last=true", "trainer.compile=true"]
CPU_OPTIONS = [*GPU_OPTIONS, "trainer.compile_backend=aot_eager"]


def _assert_falls(losses: list[float]) -> None:
    """The mean of the last 3 steps well below the first (a model that does not train stays near log(10) = 2.3)."""
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0] - 0.4, losses


def _stops_resumes_and_exports(tmp_path: Path, args: list[str], formats: tuple[str, ...], in_process: bool) -> None:
    """Stopped in phase 2, resumed (the run exports ``head.safetensors`` through the parity gate; ``in_process``: the
    resume in this process, else in a ``finetune`` process), then exported in ``formats`` through the parity gate."""
    run = stopped_in_phase_2(*TWO_PHASES, *args, cwd=tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in state["state_dict"] if "_orig_mod" in k]  # the plain model's names, never the compiled
    assert all(v.dtype == torch.float32 for v in state["state_dict"].values() if v.is_floating_point())

    if in_process:
        with one_torch_thread():
            resumed = cli_in_process("resume=run", cwd=tmp_path)
    else:
        resumed = run_finetune("resume=run", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [p["epochs_run"] for p in metrics["phases"]] == [1, 1]
    _assert_falls(step_losses(run / "logs" / "top" / "attempt-2" / "metrics.csv"))  # the resumed phase, whole
    # channels_last weights and bf16 training: the exports are float32 and contiguous, and pass the parity gate
    assert (run / "exports" / "head.safetensors").is_file()
    if not formats:
        return
    exported = run_finetune("export", "run=run", f"format={','.join(formats)}", cwd=tmp_path, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert all((run / "exports" / f"model.{fmt}").is_file() for fmt in formats)


@pytest.mark.slow
def test_bf16_channels_last_compiled_run_stops_resumes_and_exports(tmp_path, weights_file):
    """Every option at once, on the CPU (bf16 autocast runs there too). The run's own head export only: ONNX and
    torch.export take 15 s and 10 s more here (the file's budget is 45 s); the gpu test exports both. The resume runs
    in this process (an interpreter start less; the gpu test resumes in a process of its own)."""
    _stops_resumes_and_exports(tmp_path, [f"backbone.weights={weights_file}", *CPU_OPTIONS], (), in_process=True)


@pytest.mark.gpu
def test_on_cuda_with_inductor_stops_resumes_and_exports(tmp_path, weights_file):
    """The same run on a CUDA GPU with torch.compile's inductor (``pytest -m gpu``; benchmarks/gpu_check.py)."""
    args = [f"backbone.weights={weights_file}", *GPU_OPTIONS, "trainer.accelerator=gpu"]
    _stops_resumes_and_exports(tmp_path, args, ("onnx", "pt2"), in_process=False)


def test_device_options_keep_the_plain_module(weights_file):
    """channels_last and compile change neither names nor values; a copy compiles its own forward; a backend
    torch does not know is refused in one line."""
    import copy

    from finetune.models.weights import resolve_weights
    from finetune.run.errors import FinetuneError
    from finetune.tasks.registry import get_task

    from ..helpers import resnet_cfg

    cfg, task = resnet_cfg(weights_file, "all"), get_task("classification")
    model = task.build_model(cfg, resolve_weights("resnet10t", weights_file), 3, 4)
    names = dict(model.state_dict())
    model.set_device_options(channels_last=True, compile_backend="eager")
    assert model.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(model.state_dict()) == list(names)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    expected = model._logits(x)
    assert torch.allclose(model(x), expected, atol=1e-5) and model._compiled is not None
    twin = copy.deepcopy(model)
    assert twin._compiled is None  # never the original's compiled forward (it would run the original's weights)
    with torch.no_grad():
        for param in twin.head.parameters():
            param.zero_()
    assert torch.equal(twin(x), torch.zeros_like(expected)) and not torch.equal(model(x), torch.zeros_like(expected))
    with pytest.raises(FinetuneError, match="trainer.compile_backend='nope' is not a torch.compile backend"):
        model.set_device_options(channels_last=False, compile_backend="nope")
