"""``trainer=fsdp``: refused on a CPU in one line before anything heavy (Lightning's FSDPStrategy needs CUDA), its
pieces checked on the CPU (units per block, the wrapper's parameter names, the plain model taking a phase's
weights), and on a CUDA GPU (``pytest -m gpu``) a one-device run of two phases stopped, resumed and exported."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ..helpers import assert_refused, cli_in_process, resnet_cfg, run_finetune, stopped_in_phase_2

TINY_RUN = [
    "backbone.name=resnet10t",
    "dataset.image_size=32",
    "schedule=gradual",
    "schedule.phases=[{name: probe, epochs: 1, freeze: all},{name: top, epochs: 1, freeze: -1}]",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
]


@pytest.mark.parametrize(
    ("override", "env", "why"),
    [
        ("trainer.accelerator=cpu", {}, "trainer.accelerator=cpu"),
        ("trainer.accelerator=auto", {"CUDA_VISIBLE_DEVICES": ""}, "no NVIDIA GPU is visible"),
    ],
)
def test_fsdp_without_a_gpu_is_refused_in_one_line(tmp_path, monkeypatch, override, env, why):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = run_finetune("trainer=fsdp", override, "backbone.pretrained=false", *TINY_RUN, cwd=tmp_path, timeout=120)
    line = assert_refused(out, "trainer=fsdp needs CUDA GPUs")
    assert why in line and "on CPU use trainer=ddp" in line
    assert not any(tmp_path.iterdir())  # refused before a run directory was made


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.strategy=fsdp_cpu_offload", "trainer.accelerator=cpu"],
            "trainer.strategy='fsdp_cpu_offload' is not known: choose one of auto, ddp, fsdp",
        ),
        (["trainer.strategy=ddp_spawn"], "trainer.strategy='ddp_spawn' is not known: choose one of auto, ddp, fsdp"),
        (
            ["trainer=fsdp", "trainer.gradient_clip_val=1.0"],
            "trainer.gradient_clip_val=1 with trainer=fsdp: Lightning cannot clip sharded gradients by norm",
        ),
        (["trainer=fsdp", "ema.decay=0.99"], "ema.decay=0.99 with trainer=fsdp: Lightning cannot average sharded"),
        (
            ["trainer=fsdp", "checkpoints.keep=none"],
            "checkpoints.keep=none with trainer=fsdp: sharded phases hand their weights on through last.ckpt",
        ),
    ],
    ids=["fsdp_cpu_offload", "ddp_spawn", "clip", "ema", "keep_none"],
)
def test_what_finetune_does_not_shard_is_refused_in_one_line(tmp_path, overrides, message):
    """Strategies of Lightning's other than ours, and the options Lightning's FSDP breaks on mid-run: one line
    before a run directory is made (the FSDP ones on any machine: the config is wrong, not the device)."""
    out = cli_in_process(*overrides, "backbone.pretrained=false", *TINY_RUN, cwd=tmp_path)
    assert_refused(out, message)
    assert not any(tmp_path.iterdir())


def test_fsdp_units_names_and_phase_weights(tmp_path, weights_file):
    """A unit per residual block; FSDP's wrapper names map to the same stages; ``take_phase_weights`` loads the
    model's entries of a checkpoint (``model.`` prefix) into the plain model."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy
    from timm.models.resnet import BasicBlock

    from finetune.models.weights import resolve_weights
    from finetune.run.errors import FinetuneError
    from finetune.tasks.registry import get_task
    from finetune.training.sharding import block_classes, fsdp_strategy, mixed_precision, take_phase_weights

    cfg = resnet_cfg(weights_file, 0)
    model = get_task("classification").build_model(cfg, resolve_weights("resnet10t", weights_file), 3, 4)
    with pytest.raises(FinetuneError) as refused:  # the config checks' words (a run that skipped them: plan=)
        fsdp_strategy(model, "bf16-mixed")
    assert str(refused.value) == "trainer=fsdp needs CUDA GPUs (no NVIDIA GPU is visible here); on CPU use trainer=ddp"
    # bf16-mixed: Lightning's FSDP plugin alone would gather, reduce and keep buffers in bf16; the strategy's setting
    # is the one FSDP gets (``mixed_precision_config``)
    plugin = FSDPPrecision("bf16-mixed")
    assert (plugin.mixed_precision_config.reduce_dtype, plugin.mixed_precision_config.buffer_dtype) == (
        torch.bfloat16,
        torch.bfloat16,
    )
    config = FSDPStrategy(mixed_precision=mixed_precision("bf16-mixed"), precision_plugin=plugin).mixed_precision_config
    assert (config.param_dtype, config.reduce_dtype, config.buffer_dtype) == (torch.bfloat16, *[torch.float32] * 2)
    assert mixed_precision("32-true") is None  # the plugin's: float32 throughout
    assert block_classes(model) == {BasicBlock}
    assert model.stage_of("backbone.layer4.0._fsdp_wrapped_module.conv1.weight") == model.stage_of(
        "backbone.layer4.0.conv1.weight"
    )
    state = model.state_dict()
    changed = {f"model.{k}": torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": changed, "finetune_phase": 0}, tmp_path / "checkpoints" / "last.ckpt")
    take_phase_weights(model, tmp_path)
    assert all(torch.all(p == 0.5) for p in model.parameters())


def frozen_buffer_hashes(state: dict[str, torch.Tensor] | None, weights_file) -> dict[str, str]:
    """sha256 of the buffers (BatchNorm statistics) of the stages TINY_RUN's phase 2 freezes (freeze=-1: stem,
    layer1..3) in a checkpoint's ``state`` (``model.`` keys), or in a model built from ``weights_file`` (None)."""
    from finetune.models.freezing import frozen_stages
    from finetune.models.weights import resolve_weights
    from finetune.tasks.registry import get_task

    model = get_task("classification").build_model(
        resnet_cfg(weights_file, 0), resolve_weights("resnet10t", weights_file), 3, 4
    )
    frozen = frozen_stages(model.stage_map, -1)
    names = [name for name, _ in model.named_buffers() if model.stage_of(name) in frozen]
    assert len(names) > 10, names  # the stem's and three stages' BatchNorm statistics
    values = {n: state[f"model.{n}"] for n in names} if state else dict(model.named_buffers())
    return {n: hashlib.sha256(values[n].detach().cpu().contiguous().numpy().tobytes()).hexdigest() for n in names}


@pytest.mark.gpu
def test_fsdp_one_gpu_two_phases_stop_resume_and_export(tmp_path, weights_file):
    """Also: the BatchNorm statistics of frozen stages are bit-identical (FSDP keeps buffers in float32 under
    bf16-mixed: ``sharding.mixed_precision``), in the stopped run's checkpoint and in the finished run's."""
    run = stopped_in_phase_2(
        "trainer=fsdp", "trainer.devices=1", f"backbone.weights={weights_file}", *TINY_RUN, cwd=tmp_path
    )
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_fsdp_wrapped_module" in k or "_flat_param" in k]  # a full, plain state dict
    pretrained = frozen_buffer_hashes(None, weights_file)
    assert frozen_buffer_hashes(state, weights_file) == pretrained
    resumed = run_finetune("resume=run", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p["epochs_run"] for p in json.loads((run / "metrics.json").read_text())["phases"]] == [1, 1]
    for kept in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(kept, map_location="cpu", weights_only=True)["state_dict"]
        assert frozen_buffer_hashes(state, weights_file) == pretrained, kept.name
    exported = run_finetune("export", "run=run", "format=onnx", cwd=tmp_path, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]


def test_memory_table_fsdp_shards_what_ddp_replicates():
    """benchmarks/sharding_memory.py's arithmetic: 1 Mi float32 parameters (4 MiB), all trained, 64 Ki per unit."""
    from benchmarks.sharding_memory import per_rank

    counts = {"params": 2**20, "trainable": 2**20, "unit_params": 2**16, "unit_trainable": 2**16}
    one, four = per_rank(counts, 1), per_rank(counts, 4)
    assert one["ddp"]["total"] == one["fsdp"]["total"] == 4 + 4 + 8  # weights, gradients, AdamW's two moments
    assert four["ddp"]["total"] == 4 + 8 + 8  # + DDP's gradient buckets
    assert four["fsdp"]["total"] == 1 + 1 + 2 + 2 * (0.25 + 0.25)  # a quarter each + two gathered units
