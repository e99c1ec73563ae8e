"""The preprocessing contract: the reference (numpy + Pillow, shipped as every export's preprocess.py)
computes exactly the training/evaluation pipeline's input, on real photos of every kind; it
antialiases; it runs, with onnxruntime, where finetune cannot even be imported; and the Python API
(finetune.load) predicts through it."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import finetune
from finetune.commands import predict as predict_cli
from finetune.data import reference
from finetune.data.images import read_image
from finetune.data.transforms import Augment, Preprocessing, eval_transform, train_transform
from finetune.export.writing import export_run
from finetune.tasks.registry import get_task

from ..conftest import SEG_CLASSES, SHARED_DATA

PHOTOS = SHARED_DATA / "classification" / "hymenoptera" / "val"
LANDSCAPE = PHOTOS / "ants" / "10308379_1b6c72e180.jpg"  # 500 x 375
PORTRAIT = PHOTOS / "ants" / "159515240_d5981e20d1.jpg"  # 382 x 500
PRE = Preprocessing((96, 80), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 3)
# Runs a script with finetune made unimportable (it is installed in this venv, so -I alone is not enough).
NO_FINETUNE = "import sys; sys.modules['finetune'] = None\n"


def photo_variants(folder: Path) -> dict[str, Path]:
    """Real photos as a user's folder holds them: two orientations, smaller than the model size,
    grayscale, RGBA, palette, 16-bit grayscale and an EXIF-rotated JPEG."""
    if not PHOTOS.is_dir():
        pytest.skip("../shared/data is not present")
    folder.mkdir(parents=True, exist_ok=True)
    landscape = Image.open(LANDSCAPE)
    gray = landscape.convert("L")
    variants = {
        "landscape.jpg": landscape,
        "portrait.jpg": Image.open(PORTRAIT),
        "small.png": landscape.resize((50, 40)),
        "gray.png": gray,
        "rgba.png": landscape.convert("RGBA"),
        "palette.png": landscape.convert("P"),
        "gray16.png": Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257 + 100),
    }
    paths = {}
    for name, image in variants.items():
        paths[name] = folder / name
        image.save(paths[name])
    exif = landscape.getexif()
    exif[274] = 6  # orientation: rotate 90 degrees on display
    paths["exif_rotated.jpg"] = folder / "exif_rotated.jpg"
    landscape.save(paths["exif_rotated.jpg"], exif=exif)
    return paths


def test_the_reference_imports_only_numpy_pillow_and_the_standard_library() -> None:
    tree = ast.parse(Path(reference.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "collections", "pathlib", "numpy", "PIL"}, imported


@pytest.mark.parametrize("in_chans", [3, 1])
def test_reference_equals_the_training_and_evaluation_pipeline_exactly(tmp_path, in_chans) -> None:
    pre = PRE if in_chans == 3 else Preprocessing(PRE.size, (0.449,), (0.226,), "bilinear", 1)
    for name, path in photo_variants(tmp_path).items():
        image = read_image(path, 3 if in_chans == 3 else 1)
        if image.shape[2] == 3 and in_chans == 1:
            continue  # RGB files for a 1-channel model: predict converts them (checked below)
        expected = reference.preprocess([path], pre.to_dict())[0]
        for transform in (eval_transform(pre, image.shape[2]), train_transform(pre, image.shape[2], Augment())):
            actual = transform(image=image)["image"].numpy()
            assert actual.shape == (in_chans, 96, 80), name
            assert np.array_equal(actual, expected), name  # bit for bit: the same functions


def test_reference_decodes_like_the_datasets(tmp_path) -> None:
    paths = photo_variants(tmp_path)
    for name, path in paths.items():
        assert np.array_equal(reference.load_image(path), read_image(path, 1)), name
    assert reference.load_image(paths["exif_rotated.jpg"]).shape[:2] == (500, 375)  # EXIF applied
    assert reference.load_image(paths["gray16.png"]).shape[2] == 1
    gray = reference.match_channels(reference.load_image(paths["landscape.jpg"]), 1)
    assert np.array_equal(gray[..., 0], np.asarray(Image.open(paths["landscape.jpg"]).convert("L")))


def test_downscaling_antialiases_where_opencv_aliases() -> None:
    """1-pixel stripes (every third column white) shrunk 8x are a flat gray of their mean (85) when
    antialiased; cv2's cubic samples a few columns and brings back stripes (measured std 70)."""
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::3] = 255
    ours = reference.resize(stripes, (32, 32), "bicubic").astype(float)
    opencv = cv2.resize(stripes, (32, 32), interpolation=cv2.INTER_CUBIC).astype(float)
    assert abs(ours.mean() - 85.3) < 1 and ours.std() < 3  # measured 85.3, 1.5
    assert opencv.std() > 35  # aliased


@pytest.fixture(scope="module")
def onnx_export(finished_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_export")
    export_run(finished_run, get_task("classification"), ("onnx",), out=out)
    return out


def test_onnxruntime_with_preprocess_py_alone_reproduces_finetune_predict(onnx_export, tmp_path) -> None:
    """A deployment with onnxruntime + Pillow + the export folder's preprocess.py, in a process that
    cannot import finetune, gets finetune predict's probabilities on real photos of every kind."""
    photos = photo_variants(tmp_path / "photos")
    assert (onnx_export / "preprocess.py").read_text() == Path(reference.__file__).read_text()
    script = (
        NO_FINETUNE
        + f"""
import json, numpy as np, onnxruntime
sys.path.insert(0, {str(onnx_export)!r})
import preprocess
spec = json.load(open({str(onnx_export / "model.onnx.json")!r}))["preprocessing"]
session = onnxruntime.InferenceSession({str(onnx_export / "model.onnx")!r}, providers=["CPUExecutionProvider"])
logits = session.run(None, {{"input": preprocess.preprocess({[str(p) for p in photos.values()]!r}, spec)}})[0]
p = np.exp(logits - logits.max(1, keepdims=True))
print(json.dumps((p / p.sum(1, keepdims=True)).tolist()))
try:
    import finetune
    raise SystemExit("finetune was importable")
except ImportError:
    pass
"""
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    deployed = np.array(json.loads(out.stdout))

    csv_path = tmp_path / "predictions.csv"
    assert (
        predict_cli.main(
            [f"export={onnx_export / 'model.onnx'}", f"inputs={tmp_path / 'photos'}", f"out={csv_path}", "topk=10"]
        )
        == 0
    )
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(csv_path))}
    for (name, _), probs in zip(photos.items(), deployed):
        row = rows[name]
        ours = {row[f"label_{i}"]: float(row[f"prob_{i}"]) for i in range(1, 11)}
        names = json.loads((onnx_export / "model.onnx.json").read_text())["class_names"]
        assert row["prediction"] == names[int(probs.argmax())], name
        # the CSV rounds to 6 decimals; the inputs are bit-identical, so that is the only difference
        assert max(abs(ours[label] - p) for label, p in zip(names, probs)) <= 5e-7 + 1e-9, name


def test_export_metadata_states_every_step(onnx_export) -> None:
    metadata = json.loads((onnx_export / "model.onnx.json").read_text())
    contract, pre = metadata["input"], metadata["preprocessing"]
    assert contract["resize"]["antialias"] is True and contract["resize"]["crop"] is None
    assert contract["resize"]["keep_aspect_ratio"] is False and contract["resize"]["filter"] == "bicubic"
    assert (contract["layout"], contract["dtype"], contract["channel_order"]) == ("NCHW", "float32", "RGB")
    assert contract["resize"]["to_height_width"] == pre["size"] == [32, 32]
    assert (contract["mean"], contract["std"]) == (pre["mean"], pre["std"]) and "255" in contract["scale"]


def test_python_api_on_a_run_and_its_export(finished_run, onnx_export, tmp_path) -> None:
    photos = list(photo_variants(tmp_path).values())
    model = finetune.load(finished_run)
    assert model.class_names == [str(i) for i in range(10)]
    result = model.predict(photos)
    assert result.probabilities.shape == (len(photos), 10)
    np.testing.assert_allclose(result.probabilities.sum(1), 1, atol=1e-9)
    assert result.labels == [model.class_names[i] for i in result.probabilities.argmax(1)]
    batch = model.preprocess(photos)
    assert np.array_equal(batch, reference.preprocess(photos, model.metadata["preprocessing"]))
    with torch.no_grad():
        logits = model.torch_module(torch.from_numpy(batch)).numpy()
    assert np.array_equal(logits.argmax(1), result.probabilities.argmax(1))
    # one image, as a Pillow image or an array, gives the same row
    single = model.predict(Image.open(photos[0]))
    np.testing.assert_allclose(single.probabilities[0], result.probabilities[0], rtol=0, atol=1e-6)

    exported = finetune.load(onnx_export / "model.onnx")
    onnx_result = exported.predict(photos)
    assert onnx_result.labels == result.labels
    np.testing.assert_allclose(onnx_result.probabilities, result.probabilities, rtol=0, atol=1e-4)
    with pytest.raises(finetune.FinetuneError, match="no torch module"):
        exported.torch_module  # noqa: B018 - the property raises


def test_python_api_on_a_segmentation_run(tiny_seg_run, tmp_path) -> None:
    model = finetune.load(tiny_seg_run)
    assert model.class_names == SEG_CLASSES
    image = np.asarray(Image.open(LANDSCAPE).resize((96, 64)))
    masks = model.predict([image, image[:40, :50]]).masks
    assert [m.shape for m in masks] == [(64, 96), (40, 50)]
    assert all(m.dtype == np.uint8 and m.max() < len(SEG_CLASSES) for m in masks)


def test_a_preprocess_py_of_the_users_is_never_overwritten(finished_run, tmp_path) -> None:
    (tmp_path / "preprocess.py").write_text("# the user's own\n")
    with pytest.raises(finetune.FinetuneError, match="preprocess.py already exists; pass overwrite=true"):
        export_run(finished_run, get_task("classification"), ("onnx",), out=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["preprocess.py"]
    assert (tmp_path / "preprocess.py").read_text() == "# the user's own\n"
