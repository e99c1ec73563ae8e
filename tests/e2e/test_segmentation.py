"""task=segmentation: data checks, pretrained encoders under smp decoders, the freezing contract,
sliding-window inference, losses and metrics that skip ignored pixels, and a real run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from finetune.data.segmentation import SegmentationDataModule
from finetune.models.decoders import build_segmentation_model
from finetune.models.freezing import frozen_stages
from finetune.models.weights import load_state_dict, resolve_weights
from finetune.run.errors import DatasetError, FinetuneError
from finetune.tasks.registry import TASKS, get_task
from finetune.tasks.segmentation.module import SegmentationLoss, SegmentationMetrics, sliding_window_logits

from ..helpers import cli_in_process, one_torch_thread, squares, write_pair

NONE_AUGMENT = {}


def seg_config(root, **extra):
    return {"kind": "seg_folder", "root": str(root), "mask_mode": "binary", "crop_size": 32, "num_workers": 0, **extra}


# --- data ------------------------------------------------------------------------------------


def test_binary_masks_map_255_to_1_and_splits_are_carved(tmp_path):
    squares(tmp_path, n=10)
    dm = SegmentationDataModule(seg_config(tmp_path, test_fraction=0.2), NONE_AUGMENT, 2, 0)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert dm.info.class_names == ["background", "foreground"]
    _, mask = dm.raw_pair("train", 0)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert dm.info.class_counts[1] > 0 and sum(dm.info.class_counts) == 6 * 64 * 64


def test_missing_mask_names_the_image(tmp_path):
    squares(tmp_path, n=4)
    (tmp_path / "masks" / "img02.png").unlink()
    with pytest.raises(DatasetError, match=r"have no mask.*img02\.png"):
        SegmentationDataModule(seg_config(tmp_path), NONE_AUGMENT, 2, 0)


def test_mask_size_mismatch_names_both_files(tmp_path):
    squares(tmp_path, n=4)
    Image.fromarray(np.zeros((30, 64), np.uint8)).save(tmp_path / "masks" / "img01.png")
    with pytest.raises(DatasetError, match=r"img01\.png is 64x30 but its image .*img01\.png is 64x64"):
        SegmentationDataModule(seg_config(tmp_path), NONE_AUGMENT, 2, 0)


def test_label_values_outside_the_classes_are_named(tmp_path):
    squares(tmp_path, n=4, foreground=1)
    mask = np.zeros((64, 64), np.uint8)
    mask[:2, :2] = 7
    Image.fromarray(mask).save(tmp_path / "masks" / "img03.png")
    cfg = seg_config(tmp_path, mask_mode="index", class_names=["bg", "square"])
    with pytest.raises(DatasetError, match=r"img03\.png has label values \[7\] outside the 2 declared classes"):
        SegmentationDataModule(cfg, NONE_AUGMENT, 2, 0)


def test_non_binary_mask_where_binary_was_declared(tmp_path):
    squares(tmp_path, n=4)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 128  # an anti-aliased edge
    Image.fromarray(mask).save(tmp_path / "masks" / "img00.png")
    with pytest.raises(DatasetError, match=r"img00\.png is not a binary mask: values \[0, 128\]"):
        SegmentationDataModule(seg_config(tmp_path), NONE_AUGMENT, 2, 0)


def test_palette_masks_become_class_indices(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = (255, 0, 0)
    for i in range(4):
        write_pair(tmp_path, f"p{i}", np.zeros((8, 8, 3), np.uint8), rgb)
    cfg = seg_config(tmp_path, mask_mode="palette", class_names=["bg", "red"], palette=[[0, 0, 0], [255, 0, 0]])
    dm = SegmentationDataModule(cfg, NONE_AUGMENT, 2, 0)
    _, mask = dm.raw_pair("train", 0)
    assert (mask[:4] == 1).all() and (mask[4:] == 0).all()


def test_drive_layout_ignores_pixels_outside_the_field_of_view(shared_data):
    root = shared_data / "segmentation" / "drive"
    dm = SegmentationDataModule(
        {
            "kind": "drive",
            "root": str(root),
            "mask_mode": "binary",
            "class_names": ["background", "vessel"],
            "num_workers": 0,
        },
        NONE_AUGMENT,
        2,
        0,
    )
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 16, "val": 4, "test": 20}
    image, mask = dm.raw_pair("test", 0)
    fov = np.asarray(Image.open(dm.splits["test"][0].fov).convert("L")) > 127
    assert image.shape[:2] == mask.shape == (584, 565)
    assert (mask[~fov] == 255).all() and set(np.unique(mask[fov]).tolist()) == {0, 1}
    assert 0.05 < dm.info.class_counts[1] / sum(dm.info.class_counts) < 0.2  # vessels: ~12% of the FOV


def test_camvid_list_files_and_void(shared_data):
    root = shared_data / "segmentation" / "camvid_subset"
    names = [line.split(" ", 1)[1] for line in (root / "classes.txt").read_text().splitlines()[:11]]
    dm = SegmentationDataModule(
        {
            "kind": "seg_folder",
            "root": str(root),
            "class_names": names,
            "ignore_index": 11,
            "splits": {"train": "train.txt", "val": "val.txt", "test": "test.txt"},
            "num_workers": 0,
        },
        NONE_AUGMENT,
        2,
        0,
    )
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 60, "val": 20, "test": 40}
    assert all(c > 0 for c in dm.info.class_counts)


def test_training_crops_move_image_and_mask_together(tmp_path):
    squares(tmp_path, n=6)
    dm = SegmentationDataModule(seg_config(tmp_path), {"hflip": 1.0, "rotate": 30.0}, 4, 0)
    dm.set_preprocessing(_preprocessing())
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    bright = images.mean(dim=1) > 0.3  # the squares are the only bright pixels (normalized > 0.3)
    agree = (bright == (masks == 1))[masks != 255].float().mean()
    assert agree > 0.95


def _preprocessing():
    from finetune.data.transforms import Preprocessing

    return Preprocessing(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", in_chans=3)


# --- model -----------------------------------------------------------------------------------


def test_encoder_holds_the_pretrained_weights():
    record = resolve_weights("tf_efficientnet_lite0")  # pip package, real ImageNet weights
    assert record.source != "random"
    model = build_segmentation_model(record, "unet", 3, 2, decoder_channels=[16, 16, 16, 16, 16])
    pretrained = load_state_dict(record.file)
    encoder = model.backbone.state_dict()
    compared = [k for k in pretrained if f"model.{k}" in encoder]
    assert len(compared) > 100
    for key in compared:
        assert torch.equal(encoder[f"model.{key}"], pretrained[key]), key
    random_init = build_segmentation_model(
        resolve_weights("tf_efficientnet_lite0", pretrained=False), "unet", 3, 2, decoder_channels=[16, 16, 16, 16, 16]
    )
    assert not torch.equal(random_init.backbone.state_dict()["model.conv_stem.weight"], pretrained["conv_stem.weight"])


@pytest.mark.parametrize(
    "arch,name,stage",
    [
        ("resnet18", "model.layer2.0.conv1.weight", "stage2"),
        ("resnet18", "model.conv1.weight", "stem"),
        ("convnext_atto", "model.stem_0.weight", "stem"),
        ("convnext_atto", "model.stages_3.blocks.1.conv_dw.weight", "stage4"),
        ("tf_efficientnet_lite0", "model.blocks.6.0.conv_pw.weight", "stage7"),
    ],
)
def test_encoder_stages_are_the_backbone_stages(arch, name, stage):
    model = build_segmentation_model(resolve_weights(arch, pretrained=False), "fpn", 3, 3)
    assert model.stage_of(f"backbone.{name}") == stage
    assert model.stage_of("head.decoder.seg_blocks.0.block.0.block.0.weight") == "head"


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("decoder", ["unet", "fpn", "deeplabv3plus"])
def test_frozen_encoder_stages_and_bn_buffers_do_not_change(decoder):
    torch.manual_seed(0)
    model = build_segmentation_model(resolve_weights("resnet18", pretrained=False), decoder, 3, 3)
    model.set_frozen(frozen_stages(model.stage_map, 2), "frozen")
    model.train()
    frozen = [
        (n, t)
        for n, t in model.state_dict().items()
        if n.startswith("backbone.") and model.stage_of(n) in ("stem", "stage1", "stage2")
    ]
    trained = [p for n, p in model.named_parameters() if model.stage_of(n) == "stage4"]
    before, before_trained = _digest(t for _, t in frozen), _digest(trained)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = model(torch.randn(2, 3, 64, 64)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert _digest(t for _, t in frozen) == before
    assert _digest(trained) != before_trained


# --- inference, losses, metrics ----------------------------------------------------------------


def test_sliding_window_equals_a_whole_image_pass_for_a_pointwise_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    image = torch.randn(2, 3, 100, 150)
    tiled = sliding_window_logits(conv, image, tile=64, overlap=0.5)
    assert tiled.shape == (2, 4, 100, 150)
    torch.testing.assert_close(tiled, conv(image), rtol=1e-5, atol=1e-5)


def test_sliding_window_with_one_tile_equals_the_padded_forward():
    torch.manual_seed(0)
    model = build_segmentation_model(resolve_weights("resnet18", pretrained=False), "unet", 3, 2).eval()
    image = torch.randn(1, 3, 70, 90)
    tiled = sliding_window_logits(model, image, tile=96, overlap=0.5)
    direct = model(torch.nn.functional.pad(image, (0, 6, 0, 26)))[:, :, :70, :90]
    torch.testing.assert_close(tiled, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["ce", "dice", "ce_dice", "focal"])
def test_losses_skip_ignored_pixels(kind):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = 255
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    loss = SegmentationLoss(kind, ignore_index=255)
    torch.testing.assert_close(loss(logits, target), loss(changed, target))


def test_metrics_match_a_hand_count_and_skip_ignored_pixels():
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255]]])
    pred_class = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]])
    logits = torch.nn.functional.one_hot(pred_class, 2).permute(0, 3, 1, 2).float()
    metrics = SegmentationMetrics(2, ignore_index=255)
    metrics.update(logits, target)
    values = metrics.compute()
    # valid pixels: 7; class 1: TP 3, FP 1, FN 1 -> IoU 3/5, Dice 6/8; class 0: TP 2, FP 1, FN 1
    assert values["iou"].item() == pytest.approx(3 / 5)
    assert values["dice"].item() == pytest.approx(6 / 8)
    assert values["iou_per_class"][0].item() == pytest.approx(2 / 4)
    assert values["pixel_acc"].item() == pytest.approx(5 / 7)
    assert values["confusion"].sum().item() == 7


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory):
    """A real segmentation run (pip ImageNet encoder, U-Net) on learnable squares, made once, in this process."""
    base = tmp_path_factory.mktemp("seg_run")
    squares(base / "data", n=16)
    with one_torch_thread():
        out = cli_in_process(
            "task=segmentation",
            "dataset=seg_folder",
            f"dataset.root={base / 'data'}",
            "dataset.mask_mode=binary",
            "dataset.crop_size=64",
            "dataset.num_workers=0",
            "dataset.samples_per_image=4",
            "head=unet",
            "head.decoder_channels=[32,16,16,16,16]",
            "backbone.freeze=2",
            "schedule.batch_size=8",
            "schedule.epochs=3",
            "schedule.lr=3e-3",
            "trainer.progress_bar=false",
            "segmentation.overlays=2",
            "hydra.run.dir=run",
            cwd=base,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "run"


def test_segmentation_run_learns_and_writes_masks_and_overlays(seg_run):
    metrics = json.loads((seg_run / "metrics.json").read_text())
    assert metrics["test"]["dice"] > 0.7, metrics["test"]  # chance (all foreground) is ~0.2
    assert metrics["test"]["auc"] > 0.9
    assert set(metrics["test_per_class"]["iou_per_class"]) == {"background", "foreground"}
    predictions = sorted(p.name for p in (seg_run / "predictions").iterdir())
    assert len(predictions) == 4 and predictions[0].endswith("_overlay.png")
    overlay = Image.open(seg_run / "predictions" / predictions[0])
    assert overlay.size == (3 * 64 + 8, 64)
    mask = np.asarray(Image.open(seg_run / "predictions" / predictions[1]))
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert json.loads((seg_run / "data.json").read_text())["task"] == "segmentation"


def _best_model(run):
    from finetune.models.saved_runs import load_run

    return load_run(run, get_task("segmentation")).model


def test_head_export_of_a_segmentation_run_round_trips(seg_run):
    from finetune.export.tensors import load_head_export

    head = seg_run / "exports" / "head.safetensors"
    assert head.is_file()  # every run writes one
    model, rebuilt = _best_model(seg_run), load_head_export(head, TASKS)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=1e-6)
    from finetune.export.tensors import embedded_metadata

    stages = embedded_metadata(head)["delta"]["stages"]
    assert "head" in stages and not {"stem", "stage1", "stage2"} & set(stages)  # frozen: pinned, not stored


def test_onnx_export_takes_any_size_and_predict_writes_masks(seg_run, tmp_path):
    from finetune.commands.predict import main as predict_main
    from finetune.export.loading import load_export
    from finetune.export.writing import export_run

    results = export_run(seg_run, get_task("segmentation"), ["onnx", "torchscript"], out=tmp_path / "exports")
    assert all(r.parity.max_abs_diff <= 1e-4 and r.parity.top1_agreement == 1.0 for r in results)
    exported = load_export(tmp_path / "exports" / "model.onnx", tasks=TASKS)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        expected = _best_model(seg_run)(x).numpy()
    np.testing.assert_allclose(exported.forward(x.numpy()), expected, atol=1e-4)

    images = sorted((seg_run.parent / "data" / "images").iterdir())[:3]
    code = predict_main(
        [
            f"export={tmp_path / 'exports' / 'model.onnx'}",
            f"inputs={','.join(map(str, images))}",
            f"out={tmp_path / 'masks'}",
        ]
    )
    assert code == 0
    for image in images:
        predicted = np.asarray(Image.open(tmp_path / "masks" / f"{image.stem}_mask.png"))
        truth = np.asarray(Image.open(seg_run.parent / "data" / "masks" / image.name)) // 255
        assert predicted.shape == truth.shape and (predicted == truth).mean() > 0.9
    assert (
        predict_main(
            [f"export={tmp_path / 'exports' / 'model.onnx'}", f"inputs={images[0]}", f"out={tmp_path / 'masks'}"]
        )
        == 2
    )  # never overwritten without overwrite=true


def test_classification_head_with_segmentation_fails_fast(tmp_path):
    out = cli_in_process("task=segmentation", "dataset=seg_folder", "dataset.root=/nonexistent", cwd=tmp_path)
    assert out.returncode == 2
    assert "head.kind='linear'" in out.stderr and "head=unet" in out.stderr


def test_monitor_is_checked_against_the_task_before_training(tmp_path):
    from finetune.tasks.segmentation.module import monitor_metric

    assert monitor_metric(2) == "val/dice" and monitor_metric(5) == "val/miou"
    assert monitor_metric(5, "loss") == "val/loss"
    with pytest.raises(FinetuneError, match="monitor=dice.*5 classes.*miou"):
        monitor_metric(5, "dice")  # a foreground score: logged for binary tasks only
    out = cli_in_process(
        "task=segmentation",
        "head=unet",
        "dataset=seg_folder",
        "dataset.root=/nonexistent",
        "monitor=balanced_acc",
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "monitor='balanced_acc'" in out.stderr and "miou" in out.stderr


def test_scale_resizes_for_the_model_and_reports_at_the_original_size(tmp_path):
    from finetune.tasks.segmentation.module import full_image_logits

    squares(tmp_path, n=6)
    dm = SegmentationDataModule(seg_config(tmp_path, scale=2.0, crop_size=128), NONE_AUGMENT, 2, 0)
    dm.set_preprocessing(_preprocessing())
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape[-2:] == (128, 128)  # a 64 px image doubled fills the 128 px crop
    assert (masks != 255).all() and set(masks.unique().tolist()) == {0, 1}  # nearest: still binary
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 1)
    image = torch.randn(1, 3, 50, 70)
    logits = full_image_logits(conv, image, tile=64, scale=2.0)
    assert logits.shape == (1, 2, 50, 70)
    assert torch.corrcoef(torch.stack([logits.flatten(), conv(image).detach().flatten()]))[0, 1] > 0.9


def test_plan_shows_encoder_stages_and_decoder_without_training(tmp_path):
    squares(tmp_path / "data", n=6)
    out = cli_in_process(
        "+segmentation=drive",
        "dataset=seg_folder",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.class_names=[background,square]",
        "plan=true",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stage7" in out.stdout and "head/no_decay" in out.stdout and "square=" in out.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_class_absent_from_the_split_is_left_out_of_the_means():
    target = torch.tensor([[[0, 0, 1, 255]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 0]]]), 3).permute(0, 3, 1, 2).float()
    metrics = SegmentationMetrics(3, ignore_index=255)
    metrics.update(logits, target)
    values = metrics.compute()
    assert torch.isnan(values["iou_per_class"][2])  # class 2: never true, never predicted
    assert values["miou"].item() == pytest.approx(0.5)  # (1/2 + 1/2) / 2, not / 3


def test_a_batch_with_only_ignored_pixels_gives_a_zero_loss_not_nan():
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    for kind in ("ce", "dice", "ce_dice", "focal"):
        loss = SegmentationLoss(kind, ignore_index=255)(logits, torch.full((2, 8, 8), 255))
        assert loss.item() == 0.0
        loss.backward()


def test_mask_follows_the_image_exif_orientation(tmp_path):
    image = np.zeros((64, 96, 3), np.uint8)  # stored 96 wide, 64 high; EXIF says: rotate 90°
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        Image.fromarray(image).save(tmp_path / "images" / f"r{i}.jpg", exif=exif)
        mask = np.zeros((64, 96), np.uint8)
        mask[:, :10] = 255
        m = Image.fromarray(mask)
        m.save(tmp_path / "masks" / f"r{i}.png", exif=exif)
    dm = SegmentationDataModule(seg_config(tmp_path), NONE_AUGMENT, 2, 0)
    img, mask = dm.raw_pair("train", 0)
    assert img.shape[:2] == mask.shape == (96, 64)


def test_gray_images_can_feed_a_one_channel_encoder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        gray = rng.integers(0, 255, (40, 40), dtype=np.uint8)
        write_pair(tmp_path, f"g{i}", gray, (gray > 128).astype(np.uint8) * 255)
    dm = SegmentationDataModule(seg_config(tmp_path, grayscale="adapt"), NONE_AUGMENT, 2, 0)
    assert dm.info.image_channels == 1 and dm.in_chans == 1
    from finetune.data.transforms import Preprocessing

    dm.set_preprocessing(Preprocessing((32, 32), (0.5,), (0.5,), "bilinear", 1))
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 1, 32, 32)
    model = build_segmentation_model(
        resolve_weights("tf_efficientnet_lite0"), "unet", 1, 2, decoder_channels=[16, 16, 16, 16, 16]
    )
    rgb = load_state_dict(resolve_weights("tf_efficientnet_lite0").file)["conv_stem.weight"]
    stem = model.backbone.state_dict()["model.conv_stem.weight"]
    torch.testing.assert_close(stem, rgb.sum(dim=1, keepdim=True))  # timm's adapt_input_conv: RGB summed
    assert model(images).shape == (2, 2, 32, 32)
    with pytest.raises(DatasetError, match="needs grayscale images"):
        squares(tmp_path / "rgb", n=4)
        SegmentationDataModule(seg_config(tmp_path / "rgb", grayscale="adapt"), NONE_AUGMENT, 2, 0)


@pytest.mark.parametrize(
    "override, key",
    [
        ("init_from=runs/old", "init_from"),
        ("threshold=tune", "threshold"),
        ("threshold=0.3", "threshold"),
        ("imbalance=weighted_loss", "imbalance"),
    ],
)
def test_keys_segmentation_does_not_read_are_refused_by_name(override, key):
    """The schema of task=segmentation has no key of task=classification: composing refuses it, by name."""
    from finetune.commands.args import compose_config as compose_checked
    from finetune.run.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{override}: {key} is a key of task=classification, and this run is "):
        compose_checked(["task=segmentation", "head=unet", "dataset=seg_folder", override])


@pytest.mark.parametrize(
    "override", ["segmentation.loss=dice", "segmentation.class_weights=true", "segmentation.overlays=9"]
)
def test_segmentation_keys_are_refused_for_classification(override):
    from finetune.commands.args import compose_config as compose_checked
    from finetune.run.errors import ConfigError

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{override}: {key} is a key of task=segmentation, and this run is "):
        compose_checked([override])


def test_metrics_count_pixels_without_the_deterministic_fallback(monkeypatch):
    """Under trainer.deterministic=true torchmetrics would compare every pixel with every AUC bin
    (pixels x 4000 bins: 131 GB for one 64 px batch of 8); the counts must come out the same, by bincount."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 128, 128), torch.randint(0, 2, (2, 128, 128))
    free = SegmentationMetrics(2, 255)
    free.update(logits, target)
    calls, bincount = [], torch.bincount
    monkeypatch.setattr(torch, "bincount", lambda *a, **kw: calls.append(1) or bincount(*a, **kw))
    torch.use_deterministic_algorithms(True)
    try:
        strict = SegmentationMetrics(2, 255)
        strict.update(logits, target)
        assert torch.are_deterministic_algorithms_enabled()  # the setting is restored
    finally:
        torch.use_deterministic_algorithms(False)
    assert calls  # torch.bincount counted, not the pixels x bins comparison
    for key, value in free.compute().items():
        assert torch.equal(value, strict.compute()[key]), key
