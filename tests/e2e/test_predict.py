"""Predictions from exports: a known photo through the untouched ImageNet head, output files, inputs."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from finetune.commands import predict as pr
from finetune.commands.train import train
from finetune.data.images import read_image
from finetune.export.bundle import ModelBundle, training_summary
from finetune.export.loading import find_images, load_export, preprocess
from finetune.export.predict_io import resolve_export
from finetune.export.writing import export
from finetune.models.saved_runs import load_run
from finetune.models.weights import create_model, resolve_weights
from finetune.run.errors import FinetuneError
from finetune.tasks.classification import predict_labels as cp
from finetune.tasks.registry import TASKS, get_task
from finetune.training.train import model_preprocessing

from ..conftest import compose_config
from ..helpers import cli_in_process

CATS = {f"class_{i}" for i in range(281, 286)}  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def imagenet_exports(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (pip ImageNet weights) with its pretrained 1000-class classifier as the
    head, exported as head.safetensors and model.onnx."""
    cfg = compose_config("backbone=efficientnet_lite0", "backbone.freeze=all", "dataset.image_size=224")
    record = resolve_weights(cfg.backbone.name)
    task = get_task("classification")
    model = task.build_model(cfg, record, 3, 1000)
    model.head[-1].load_state_dict(create_model(record).get_classifier().state_dict())
    bundle = ModelBundle(
        model.eval(),
        cfg,
        [f"class_{i}" for i in range(1000)],
        task,
        model_preprocessing(model.backbone, 224, 3),
        3,
        record.to_dict(),
    )
    out = tmp_path_factory.mktemp("exports")
    for fmt in ("head", "onnx"):
        export(bundle, fmt, out, [skimage.data.chelsea(), skimage.data.coffee()])
    return out


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.png")
    Image.fromarray(skimage.data.camera()).save(folder / "camera.png")  # grayscale
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_predicts_a_cat_for_chelsea_into_the_working_directory(imagenet_exports, images, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    done = cli_in_process("predict", f"export={imagenet_exports}", f"inputs={images / 'chelsea.png'}", cwd=work)
    assert done.returncode == 0, done.stderr
    [row] = read_csv(work / "predictions.csv")
    assert row["prediction"] in CATS and row["label_1"] == row["prediction"]
    assert sorted(p.name for p in images.iterdir()) == ["camera.png", "chelsea.png"]


def test_csv_columns_and_probabilities(imagenet_exports, images, tmp_path):
    out = tmp_path / "p.csv"
    assert pr.main([f"export={imagenet_exports / 'head.safetensors'}", f"inputs={images}", "topk=3", f"out={out}"]) == 0
    rows = read_csv(out)
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == [
            "path",
            "prediction",
            "label_1",
            "prob_1",
            "label_2",
            "prob_2",
            "label_3",
            "prob_3",
        ]
    assert [Path(r["path"]).name for r in rows] == ["camera.png", "chelsea.png"]
    for row in rows:
        probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_onnx_and_head_exports_predict_alike(imagenet_exports, images):
    paths = find_images(str(images))
    head = cp.predict(load_export(imagenet_exports / "head.safetensors", tasks=TASKS), paths)
    onnx = cp.predict(load_export(imagenet_exports / "model.onnx", tasks=TASKS), paths)
    assert [r.top[0][0] for r in onnx] == [r.top[0][0] for r in head]
    assert np.allclose([p for r in onnx for _, p in r.top], [p for r in head for _, p in r.top], atol=1e-4)


def test_json_output(imagenet_exports, images, tmp_path):
    out = tmp_path / "p.json"
    assert pr.main([f"export={imagenet_exports / 'model.onnx'}", f"inputs={images}/*.png", "topk=2", f"out={out}"]) == 0
    data = json.loads(out.read_text())
    assert data["multilabel"] is False and len(data["predictions"]) == 2
    chelsea = next(p for p in data["predictions"] if p["path"].endswith("chelsea.png"))
    assert chelsea["prediction"] in CATS and [t["label"] for t in chelsea["top"]][0] == chelsea["prediction"]
    assert len(chelsea["top"]) == 2


def test_refuses_to_overwrite_predictions(imagenet_exports, images, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    out.write_text("keep me")
    args = [f"export={imagenet_exports}", f"inputs={images}", f"out={out}"]
    assert pr.main(args) == 2
    assert "overwrite=true" in capsys.readouterr().err and out.read_text() == "keep me"
    assert pr.main([*args, "overwrite=true"]) == 0 and len(read_csv(out)) == 2


def test_multilabel_uses_a_sigmoid_per_class():
    logits = np.array([[2.0, -1.0, 0.5]])
    probs = cp.probabilities(logits, multilabel=True)
    assert np.allclose(probs, 1 / (1 + np.exp(-logits)))
    [row] = cp.decide([Path("a.png")], probs, ["x", "y", "z"], 2, multilabel=True)
    assert row.prediction == "x;z" and [label for label, _ in row.top] == ["x", "z"]
    assert np.allclose(cp.probabilities(logits, multilabel=False).sum(), 1.0)


def test_find_images_from_files_folders_and_globs(images):
    chelsea = images / "chelsea.png"
    assert find_images(f"{chelsea},{images}") == [chelsea, images / "camera.png"]
    assert find_images(f"{images}/ch*.png") == [chelsea]
    with pytest.raises(FinetuneError, match="no images found"):
        find_images(str(images / "*.jpg"))


def test_bad_arguments_fail_clearly(imagenet_exports, images, tmp_path, capsys):
    assert pr.main([f"inputs={images}"]) == 2
    assert "missing export=" in capsys.readouterr().err
    assert pr.main([f"export={tmp_path}", f"inputs={images}", f"out={tmp_path / 'p.csv'}"]) == 2
    assert "no export in" in capsys.readouterr().err
    assert pr.main([f"export={imagenet_exports}", f"inputs={images}", "out=p.txt"]) == 2
    assert ".csv or .json" in capsys.readouterr().err


def test_binary_and_multilabel_decisions_use_the_runs_threshold():
    probs = np.array([[0.3, 0.7], [0.9, 0.1]])
    argmax = cp.decide(["a", "b"], probs, ["normal", "pneumonia"], 2, False)
    tuned = cp.decide(["a", "b"], probs, ["normal", "pneumonia"], 2, False, threshold=0.8)
    assert [r.prediction for r in argmax] == ["pneumonia", "normal"]
    assert [r.prediction for r in tuned] == ["normal", "normal"]  # 0.7 < the tuned 0.8
    labels = cp.decide(["a"], np.array([[0.6, 0.6]]), ["x", "y"], 2, True, threshold=[0.5, 0.7])
    assert labels[0].prediction == "x"


def test_exports_record_the_threshold_the_run_was_tested_with(tmp_path):
    cfg = compose_config()
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"acc": 0.9, "threshold": 0.42}}))
    assert training_summary(cfg, tmp_path, get_task("classification"))["threshold"] == 0.42
    (tmp_path / "metrics.json").write_text(
        json.dumps({"test": {"acc": 0.9}, "test_per_class": {"threshold": {"x": 0.3, "y": 0.6}}})
    )
    assert training_summary(cfg, tmp_path, get_task("classification"))["threshold"] == [0.3, 0.6]


# --- DICOM: predict reads .dcm with the window the run was trained with ---------------------------

WINDOW = (40.0, 400.0)  # CT soft tissue: differs from the MR file's own window (600, 1600)


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory) -> tuple[Path, Path]:
    """(DICOM class folders, run directory) of a tiny dataset=dicom_folder run with dataset.window set:
    pydicom's bundled CT and MR test files, resnet10t from random weights, one linear-probe epoch."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    base = tmp_path_factory.mktemp("dicom")
    root = base / "data"
    for name, cls in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr")):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            (root / cls / f"{cls}{i}.dcm").write_bytes(Path(get_testdata_file(name)).read_bytes())
    cfg = compose_config(
        "dataset=dicom_folder",
        f"dataset.root={root}",
        f"dataset.window=[{WINDOW[0]},{WINDOW[1]}]",
        "dataset.num_workers=0",
        "backbone=resnet18",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "schedule=linear_probe",
        "schedule.epochs=1",
        "schedule.batch_size=4",
        "dataset.image_size=32",
        "trainer.progress_bar=false",
    )
    run_dir = base / "run"
    train(cfg, run_dir)
    return root, run_dir


def test_dicom_predict_uses_the_exported_window(dicom_run, tmp_path):
    root, run_dir = dicom_run
    files = find_images(str(root))
    assert len(files) == 10 and {p.suffix for p in files} == {".dcm"}
    exported = load_export(resolve_export(run_dir), tasks=TASKS)  # model.safetensors: random init exports every tensor
    recorded = json.loads((run_dir / "data.json").read_text())["task_record"]["window"]
    assert exported.task_record["window"] == recorded == list(WINDOW)

    # predict reads each file exactly as training did (the run's data module, its window)
    run = load_run(run_dir, get_task("classification"))
    data = get_task("classification").data_module(run.cfg)
    split = data.splits["train"]
    for i in range(len(split.images)):
        np.testing.assert_array_equal(exported.read(split.images[i]), split.image(i, 1))

    out = tmp_path / "p.json"
    assert pr.main([f"export={run_dir}", f"inputs={root}", "topk=2", f"out={out}"]) == 0
    rows = {
        Path(r["path"]): {t["label"]: t["probability"] for t in r["top"]}
        for r in json.loads(out.read_text())["predictions"]
    }
    predicted = np.array([[rows[p][name] for name in run.class_names] for p in files])
    windowed = [read_image(p, 1, WINDOW) for p in files]
    with torch.no_grad():
        expected = run.model.eval()(torch.from_numpy(preprocess(windowed, run.preprocessing))).numpy()
    np.testing.assert_allclose(exported.logits(windowed), expected, atol=1e-5)  # the run's own model outputs
    np.testing.assert_allclose(predicted, cp.probabilities(expected, False), atol=1e-6)

    # the window is applied: without it (each file's own VOI) the inputs and the logits differ
    own = replace(exported, metadata=exported.metadata | {"task_record": exported.task_record | {"window": None}})
    assert own.task_record["window"] is None
    assert not np.array_equal(own.read(files[-1]), exported.read(files[-1]))  # an MR file
    assert np.abs(own.logits([own.read(p) for p in files]) - expected).max() > 1e-3
