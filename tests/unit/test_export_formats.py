"""Export formats ``pt2`` (torch.export) and ``timm`` (a folder plain timm / smp opens without finetune):
round trips against the torch model, the folder opened by a Python that cannot import finetune,
refusals, and the folder written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from finetune.data.transforms import Preprocessing
from finetune.export import bundle, folders, loading, registry, writing
from finetune.export.parity import logit_scale
from finetune.export.predict_io import resolve_export
from finetune.models.freezing import frozen_stages
from finetune.models.weights import resolve_weights
from finetune.run.errors import FinetuneError
from finetune.tasks.registry import TASKS, get_task

from ..conftest import compose_config
from ..helpers import CLASSES, imagenet_32px, real_images, trained_bundle

CLASSIFICATION, SEGMENTATION = get_task("classification"), get_task("segmentation")
PRE = imagenet_32px()
SEG_PRE = Preprocessing((64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 3)
GRAY_PRE = Preprocessing((32, 32), (0.45,), (0.226,), "bicubic", 1)


def torch_logits(model: torch.nn.Module, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.as_tensor(batch)).numpy()


def allowed(fmt: str, expected: np.ndarray) -> float:
    """The parity gate's bound for ``fmt``: its measured tolerance x the largest logit (at least 1)."""
    return registry.FORMATS[fmt].tolerance * logit_scale(expected)


def stepped(model, pre: Preprocessing, targets) -> None:
    """Two SGD steps in train mode (BatchNorm statistics and weights move away from their init)."""
    model.set_frozen(frozen_stages(model.stage_map, 0), "frozen")
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(1)
    for _ in range(2):
        x = torch.randn(2, pre.in_chans, *pre.size)
        loss = torch.nn.functional.cross_entropy(model(x), targets(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def probe(weights_file) -> bundle.ModelBundle:
    """resnet10t, last stage and linear head trained."""
    return trained_bundle(weights_file, -1)


@pytest.fixture(scope="module")
def gray_vit(tmp_path_factory) -> bundle.ModelBundle:
    """vit_tiny at 32 px (timm resamples its position embeddings: img_size must travel) on 1 channel."""
    torch.manual_seed(0)
    file = tmp_path_factory.mktemp("vit") / "vit_tiny.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224").state_dict(), str(file))
    cfg = compose_config(
        "backbone=vit_small_patch16_224",
        "backbone.name=vit_tiny_patch16_224",
        f"backbone.weights={file}",
        "dataset.image_size=32",
        "head.dropout=0.1",
    )
    record = resolve_weights("vit_tiny_patch16_224", file)
    model = CLASSIFICATION.build_model(cfg, record, 1, len(CLASSES))
    stepped(model, GRAY_PRE, lambda x: torch.arange(len(x)) % len(CLASSES))
    return bundle.ModelBundle(model, cfg, CLASSES, CLASSIFICATION, GRAY_PRE, 1, record.to_dict(), origin="test")


@pytest.fixture(scope="module")
def segmenter(weights_file) -> bundle.ModelBundle:
    """A resnet10t U-Net (encoder from the weights file), two SGD steps."""
    cfg = compose_config(
        "task=segmentation",
        "dataset=seg_folder",
        "head=unet",
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights_file}",
        "head.decoder_channels=[32,16,16,8,8]",
    )
    record = resolve_weights("resnet10t", weights_file)
    model = SEGMENTATION.build_model(cfg, record, 3, 2)
    stepped(model, SEG_PRE, lambda x: (x[:, 0] > 0).long())
    return bundle.ModelBundle(
        model, cfg, ["background", "thing"], SEGMENTATION, SEG_PRE, 3, record.to_dict(), origin="test"
    )


def hymenoptera(shared_data: Path) -> list[Path]:
    """Two ants and two bees: real photos of different sizes."""
    val = shared_data / "classification" / "hymenoptera" / "val"
    return [p for kind in ("ants", "bees") for p in sorted((val / kind).glob("*.jpg"))[:2]]


def isolated_python(code: str, *args: str | Path, cwd: Path) -> dict:
    """Run ``code`` in this environment's Python with finetune out of reach: ``-I`` (neither the cwd
    nor PYTHON* variables on the path), ``-S`` (no .pth files, so not finetune's editable install);
    only site-packages is added. ``code`` prints one JSON line, returned here."""
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    prelude = (
        f"import sys; sys.path += {site!r}\n"
        "try:\n    import finetune\nexcept ModuleNotFoundError:\n    pass\n"
        "else:\n    sys.exit('finetune is importable: the check is not isolated')\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", prelude + code, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Plain timm: the folder, timm's own preprocessing (PIL), logits. No finetune anywhere.
TIMM_CODE = """
import json, numpy as np, timm, torch
from PIL import Image
folder, out, *files = sys.argv[1:]
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
config = timm.data.resolve_data_config({}, model=model)
transform = timm.data.create_transform(**config)
mode = "L" if config["input_size"][0] == 1 else "RGB"
batch = torch.stack([transform(Image.open(f).convert(mode)) for f in files])
with torch.inference_mode():
    logits = model(batch)
np.savez(out, batch=batch.numpy(), logits=logits.numpy())
print(json.dumps({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                  "labels": model.pretrained_cfg.get("label_names")}))
"""


# --- pt2 -----------------------------------------------------------------------------------------


def test_pt2_round_trip_dynamic_batch_and_quiet_load(tmp_path, probe, capfd):
    result = writing.export(probe, "pt2", tmp_path, real_images())
    assert result.path.name == "model.pt2" and result.parity.passed
    meta = json.loads(registry.sidecar_path(result.path).read_text())
    assert meta["format"] == "pt2" and meta["class_names"] == CLASSES and len(meta["sha256"]) == 64
    batch = loading.preprocess(real_images(), PRE)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = loading.load_export(result.path, tasks=TASKS)  # format from the .pt2 suffix
        for n in (1, 3):  # exported with an example batch of 2
            expected = torch_logits(probe.model, batch[:n])
            actual = exported.forward(batch[:n])
            assert actual.shape == (n, len(CLASSES))
            assert np.abs(actual - expected).max() <= allowed("pt2", expected)
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr() == ("", "")


def test_pt2_segmentation_takes_any_batch_height_and_width(tmp_path, segmenter):
    result = writing.export(segmenter, "pt2", tmp_path, real_images()[:2])
    forward = loading.load_export(result.path, tasks=TASKS).forward
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 64, 64), (3, 3, 64, 96), (2, 3, 160, 64)):  # multiples of 32 from 64 up
        x = rng.standard_normal(shape, dtype=np.float32)
        expected = torch_logits(segmenter.model, x)
        actual = forward(x)
        assert actual.shape == (shape[0], 2, *shape[2:])
        assert np.abs(actual - expected).max() <= allowed("pt2", expected)
    with pytest.raises(AssertionError, match="Guard failed"):  # a 1 x 1 map at stride 32: not this graph
        forward(rng.standard_normal((1, 3, 64, 32), dtype=np.float32))


# --- timm folder ---------------------------------------------------------------------------------


def parity_images(trained: bundle.ModelBundle) -> list[np.ndarray]:
    """test_export's photos as the run would have read them (1-channel data: Pillow's "L")."""
    if trained.image_channels == 3:
        return real_images()
    return [np.asarray(Image.fromarray(image).convert("L"))[..., None] for image in real_images()]


@pytest.mark.parametrize("name", ["probe", "gray_vit"])
def test_timm_folder_opens_in_plain_timm_with_the_same_logits(tmp_path, shared_data, request, name):
    trained = request.getfixturevalue(name)
    result = writing.export(trained, "timm", tmp_path / "exports", parity_images(trained))
    folder = tmp_path / "exports" / "timm"
    assert result.path == folder and result.parity.passed
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "finetune.json",
        "model.safetensors",
        "preprocess.py",
    ]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["preprocess.py", "timm"]  # no temp folder left
    assert resolve_export(folder) == resolve_export(folder.parent) == folder  # predict / finetune.load find it
    files = hymenoptera(shared_data)
    seen = isolated_python(TIMM_CODE, folder, tmp_path / "timm.npz", *files, cwd=tmp_path)
    pre = trained.preprocessing
    assert seen == {
        "labels": CLASSES,
        "config": {
            "input_size": [pre.in_chans, *pre.size],
            "interpolation": pre.interpolation,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "crop_pct": 1.0,
            "crop_mode": "squash",
        },
    }
    out = np.load(tmp_path / "timm.npz")
    # the model: finetune's torch model on timm's very tensor
    expected = torch_logits(trained.model, out["batch"])
    assert np.abs(out["logits"] - expected).max() <= allowed("timm", expected)
    # end to end: finetune reads and preprocesses the files itself (Pillow's antialiased resize,
    # finetune.data.reference), timm with create_transform on PIL images. Measured: the tensors are
    # bit-identical (RGB and 1-channel "L"), the logits within 1e-7. Should this part fail while the
    # one above passes, finetune's preprocessing no longer matches timm's (e.g. an OpenCV resize again).
    exported = loading.load_export(folder, tasks=TASKS)  # finetune opens the folder too (load_export / predict)
    assert exported.metadata["layout"] == "timm" and exported.class_names == CLASSES
    images = [exported.read(f) for f in files]
    # float32 rounding at most (one grey level is 1/255/std > 0.01)
    assert np.abs(loading.preprocess(images, exported.preprocessing) - out["batch"]).max() <= 1e-6
    own = exported.logits(images)
    assert np.abs(own - out["logits"]).max() <= allowed("timm", expected)
    assert (own.argmax(1) == out["logits"].argmax(1)).all()


def test_timm_folder_refuses_an_mlp_head_before_writing(tmp_path, weights_file):
    cfg = compose_config(
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights_file}",
        "dataset.image_size=32",
        "head=mlp",
        "head.hidden=[8]",
    )
    record = resolve_weights("resnet10t", weights_file)
    mlp = bundle.ModelBundle(
        CLASSIFICATION.build_model(cfg, record, 3, len(CLASSES)).eval(),
        cfg,
        CLASSES,
        CLASSIFICATION,
        PRE,
        3,
        record.to_dict(),
    )
    with pytest.raises(
        FinetuneError, match=r"format=timm needs head=linear .* head=mlp; use format=safetensors or onnx"
    ):
        writing.export(mlp, "timm", tmp_path / "exports", real_images())
    assert not (tmp_path / "exports").exists()


def test_timm_folder_is_not_overwritten_unless_asked_and_failures_keep_nothing(tmp_path, probe, monkeypatch):
    folder = writing.export(probe, "timm", tmp_path, real_images()[:1]).path
    (folder / "notes.txt").write_text("the user's")
    with pytest.raises(FinetuneError, match="overwrite=true"):
        writing.export(probe, "timm", tmp_path, real_images()[:1])
    assert (folder / "notes.txt").read_text() == "the user's"
    writing.export(probe, "timm", tmp_path, real_images()[:1], overwrite=True)
    assert not (folder / "notes.txt").exists() and loading.load_export(folder, tasks=TASKS).class_names == CLASSES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preprocess.py", "timm"]

    metadata = folders.metadata  # a recorded preprocessing that differs from the run's: parity fails
    monkeypatch.setattr(
        folders,
        "metadata",
        lambda b, fmt: metadata(b, fmt) | {"preprocessing": {**b.preprocessing.to_dict(), "std": [0.25] * 3}},
    )
    with pytest.raises(FinetuneError, match="not kept"):
        writing.export(probe, "timm", tmp_path / "other", real_images()[:2])
    assert list((tmp_path / "other").iterdir()) == []


# Plain segmentation_models_pytorch: the folder, logits for a given batch. No finetune anywhere.
SMP_CODE = """
import json, numpy as np, torch, segmentation_models_pytorch as smp
folder, batch, out = sys.argv[1:]
model = smp.from_pretrained(folder).eval()
with torch.inference_mode():
    np.save(out, model(torch.from_numpy(np.load(batch))).numpy())
print(json.dumps({"class": type(model).__name__}))
"""


def test_segmentation_folder_opens_in_plain_smp(tmp_path, segmenter, weights_file):
    result = writing.export(segmenter, "timm", tmp_path, real_images()[:2])
    folder = result.path
    config = (folder / "config.json").read_text()
    assert json.loads(config)["encoder_weights"] is None and str(weights_file) not in config  # no download, no file
    assert {"config.json", "finetune.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    seen = isolated_python(SMP_CODE, folder, tmp_path / "x.npy", tmp_path / "y.npy", cwd=tmp_path)
    expected = torch_logits(segmenter.model, x)
    assert seen == {"class": "Unet"}
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() <= allowed("timm", expected)
    exported = loading.load_export(folder, tasks=TASKS)
    assert exported.metadata["layout"] == "smp" and exported.class_names == ["background", "thing"]
    assert np.abs(exported.forward(x) - expected).max() <= allowed("timm", expected)


def test_format_help_marks_torchscript_deprecated():
    with pytest.raises(FinetuneError, match=r"torchscript \(deprecated: use pt2\), pt2, timm"):
        registry.FORMATS.get("pb")
    with pytest.raises(FinetuneError, match="timm/ folder"):
        registry.format_of(Path("model.bin"))
