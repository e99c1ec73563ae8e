"""benchmarks/medmnist_plus.py's queue: every job's source is queued, runs are reproduced as measured (the
pneumonia runs with the layer decay they had), and the README tables render from the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import medmnist_plus as bench


def test_job_names_are_unique_and_every_source_is_a_queued_job() -> None:
    jobs = bench.queue()
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    assert {j.source for j in jobs if j.source} <= set(names)
    assert set(bench.BEFORE_FIX) <= set(names)


@pytest.mark.parametrize(
    ("name", "layer_decay"),
    [("pneumonia_s1", "0.8"), ("pneumonia_s2_ema", "0.8"), ("pneumonia_s2_no_layer_decay", "1.0"), ("blood_s2", None)],
)
def test_a_training_job_is_reproduced_as_measured(name, layer_decay, tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(bench, "_finetune", lambda args, cwd, log: calls.append(args))
    bench._train(next(j for j in bench.queue() if j.name == name), tmp_path)
    decays = [a.split("=")[1] for a in calls[0] if a.startswith("schedule.phases.1.layer_decay=")]
    assert decays == ([layer_decay] if layer_decay else [])
    assert f"hydra.run.dir={tmp_path / name}" in calls[0]


def test_the_readme_tables_render_from_the_committed_results() -> None:
    result = json.loads((Path(bench.RESULTS) / "medmnist_plus.json").read_text())
    rows = {line.split(" | ")[0]: line for line in bench.markdown(result).splitlines() if line.startswith("| ")}
    names = [name for name in rows if "MNIST" in name]
    assert [n.split(" (")[0].split(",")[0] for n in names] == ["| PneumoniaMNIST"] * 2 + [
        "| BreastMNIST",
        "| BloodMNIST",
    ]
    assert "the recipe (layer decay 1.0)" in names[0] and "as first measured (layer decay 0.8)" in names[1]
    for name in names[:3]:  # ACC@0.5 and AUC over the three seeds
        assert all(cell.endswith("(3 seeds)") for cell in rows[name].split(" | ")[1:3]), rows[name]
