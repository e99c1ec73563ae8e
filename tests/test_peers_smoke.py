"""``benchmarks/peers.py`` end to end on a tiny subset, so the harness cannot rot (not timed).

Stubbed here only, never in the benchmark: every runner uses this python instead of its peer's
venv, and the fastai peer runs the plain-loop runner. finetune and the plain loop are real; the HF
Trainer is left out (each runner is a fresh process: imports dominate the test's time).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.common import HYMENOPTERA


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
    tiny = peers.Dataset("tiny", "folder", tiny_folder(tmp_path / "data"), 32, 2, False,
                         ("+classification=hymenoptera",), (0,))
    monkeypatch.setitem(peers.DATASETS, "tiny", tiny)
    monkeypatch.setattr(peers, "peer_python", lambda name: Path(sys.executable))
    monkeypatch.setattr(peers, "freeze", lambda name: [])
    monkeypatch.setitem(peers.PEERS, "fastai", replace(peers.PEERS["fastai"], script="run_plain.py"))
    tools = ["finetune", "fastai", "plain"]
    out = tmp_path / "results"

    peers.main(["tiny"], [0], tools, peers.Settings(batch_size=4, epochs=1), out)

    payload = json.loads((out / "peers.json").read_text())
    runs = payload["runs"]
    assert [r.get("error") for r in runs] == [None] * len(tools)
    assert [r["tool"] for r in runs] == tools
    for run in runs:
        assert 0 <= run["val"]["acc"] <= 1 and run["val"]["auc"] is not None and run["test"] is None
        assert run["epochs_run"] == 1 and run["wall_s"] > 0 and run["threads"]["torch"] == 1
        assert run["weights_sha256"] == payload["weights"]["sha256"]
    table = (out / "README.md").read_text()
    assert "| " + " | ".join(peers.COLUMNS) + " |" in table
    assert all(f"| tiny | 32 | `--epochs 1` | {tool} | 0 | 1 |" in table for tool in tools)
