"""A third task added from outside finetune (tests/regression_task: image regression, the radius of a
drawn disc) trains, exports through the parity gate and predicts through ``finetune.load``, with its
folder, its config group file and one ``register_task`` call: no file of finetune names it."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import finetune
from finetune.commands import predict as predict_command
from finetune.export.loading import preprocess
from finetune.export.writing import export_run
from finetune.models.saved_runs import load_run
from finetune.resources import conf_dir
from finetune.run import schema
from finetune.tasks.registry import TASKS, register_task
from finetune.training.train import train

from ..regression_task import CONF, Regression

IMAGES, SIDE = 200, 64


def discs(root: Path, n: int = IMAGES, seed: int = 0) -> dict[str, float]:
    """``n`` noisy gray images with one bright disc each; ``values.csv`` holds each disc's radius (px)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    radii = {}
    for i in range(n):
        radius = rng.uniform(4, 24)
        cy, cx = rng.uniform(radius, SIDE - radius, size=2)
        image = rng.normal(40, 12, (SIDE, SIDE))
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += 160
        name = f"disc_{i:03d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("RGB").save(root / name)
        radii[name] = radius
    with open(root / "values.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "value"), *((name, f"{r:.4f}") for name, r in radii.items())])
    return radii


@pytest.fixture(scope="module")
def regression_task() -> Iterator[Regression]:
    """The task registered (its one line) for this module's tests, and unregistered after them: the task
    table and the config schema's would otherwise hold it for every later test of the session."""
    task = register_task(Regression())
    yield task
    del TASKS[task.name], schema.TASKS[task.name]


@pytest.fixture(scope="module")
def regression_run(regression_task, tmp_path_factory) -> tuple[Regression, Path]:
    """A run of the registered task trained by finetune's own ``train`` on its config group."""
    task = regression_task
    base = tmp_path_factory.mktemp("regression")
    discs(base / "discs")
    overrides = [
        f"hydra.searchpath=[file://{CONF}]",
        "task=regression",
        "dataset=values_csv",
        f"dataset.root={base / 'discs'}",
        "backbone=resnet18",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "schedule=linear_probe",
        "schedule.epochs=15",
        "schedule.batch_size=16",
        "trainer.progress_bar=false",
        "logger=csv",
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    train(task, cfg, base / "run")
    return task, base / "run"


@pytest.mark.slow
def test_a_third_task_trains_exports_and_predicts(regression_run, tmp_path, capsys):
    task, run_dir = regression_run
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert metrics["mae"] < 0.5 * metrics["mae_of_train_mean"], metrics  # clearly better than the train mean

    record = json.loads((run_dir / "data.json").read_text())
    assert record["task"] == "regression" and record["class_names"] == ["value"]
    assert set(record["task_record"]) == {"target", "target_mean", "target_std", "target_range"}

    results = export_run(run_dir, task, ["onnx", "timm"])  # through the parity gate (the run wrote safetensors)
    assert [r.format for r in results] == ["onnx", "timm"]
    loaded = load_run(run_dir, task)
    test = loaded_split(run_dir, "test")
    paths, truth = list(test), np.array(list(test.values()))
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    with torch.no_grad():
        standardised = loaded.model(torch.from_numpy(preprocess(images, loaded.preprocessing)))[:, 0].numpy()
    expected = standardised * record["task_record"]["target_std"] + record["task_record"]["target_mean"]
    train_mean = record["task_record"]["target_mean"]
    for name in ("model.safetensors", "model.onnx", "timm"):
        predicted = finetune.load(run_dir / "exports" / name).predict(paths).values
        np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-3 * truth.std())
        assert np.abs(predicted - truth).mean() < 0.5 * np.abs(train_mean - truth).mean()

    out = tmp_path / "values.csv"
    argv = [f"export={run_dir / 'exports' / 'model.onnx'}", f"inputs={paths[0].parent}", f"out={out}"]
    assert predict_command.main(argv) == 0, capsys.readouterr().err[-2000:]
    with open(out, newline="") as f:
        rows = {Path(row["path"]).name: float(row["value"]) for row in csv.DictReader(f)}
    assert len(rows) == IMAGES
    np.testing.assert_allclose([rows[p.name] for p in paths], expected, rtol=1e-4, atol=1e-3 * truth.std())


def loaded_split(run_dir: Path, split: str) -> dict[Path, float]:
    """{image: its radius} of one split of the run's data, as the task's data module split it."""
    task = Regression()
    data = task.data_module(load_run(run_dir, task).cfg)
    part = data.splits[split]
    return dict(zip(part.paths, part.values.tolist()))


def test_no_file_of_finetune_names_the_third_task():
    package = Path(finetune.__file__).parent
    sources = [*package.rglob("*.py"), *package.parent.joinpath("conf").rglob("*.yaml")]
    named = [p for p in sources if any(word in p.read_text() for word in ("regression_task", "values_csv"))]
    assert not named
