"""Grad-CAM, activation maps and filter grids on real pretrained weights; the CLI on real classification
and segmentation runs; the segmentation Grad-CAM target on a model whose answer is known."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from finetune.commands.explain import main as explain_main
from finetune.data.transforms import Preprocessing, eval_transform
from finetune.models.backbones import build_stage_map
from finetune.models.freezing import FineTuneModel
from finetune.models.weights import create_model, resolve_weights
from finetune.report import explain as E
from finetune.tasks.classification.report import top_k
from finetune.tasks.segmentation.report import SegmentationExplainer

from ..conftest import SEG_CLASSES

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
        best = top_k(imagenet_model(x)[0], [str(i) for i in range(1000)], 5, multilabel=False)
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
        tiles = [
            mosaic[1 + r * tile : r * tile + tile, 1 + c * tile : c * tile + tile]
            for r in range(mosaic.shape[0] // tile)
            for c in range(cols)
        ]
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
    assert explain_main([f"run={finished_run}", f"inputs={images}", "topk=3", "stage=stage3", "channels=8"]) == 0
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
    for argv, message in (
        [[f"run={finished_run}", f"inputs={tmp_path}/*.jpg"], "no images found"],
        [[f"run={finished_run}"], "missing inputs="],
        [[f"run={finished_run}", f"inputs={tmp_path}", "colour=red"], "unexpected argument"],
    ):
        assert explain_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("finetune: error:") and message in err


# --- segmentation ---------------------------------------------------------------------------------


class _PerPixel(nn.Module):
    """A segmentation model whose answer is known: 1x1 convolutions only, so each pixel's logits
    depend on that pixel alone; class 1's logit is the pixel's brightness, class 0's its negative."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[1 / 3] * 3, [-1 / 3] * 3])[:, :, None, None])
            self.backbone.bias.zero_()
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]])[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_segmentation_gradcam_explains_a_class_over_its_predicted_pixels():
    image = np.full((40, 50, 3), 20, np.uint8)  # not a multiple of 32: padded for the model, cropped back
    image[8:24, 30:46] = 235
    square = np.zeros((40, 50), bool)
    square[8:24, 30:46] = True
    pre = Preprocessing((32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 3)
    run = SimpleNamespace(
        class_names=["background", "square"], preprocessing=pre, cfg=OmegaConf.create({"dataset": {"scale": 1.0}})
    )
    explainer, model = SegmentationExplainer(run), _PerPixel().eval()
    x, valid = explainer.model_input(image)
    assert x.shape == (1, 3, 64, 64) and valid == (40, 50)
    with torch.no_grad():
        logits = model(x)
    explained = explainer.explain(logits, valid, 5)
    assert (explained.index, explained.name) == (1, "square")  # the largest class besides class 0
    assert [(e["class"], e["pixel_fraction"]) for e in explained.topk] == [
        ("background", round(1 - square.mean(), 6)),
        ("square", round(square.mean(), 6)),
    ]
    assert explained.caption == f"square ({square.mean():.1%} of pixels)"
    # the target: class 1's logits summed over the pixels predicted as class 1, padding excluded
    expected = logits[0, 1, :40, :50][torch.from_numpy(square)].sum()
    torch.testing.assert_close(explained.target(logits[0]), expected)
    cam = E.grad_cam(model, x, explained.target, "backbone")[:40, :50]
    assert cam[square].min() > 0.9 and cam[~square].max() < 0.05  # on the square, nowhere else
    background = E.grad_cam(model, x, _target(0, logits, valid), "backbone")[:40, :50]
    assert background[~square].min() > 0.9 and background[square].max() < 0.05


def _target(category: int, logits: torch.Tensor, valid: tuple[int, int]):
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    mask = torch.zeros(logits.shape[-2:])
    mask[: valid[0], : valid[1]] = (logits[0, :, : valid[0], : valid[1]].argmax(dim=0) == category).float()
    return SemanticSegmentationTarget(category, mask.numpy())


def test_cli_explains_images_of_a_segmentation_run(tiny_seg_run, tmp_path, capsys):
    stem = sorted(tiny_seg_run.glob("predictions/*_pred.png"))[0].name.removesuffix("_pred.png")
    tested = tiny_seg_run.parent / "data" / "images" / f"{stem}.png"  # a test image the run predicted
    images = tmp_path / "images"
    images.mkdir()
    Image.open(tested).save(images / "tested.png")
    Image.fromarray(np.asarray(Image.open(tested))[:50, :60]).save(images / "odd_size.png")
    out = tmp_path / "explain"
    assert explain_main([f"run={tiny_seg_run}", f"inputs={images}", "channels=8", f"out={out}"]) == 0
    assert "% of pixels)" in capsys.readouterr().out
    for name in ("tested", "odd_size"):
        for file in ("topk.json", "gradcam.png", "activations_stage3.png"):
            assert (out / name / file).is_file(), (name, file)
        record = json.loads((out / name / "topk.json").read_text())
        assert {e["class"] for e in record["topk"]} <= set(SEG_CLASSES)
        assert sum(e["pixel_fraction"] for e in record["topk"]) == pytest.approx(1, abs=1e-5)
        assert record["gradcam"]["layer"] == "backbone.model.layer4"
        assert record["activations"]["layer"] == "backbone.model.layer3" and len(record["activations"]["channels"]) == 8
        gradcam = np.asarray(Image.open(out / name / "gradcam.png").convert("L"), dtype=np.float32)
        assert gradcam.std() > 10  # image | Grad-CAM overlay, not a blank figure
    # what is listed is what the run predicted for the same image (one tile: the same forward pass)
    predicted = np.asarray(Image.open(tiny_seg_run / "predictions" / f"{stem}_pred.png"))
    listed = {e["index"]: e["pixel_fraction"] for e in json.loads((out / "tested" / "topk.json").read_text())["topk"]}
    assert listed == {c: round(float((predicted == c).mean()), 6) for c in np.unique(predicted).tolist()}
    assert (out / "filters.png").is_file()  # random init: the fine-tuned filters alone
