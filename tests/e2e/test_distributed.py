"""Several processes on CPU (gloo): one run dir, identical ranks, same result as one process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from finetune.data.samplers import EpochShuffleSampler, ShardSampler
from finetune.training.sweep import write_summary

from ..helpers import SMALL_RESNET, cli_in_process, compose_config, one_torch_thread, run_cli, squares

# RANKS_IDENTICAL: under DDP every rank starts from rank 0's broadcast weights and buffers and applies
# the same all-reduced gradient with the same optimizer, so ranks hold bitwise-equal tensors and their
# float64 checksums (the same sums in the same order) are equal, not merely close.
TINY = [*SMALL_RESNET, "trainer.log_every_n_steps=1"]


def finetune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = run_cli(*args, cwd=cwd, timeout=900)
    if out.returncode != 0:  # the workers' tracebacks are in stderr; the stage tables fill stdout
        pytest.fail(
            f"exit {out.returncode}\n--- stderr ---\n{out.stderr[-6000:]}\n--- stdout ---\n{out.stdout[-1500:]}",
            pytrace=False,
        )
    return out


def test_worker_destroys_its_process_group_after_a_finished_run(tmp_path, monkeypatch):
    """A worker rank ends its process group itself once its run is done: left to interpreter exit, gloo's
    threads can abort the process (SIGABRT) after a successful run. A failed run leaves it alone."""
    import torch.distributed as dist

    from finetune.commands import train as train_command
    from finetune.commands import worker

    def train_in_a_group(cfg, run_dir, resume_from=None):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        if cfg.seed == 1:  # the stand-in run that fails
            raise RuntimeError("this rank's run failed")

    monkeypatch.setattr(train_command, "train", train_in_a_group)
    (tmp_path / "good.yaml").write_text(OmegaConf.to_yaml(compose_config("seed=0")))  # a worker reads a real config
    assert worker.main([f"run_dir={tmp_path / 'good'}", f"config={tmp_path / 'good.yaml'}"]) == 0
    assert not dist.is_initialized()
    (tmp_path / "bad.yaml").write_text(OmegaConf.to_yaml(compose_config("seed=1")))
    (tmp_path / "rendezvous").unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match="failed"):
        worker.main([f"run_dir={tmp_path / 'bad'}", f"config={tmp_path / 'bad.yaml'}"])
    assert dist.is_initialized()
    dist.destroy_process_group()


def test_rank_shards_rebuild_the_single_process_batches():
    single = list(EpochShuffleSampler(40, seed=3))
    shards = [list(EpochShuffleSampler(40, seed=3, rank=r, world_size=2)) for r in range(2)]
    per_rank_batch = 4
    for step in range(40 // 8):
        union = {i for shard in shards for i in shard[step * per_rank_batch : (step + 1) * per_rank_batch]}
        assert union == set(single[step * 8 : (step + 1) * 8])
    evaluation = [list(ShardSampler(41, r, 2)) for r in range(2)]
    assert sorted(evaluation[0] + evaluation[1]) == list(range(41))


@pytest.mark.slow
def test_ddp_multirun_one_dir_per_job_identical_ranks_across_an_unfreezing_phase(tmp_path):
    """A multirun of two-process runs: one dir per job, one summary. Each job's phases unfreeze a stage; with
    LoRA they change which adapter tensors train: DDP must follow as it does for stages, ranks stay identical.
    ``checkpoints.keep=none``: the ranks keep the best epoch in memory, nothing hands weights on through a file."""
    out = finetune(
        "-m",
        "trainer=ddp",
        *TINY,
        "trainer.limit_train_batches=4",
        "schedule=gradual",
        "schedule.phases.0.epochs=1",
        "schedule.epochs=1",
        "backbone.adapter=none,lora",
        "checkpoints.keep=none",  # each rank holds the best epoch in memory; no checkpoint is written
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    sweep = tmp_path / "sweep"
    assert not list(sweep.rglob("*.ckpt")) and all((sweep / job / "exports").is_dir() for job in ("0", "1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    summary = (sweep / "sweep_summary.md").read_text()
    assert "Swept keys: adapter = backbone.adapter." in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ") and " finished " in line]
    assert sorted(row.split(" | ")[3] for row in rows) == ["lora", "none"]  # rank|run|status|adapter
    assert write_summary(sweep)  # re-runnable
    assert (sweep / "sweep_summary.csv").read_text().count("\n") == 3
    for job in ("0", "1"):
        checksums = json.loads((sweep / job / "metrics.json").read_text())["ddp"]["param_checksums_per_rank"]
        assert set(checksums) == {"probe", "last_stage", "all"}, job
        for phase, ranks in checksums.items():
            assert len(ranks) == 2 and ranks[0] == ranks[1], (job, phase)  # bitwise: see RANKS_IDENTICAL
        assert checksums["probe"] != checksums["last_stage"], job  # the unfrozen stage did train
    assert out.stdout.count("test results") == 2  # rank 0 alone reports, once per job


# The one-vs-two-process comparison runs in float64, so its tolerance follows from these numbers.
EPS64 = torch.finfo(torch.float64).eps
LONGEST_SUM = 512 * 3 * 3  # terms of the longest dot product: resnet10t's last 3x3 conv over 512 channels
EPOCHS, BATCHES, LR, MOMENTUM = 2, 6, 1e-2, 0.9


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    """One process with batches of 8 ends where two processes with batches of 4 each end.

    float64 end to end (``trainer.precision=64-true``, live backbone: cached features are float32), so
    the runs differ only by the order of their sums. SGD, not AdamW: Adam divides by sqrt(v), which
    would hide a gradient off by a constant factor (e.g. summed instead of averaged over the ranks).
    """
    probe = [
        *TINY,
        "schedule=linear_probe",
        f"schedule.epochs={EPOCHS}",
        f"trainer.limit_train_batches={BATCHES}",
        "trainer.deterministic=true",
        "trainer.precision=64-true",
        "data.cache_features=false",
        "schedule.optimizer=sgd",
        f"schedule.lr={LR}",
        f"schedule.momentum={MOMENTUM}",
        "checkpoints.keep=both",
    ]
    with one_torch_thread():  # the one-process run in this process (an interpreter start less)
        one = cli_in_process(*probe, "schedule.batch_size=8", "hydra.run.dir=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    finetune(*probe, "trainer=ddp", "schedule.batch_size=4", "hydra.run.dir=two", cwd=tmp_path)
    heads = [
        torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in ("one", "two")
    ]
    keys = ("model.head.0.weight", "model.head.0.bias")
    assert all(head[key].dtype == torch.float64 for head in heads for key in keys)
    # Summing n terms in another order moves the result by at most n * eps * sum|terms| (Higham,
    # "Accuracy and Stability of Numerical Algorithms", ch. 4), so each step is off by at most
    # LONGEST_SUM * eps relative to the numbers it handles: the head (|W|) and its update (lr * |grad|,
    # with |grad| <~ 1: |p - y| <= 1 times pooled features of order 1 for this untrained backbone). The
    # errors add up over the steps, and momentum carries each step's for up to 1 / (1 - momentum) steps.
    steps, gain = EPOCHS * BATCHES, 1 / (1 - MOMENTUM)
    scale = max(heads[0][key].abs().max().item() for key in keys) + LR * gain
    tolerance = steps * gain * LONGEST_SUM * EPS64 * scale  # 1.9e-11; measured |delta| 7e-18
    # A real divergence is lr-sized: gradients summed, not averaged, over 2 ranks (for SGD: lr x 2) moved
    # the head by 7e-3.
    for key in keys:
        torch.testing.assert_close(heads[0][key], heads[1][key], atol=tolerance, rtol=0)
    # Accuracy is k / N: one different prediction changes it by 1/N, so it must be identical.
    accuracy = [json.loads((tmp_path / d / "metrics.json").read_text())["test"]["acc"] for d in ("one", "two")]
    assert accuracy[0] == accuracy[1]


@pytest.mark.slow
def test_two_process_segmentation_run_keeps_ranks_identical(tmp_path):
    squares(tmp_path / "data", n=10)
    finetune(
        "trainer=ddp",
        "task=segmentation",
        "dataset=seg_folder",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.mask_mode=binary",
        "dataset.crop_size=32",
        "dataset.num_workers=0",
        "head=unet",
        "head.decoder_channels=[16,16,16,16,16]",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "schedule.batch_size=2",
        "schedule.epochs=1",
        "trainer.progress_bar=false",
        "segmentation.overlays=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ranks = metrics["ddp"]["param_checksums_per_rank"]["finetune"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # bitwise: see RANKS_IDENTICAL
    assert 0 <= metrics["test"]["miou"] <= 1 and (tmp_path / "run" / "exports" / "model.safetensors").is_file()
