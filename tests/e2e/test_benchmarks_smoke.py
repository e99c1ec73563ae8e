"""Each benchmark's core function runs on a tiny setting and returns sane numbers (not timed)."""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy, frozen, memory, overhead, pipeline, run_all
from benchmarks.common import HYMENOPTERA


def test_overhead_ablation_runs_every_side():
    """Every side of the ablation builds its Trainer through make_trainer (make bench broke once when
    make_trainer passed the progress bar an argument the old-bar stand-in did not take)."""
    result = overhead.ablation("efficientnet_lite0", 32, "all", batch_size=2, steps=2, warmup=1, repeats=1)
    assert {"stack", "no_progress_bar", "progress_bar_every_step (before the fix)", "minimal"} <= set(result["sides"])
    assert all(side["step_ms"] > 0 for side in result["sides"].values())


def test_overhead_measure_returns_positive_step_times():
    row = overhead.measure("efficientnet_lite0", 32, "all", batch_size=2, steps=2, warmup=1, repeats=1)
    assert row["stack_step_ms"] > 0 and row["minimal_step_ms"] > 0
    assert 0 < row["ratio"] < 1000  # one noisy repetition: only sanity, not speed


def test_frozen_cache_and_curve():
    cache = frozen.cache_vs_live(32, repeats=1, steps=1, warmup=1, extract=False)
    assert cache["live_step_ms"] > 0 and cache["cached_step_ms"] > 0 and cache["epoch_speedup"] > 0
    curve = frozen.freeze_curve((32,), batch_size=2, steps=1, warmup=1, repeats=1)["curves"][0]
    assert curve["ratio_vs_freeze0"]["0"] == 1.0 and set(curve["step_ms"]) >= {"0", "all"}


def test_memory_child_counts_trainable_params():
    full = memory.child("efficientnet_lite0", 32, "0", 2, 2)
    probe = memory.child("efficientnet_lite0", 32, "all", 2, 1)
    lora = memory.child("efficientnet_lite0", 32, "lora", 2, 1)
    assert full["rss_peak_mb"] > 0 and full["rss_before_mb"] > 0 and full["step_ms"] > 0
    assert probe["trainable_params"] < lora["trainable_params"] < full["trainable_params"]
    assert lora["params"] > full["params"]  # the adapter's own tensors


def test_pipeline_and_model_throughput(tmp_path):
    if not HYMENOPTERA.is_dir():
        pytest.skip("hymenoptera not present")
    root = accuracy.subset(HYMENOPTERA, tmp_path / "tiny")  # 8 train images: one batch per epoch
    row = pipeline.measure(64, root, repeats=1, steps=1, warmup=1, model_batch=2, extra_workers=())
    assert row["images_per_s"]["model"] > 0 and row["ratio_pipeline_over_model"] > 0
    assert row["loader"]["num_workers"] == 2 and row["train_images"] == 8


@pytest.mark.slow
def test_run_all_quick_writes_json_and_table(tmp_path):
    if not HYMENOPTERA.is_dir():
        pytest.skip("hymenoptera not present")
    run_all.main(["accuracy", "gpu"], quick=True, out_dir=tmp_path)
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert result["rows"][0]["curve"] and 0 <= result["rows"][0]["test_acc"] <= 1
    assert "dataset.num_workers=0" in result["rows"][0]["overrides"]  # quick: 4 images a class, no workers
    assert "torch" in result["environment"]
    assert (tmp_path / "gpu.json").is_file()
    assert "Accuracy per minute" in (tmp_path / "README.md").read_text()


def test_table_renders_from_existing_results():
    assert run_all.table().startswith("# Benchmarks")
    assert accuracy.SCHEDULES
