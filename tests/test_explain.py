"""Grad-CAM, activation maps and filter grids on real pretrained weights; the CLI on a real run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from finetune.report import explain as E
from finetune.models.backbones import build_stage_map
from finetune.data.transforms import Preprocessing, eval_transform
from finetune.models.freezing import FineTuneModel
from finetune.models.weights import create_model, resolve_weights


CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
CLOCK = 409


@pytest.fixture(scope="module")
def imagenet_model() -> FineTuneModel:
    """EfficientNet-Lite0 with its pretrained ImageNet classifier as the head."""
    net = create_model(resolve_weights("tf_efficientnet_lite0"))
    head = net.classifier
    net.reset_classifier(0)
    return FineTuneModel(net, head, build_stage_map(net)).eval()


@pytest.fixture(scope="module")
def chelsea() -> tuple[np.ndarray, torch.Tensor]:
    image = skimage.data.chelsea()  # 300x451, the cat fills the middle
    pre = Preprocessing((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic", 3)
    return image, eval_transform(pre, 3)(image=image)["image"][None]


@pytest.fixture(scope="module")
def outputs(imagenet_model, chelsea) -> dict[str, E.StageOutput]:
    return E.stage_outputs(imagenet_model, chelsea[1])


def test_stage_outputs_end_before_global_pooling(outputs):
    assert list(outputs) == ["stem", *(f"stage{i}" for i in range(1, 8))]
    assert outputs["stage3"] == E.StageOutput("backbone.blocks.2", (28, 28), False)
    assert outputs["stage7"] == E.StageOutput("backbone.bn2", (7, 7), False)  # conv head + BN + act
    assert E.cam_stage_of(outputs) == "stage7"


def test_gradcam_of_a_cat_class_lies_on_the_cat(imagenet_model, chelsea, outputs):
    _, x = chelsea
    with torch.no_grad():
        best = E.top_k(imagenet_model(x)[0], [str(i) for i in range(1000)], 5, multilabel=False)
    assert best[0]["index"] in CATS and best[0]["probability"] > 0.5
    cam = E.grad_cam(imagenet_model, x, best[0]["index"], outputs["stage7"].layer)
    assert cam.shape == (224, 224) and 0 <= cam.min() and cam.max() <= 1
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert all(40 <= p < 184 for p in peak)
    border = np.concatenate([cam[:24].ravel(), cam[-24:].ravel(), cam[:, :24].ravel(), cam[:, -24:].ravel()])
    assert cam[56:168, 56:168].mean() > 2 * border.mean()
    clock = E.grad_cam(imagenet_model, x, CLOCK, outputs["stage7"].layer)
    assert np.abs(cam - clock).mean() > 0.1
    assert all(p.grad is None for p in imagenet_model.parameters())


def test_strongest_channels_are_ranked_maps_of_the_stage(imagenet_model, chelsea, outputs):
    channels, maps = E.strongest_channels(imagenet_model, chelsea[1], outputs["stage3"].layer, 16)
    assert len(channels) == len(set(channels)) == 16 and maps.shape == (16, 28, 28)
    means = maps.mean(axis=(1, 2))
    assert np.all(np.diff(means) <= 1e-6)


def test_filter_mosaic_has_one_tile_per_filter(imagenet_model):
    weights = E.first_conv(imagenet_model).weight  # 32 x 3 x 3 x 3
    for n in (32, 10):
        mosaic = E.filter_mosaic(weights[:n], gap=1)
        cols = int(np.ceil(np.sqrt(n)))
        tile = 3 * (36 // 3) + 1
        assert mosaic.shape == ((int(np.ceil(n / cols))) * tile + 1, cols * tile + 1, 3)
        tiles = [mosaic[1 + r * tile: r * tile + tile, 1 + c * tile: c * tile + tile]
                 for r in range(mosaic.shape[0] // tile) for c in range(cols)]
        assert sum(not np.all(t == E.FILTER_BACKGROUND) for t in tiles) == n


def test_vit_tokens_become_maps_without_the_class_token():
    tokens = torch.arange(2 * 17 * 8, dtype=torch.float32).reshape(2, 17, 8)
    maps = E.as_maps(tokens)
    assert maps.shape == (2, 8, 4, 4)
    assert torch.equal(maps[:, :, 0, 0], tokens[:, 1])


def test_cli_explains_images_of_a_real_run(finished_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(skimage.data.chelsea()[::4, ::4]).save(images / "cat.jpg")
    Image.fromarray(skimage.data.camera()[::8, ::8]).save(images / "camera.png")
    before = sorted(images.iterdir())
    assert E.main([f"run={finished_run}", f"inputs={images}", "topk=3", "stage=stage3", "channels=8"]) == 0
    explain = finished_run / "explain"
    for name in ("cat", "camera"):
        for file in ("topk.json", "gradcam.png", "activations_stage3.png"):
            assert (explain / name / file).is_file(), (name, file)
        record = json.loads((explain / name / "topk.json").read_text())
        assert len(record["topk"]) == 3 and record["topk"][0]["class"] in [str(d) for d in range(10)]
        assert len(record["activations"]["channels"]) == 8 and record["gradcam"]["layer"] == "backbone.bn2"
    filters = Image.open(explain / "filters.png")
    assert filters.width > 2 * filters.height * 0.8  # before | after side by side
    assert sorted(images.iterdir()) == before  # nothing written next to the user's images
    assert "explanations written to" in capsys.readouterr().out


def test_cli_errors_are_one_line_and_exit_2(finished_run, tmp_path, capsys):
    for argv, message in ([[f"run={finished_run}", f"inputs={tmp_path}/*.jpg"], "no images found"],
                          [[f"run={finished_run}"], "missing inputs="],
                          [[f"run={finished_run}", f"inputs={tmp_path}", "colour=red"], "unexpected argument"]):
        assert E.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("finetune: error:") and message in err
