"""``benchmarks/peers/`` end to end on a tiny subset, so the harness cannot rot (not timed).

Stubbed here only, never in the benchmark: every runner uses this python instead of its peer's
venv, and the fastai peer runs the plain-loop runner. finetune and the plain loop are real; the HF
Trainer is left out (each runner is a fresh process: imports dominate the test's time, so every runner
process here proves something no other one does).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.common import CAMVID, HYMENOPTERA
from benchmarks.peers import budget, running


def tiny_folder(root: Path, per_class: int = 3) -> Path:
    """train/ and val/ with a few hymenoptera images per class (symlinks)."""
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for image in sorted((HYMENOPTERA / split / cls).iterdir())[:per_class]:
                (root / split / cls / image.name).symlink_to(image)
    return root


def test_peers_harness_writes_json_and_table(tmp_path, monkeypatch):
    if not HYMENOPTERA.is_dir():
        pytest.skip("hymenoptera not present")
    tiny = peers.Dataset(
        "tiny", "folder", tiny_folder(tmp_path / "data"), 32, 2, False, ("+classification=hymenoptera",), (0,)
    )
    monkeypatch.setitem(peers.DATASETS, "tiny", tiny)
    monkeypatch.setattr(running, "peer_python", lambda name: Path(sys.executable))
    monkeypatch.setattr(running, "freeze", lambda name: [])
    monkeypatch.setitem(peers.PEERS, "fastai", replace(peers.PEERS["fastai"], script="run_plain.py"))
    tools = ["finetune", "fastai"]  # fastai runs the plain loop's script here: a peer runner, in this venv
    out = tmp_path / "results"
    settings = peers.Settings(batch_size=4, epochs=2, budget_s=0.5)

    # Two invocations, as a long comparison is often run: the budget one sizes its schedule from the runs the
    # first wrote. Only the peer runs the budget (finetune's budget run would be its epoch run, one epoch
    # shorter: its fitted spec is checked below without a third runner process).
    peers.main(["tiny"], [0], tools, settings, out, compare=("epochs",))
    peers.main(["tiny"], [0], ["fastai"], settings, out, compare=("budget",))

    payload = json.loads((out / "peers.json").read_text())
    runs = payload["runs"]
    assert [(r["tool"], r.get("budget_s"), r.get("error")) for r in runs] == [
        ("finetune", None, None),
        ("fastai", None, None),
        ("fastai", 0.5, None),
    ]
    for run in runs:
        assert 0 <= run["val"]["acc"] <= 1 and run["val"]["auc"] is not None and run["test"] is None
        assert run["epochs_run"] == run["epochs"] and run["wall_s"] > 0 and run["threads"]["torch"] == 1
        assert run["weights_sha256"] == payload["weights"]["sha256"]
    assert [r["epochs"] for r in runs] == [2, 2, 1]  # no tool fits 2 epochs in half a second
    run_spec = peers.spec(tiny, settings, 0, payload["weights"])
    fitted = peers.budget_spec(tiny, settings, 0, run_spec, "finetune", runs)
    assert (
        fitted["epochs"] == 1
        and fitted["finetune_overrides"][-1] == "schedule.phases=[{name: all, epochs: 1, freeze: all}]"
    )
    table = (out / "README.md").read_text()
    assert "| " + " | ".join(peers.columns("acc")) + " |" in table
    assert all(f"| tiny | 32 | `--epochs 2` | {tool} | 0 | 2 |" in table for tool in tools)
    assert "| " + " | ".join(peers.columns("acc", budget=True)) + " |" in table
    assert "| tiny | 32 | `--epochs 2` | 0 | fastai | 0 | 1 of 2 |" in table


def tiny_camvid(root: Path, lines: int = 1) -> Path:
    """CamVid's layout with the first few lines of each list file (folders symlinked)."""
    root.mkdir()
    for split in ("train", "val", "test"):
        for folder in (split, f"{split}annot"):
            (root / folder).symlink_to(CAMVID / folder)
        (root / f"{split}.txt").write_text("".join((CAMVID / f"{split}.txt").read_text().splitlines(True)[:lines]))
    return root


def test_peers_harness_segmentation(tmp_path, monkeypatch):
    if not CAMVID.is_dir():
        pytest.skip("camvid_subset not present")
    tiny = replace(
        peers.DATASETS["camvid"],
        name="tinyseg",
        path=tiny_camvid(tmp_path / "data"),
        # one image a split: 8 crops fill the batch; windows side by side: 48 a full image, not 154
        recipe=(
            "+segmentation=camvid",
            "dataset.crop_size=64",
            "dataset.samples_per_image=8",
            "dataset.tile_overlap=0",
        ),
    )
    monkeypatch.setitem(peers.DATASETS, "tinyseg", tiny)
    monkeypatch.setattr(running, "peer_python", lambda name: Path(sys.executable))
    monkeypatch.setattr(running, "freeze", lambda name: [])
    out = tmp_path / "results"

    peers.main(["tinyseg"], [0], ["finetune", "fastai", "smp"], peers.Settings(epochs=1), out, compare=("epochs",))

    runs = json.loads((out / "peers.json").read_text())["runs"]
    assert [(r["tool"], r.get("error")) for r in runs] == [("finetune", None), ("smp", None)]  # fastai: no segmentation
    for run in runs:
        assert run["image_size"] == 64 and run["batch_size"] == 8 and run["epochs_run"] == 1
        assert all(0 <= run[split][k] <= 1 for split in ("val", "test") for k in ("miou", "mdice", "pixel_acc"))
        assert run["curve"][0]["val_miou"] == run["val"]["miou"]
    table = (out / "README.md").read_text()
    assert "| " + " | ".join(peers.columns("miou")) + " |" in table
    assert all(f"| tinyseg | 64 | `--epochs 1` | {tool} | 0 | 1 |" in table for tool in ("finetune", "smp"))


def test_runs_merge_across_invocations(tmp_path):
    """Two invocations side by side keep each other's runs; a rerun replaces the run with its key."""
    path = tmp_path / "peers.json"
    header = {"benchmark": "peers", "settings": {}, "peers": {"plain": {}}}
    run = {"dataset": "a", "image_size": 32, "epochs": 1, "seed": 0, "tool": "plain", "val": {"acc": 0.5}}
    peers.save(path, header, run)
    peers.save(path, {**header, "peers": {"smp": {}}}, {**run, "dataset": "b"})
    peers.save(path, header, {**run, "val": {"acc": 0.75}})
    payload = json.loads(path.read_text())
    assert sorted((r["dataset"], r["val"]["acc"]) for r in payload["runs"]) == [("a", 0.75), ("b", 0.5)]
    assert set(payload["peers"]) == {"plain", "smp"}


def reference(tool: str, epochs: int, setup_s: float, pace_s: float, **extra: object) -> dict:
    """An epoch-comparison run whose curve advances ``pace_s`` per epoch after ``setup_s``."""
    curve = [{"epoch": e, "t_s": setup_s + pace_s * e, "val_acc": 0.5} for e in range(1, epochs + 1)]
    return {
        "dataset": "bloodmnist",
        "image_size": 64,
        "epochs": epochs,
        "seed": 0,
        "tool": tool,
        "curve": curve,
        "wall_s": curve[-1]["t_s"] + 5,
        **extra,
    }


def test_fit_epochs_from_pace():
    """wall(E) = wall_ref + pace (E - E_ref): 10 s setup, 20 s per epoch, 5 s of testing."""
    run = reference("plain", 7, 10, 20)  # wall 155 s
    assert peers.fit_epochs([run], 155) == 7
    assert peers.fit_epochs([run], 1000) == 7  # never more than the schedule
    assert peers.fit_epochs([run], 94.9) == 3 and peers.fit_epochs([run], 95) == 4
    assert peers.fit_epochs([run], 1) == 1 and peers.fit_epochs([run], 1, minimum=2) == 2
    slower = reference("plain", 7, 10, 40, seed=1)  # wall 295 s; over both runs: wall 225 s, pace 30 s
    assert peers.fit_epochs([run, slower], 225) == 7 and peers.fit_epochs([run, slower], 224) == 6


def test_budget_spec_shortens_what_each_tool_runs():
    """Other tools: their epochs; finetune: the recipe's phases that follow schedule.epochs (blood: 1 head
    epoch + schedule.epochs), never below one epoch of each; no reference run: a LookupError naming the fix."""
    dataset, settings = peers.DATASETS["bloodmnist"], peers.Settings(budget_s=95)
    run_spec = peers.spec(dataset, settings, 0, {"file": "w.safetensors", "preprocessing": {}})
    assert run_spec["epochs"] == 7
    runs = [reference("plain", 7, 10, 20), reference("finetune", 7, 10, 20)]
    plain = peers.budget_spec(dataset, settings, 0, run_spec, "plain", runs)
    assert (plain["epochs"], plain["budget_s"], plain["reference_epochs"]) == (4, 95, 7)
    assert plain["finetune_overrides"] == run_spec["finetune_overrides"]
    finetune = peers.budget_spec(dataset, settings, 0, run_spec, "finetune", runs)
    assert finetune["epochs"] == 4 and finetune["finetune_overrides"][-1] == "schedule.epochs=3"
    short = peers.budget_spec(dataset, replace(settings, budget_s=1), 0, run_spec, "finetune", runs)
    assert short["epochs"] == 2 and short["finetune_overrides"][-1] == "schedule.epochs=1"
    with pytest.raises(LookupError, match="--compare epochs"):
        peers.budget_spec(dataset, settings, 0, run_spec, "fastai", runs)


def test_budget_run_without_reference_is_recorded_as_error(tmp_path):
    """The budget comparison of a tool with no epoch-comparison run records why (and the fix), runs nothing, and
    merges like any run: its key carries the budget and the schedule it would have been fitted to."""
    dataset, settings = peers.DATASETS["bloodmnist"], peers.Settings(budget_s=95)
    payload = {"weights": {"file": "w.safetensors", "preprocessing": {}}, "runs": []}
    run = peers.measure(dataset, "budget", 0, "plain", settings, payload)
    assert "--compare epochs" in run["error"] and "process_s" not in run
    assert peers.key(run) == ("bloodmnist", 64, 7, 95, 0, "plain")
    saved = peers.save(tmp_path / "peers.json", {"settings": {}, "peers": {}}, run)
    gaps = peers.missing(saved["runs"])
    assert {
        "bloodmnist (64 px, finetune's recipe schedule): no tool",
        "bloodmnist (64 px, a 300 s budget): no tool",
    } <= set(gaps)


def test_recipe_epochs_counts_the_phases_a_budget_can_shorten():
    """blood: 1 head epoch + schedule.epochs; phases with fixed counts only: an error naming the way out."""
    assert budget._recipe_epochs(["+medical=blood", "schedule.epochs=6"]) == (1, 1)
    with pytest.raises(ValueError, match="--epochs N"):
        budget._recipe_epochs(["+medical=blood", "schedule.phases=[{name: all, epochs: 3, freeze: 0}]"])
