"""Predictions from exports: a known photo through the untouched ImageNet head, output files, inputs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from finetune.export import formats as ex
from finetune.export import predict as pr
from finetune.errors import FinetuneError
from finetune.engine.train import model_preprocessing
from finetune.models.factory import build_model
from finetune.models.weights import create_model, resolve_weights

from .conftest import compose_config

CATS = {f"class_{i}" for i in range(281, 286)}  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def imagenet_exports(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (pip ImageNet weights) with its pretrained 1000-class classifier as the
    head, exported as head.safetensors and model.onnx."""
    cfg = compose_config("backbone=efficientnet_lite0", "backbone.freeze=all", "dataset.image_size=224")
    record = resolve_weights(cfg.backbone.name)
    model = build_model(cfg, record, 3, 1000)
    model.head[-1].load_state_dict(create_model(record).get_classifier().state_dict())
    bundle = ex.ModelBundle(model.eval(), cfg, [f"class_{i}" for i in range(1000)], False,
                            model_preprocessing(model.backbone, 224, 3), 3, record.to_dict())
    out = tmp_path_factory.mktemp("exports")
    for fmt in ("head", "onnx"):
        ex.export(bundle, fmt, out, [skimage.data.chelsea(), skimage.data.coffee()])
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "finetune.export.predict", f"export={imagenet_exports}",
                           f"inputs={images / 'chelsea.png'}"], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [row] = read_csv(work / "predictions.csv")
    assert row["prediction"] in CATS and row["label_1"] == row["prediction"]
    assert sorted(p.name for p in images.iterdir()) == ["camera.png", "chelsea.png"]


def test_csv_columns_and_probabilities(imagenet_exports, images, tmp_path):
    out = tmp_path / "p.csv"
    assert pr.main([f"export={imagenet_exports / 'head.safetensors'}", f"inputs={images}", "topk=3",
                    f"out={out}"]) == 0
    rows = read_csv(out)
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == ["path", "prediction", "label_1", "prob_1", "label_2", "prob_2",
                                       "label_3", "prob_3"]
    assert [Path(r["path"]).name for r in rows] == ["camera.png", "chelsea.png"]
    for row in rows:
        probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_onnx_and_head_exports_predict_alike(imagenet_exports, images):
    paths = ex.find_images(str(images))
    head = pr.predict(ex.load_export(imagenet_exports / "head.safetensors"), paths)
    onnx = pr.predict(ex.load_export(imagenet_exports / "model.onnx"), paths)
    assert [r.top[0][0] for r in onnx] == [r.top[0][0] for r in head]
    assert np.allclose([p for r in onnx for _, p in r.top], [p for r in head for _, p in r.top], atol=1e-4)


def test_json_output(imagenet_exports, images, tmp_path):
    out = tmp_path / "p.json"
    assert pr.main([f"export={imagenet_exports / 'model.onnx'}", f"inputs={images}/*.png", "topk=2",
                    f"out={out}"]) == 0
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
    probs = pr.probabilities(logits, multilabel=True)
    assert np.allclose(probs, 1 / (1 + np.exp(-logits)))
    [row] = pr._predictions([Path("a.png")], probs, ["x", "y", "z"], 2, multilabel=True)
    assert row.prediction == "x;z" and [label for label, _ in row.top] == ["x", "z"]
    assert np.allclose(pr.probabilities(logits, multilabel=False).sum(), 1.0)


def test_find_images_from_files_folders_and_globs(images):
    chelsea = images / "chelsea.png"
    assert ex.find_images(f"{chelsea},{images}") == [chelsea, images / "camera.png"]
    assert ex.find_images(f"{images}/ch*.png") == [chelsea]
    with pytest.raises(FinetuneError, match="no images found"):
        ex.find_images(str(images / "*.jpg"))


def test_bad_arguments_fail_clearly(imagenet_exports, images, tmp_path, capsys):
    assert pr.main([f"inputs={images}"]) == 2
    assert "missing export=" in capsys.readouterr().err
    assert pr.main([f"export={tmp_path}", f"inputs={images}", f"out={tmp_path / 'p.csv'}"]) == 2
    assert "no export in" in capsys.readouterr().err
    assert pr.main([f"export={imagenet_exports}", f"inputs={images}", "out=p.txt"]) == 2
    assert ".csv or .json" in capsys.readouterr().err


def test_binary_and_multilabel_decisions_use_the_runs_threshold():
    _predictions = pr._predictions

    probs = np.array([[0.3, 0.7], [0.9, 0.1]])
    argmax = _predictions(["a", "b"], probs, ["normal", "pneumonia"], 2, False)
    tuned = _predictions(["a", "b"], probs, ["normal", "pneumonia"], 2, False, threshold=0.8)
    assert [r.prediction for r in argmax] == ["pneumonia", "normal"]
    assert [r.prediction for r in tuned] == ["normal", "normal"]  # 0.7 < the tuned 0.8
    labels = _predictions(["a"], np.array([[0.6, 0.6]]), ["x", "y"], 2, True, threshold=[0.5, 0.7])
    assert labels[0].prediction == "x"


def test_exports_record_the_threshold_the_run_was_tested_with(tmp_path):
    _training_summary = ex._training_summary

    from .conftest import compose_config

    cfg = compose_config()
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"acc": 0.9, "threshold": 0.42}}))
    assert _training_summary(cfg, tmp_path)["threshold"] == 0.42
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"test": {"acc": 0.9}, "test_per_class": {"threshold": {"x": 0.3, "y": 0.6}}}))
    assert _training_summary(cfg, tmp_path)["threshold"] == [0.3, 0.6]
