"""Data module tests: real configs from conf/, tiny image trees written to tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from finetune.data.datamodule import ClassificationDataModule
from finetune.data.folders import sort_class_names
from finetune.data.images import read_image
from finetune.data.sources import stratified_split
from finetune.data.transforms import (
    Augment,
    AugmentError,
    Preprocessing,
    augment_ops,
    gray_preprocessing,
    is_deterministic,
    train_transform,
)
from finetune.run.errors import DatasetError

from ..helpers import group_option

REPO = Path(__file__).resolve().parents[2]
HYMENOPTERA = Path(__file__).resolve().parents[3] / "shared" / "data" / "classification" / "hymenoptera"
RGB_PRE = Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear", in_chans=3)


def dataset_cfg(name: str, **overrides) -> DictConfig:
    """conf/dataset/<name>.yaml in struct mode (unknown keys fail, as under Hydra) with overrides."""
    cfg = group_option("dataset", name)
    OmegaConf.set_struct(cfg, True)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def augment_cfg(name: str) -> DictConfig:
    return OmegaConf.load(REPO / "conf" / "augment" / f"{name}.yaml")


def make_dm(dataset: DictConfig, augment: str = "none", batch_size: int = 8, workers: int = 0):
    return ClassificationDataModule(dataset, augment_cfg(augment), batch_size, num_workers=workers, seed=0)


def write_images(folder: Path, n: int, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)) + n)
    channels = {"RGB": 3, "L": 1}[mode]
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
        path = folder / f"img{i:03d}.png"
        Image.fromarray(pixels, mode).save(path)
        paths.append(path)
    return paths


def image_tree(root: Path, classes: dict[str, int], mode: str = "RGB") -> Path:
    for name, n in classes.items():
        write_images(root / name, n, mode)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# --- digits -----------------------------------------------------------------------------------


def test_digits_end_to_end():
    dm = make_dm(dataset_cfg("digits"), batch_size=64)
    assert dm.info.class_names == [str(d) for d in range(10)]
    assert dm.info.image_channels == 1 and dm.in_chans == 3 and not dm.info.multilabel
    assert sum(dm.split_sizes.values()) == 1797
    assert sum(dm.info.class_counts) == dm.split_sizes["train"]
    totals = np.bincount(load_digits().target)
    assert np.all(np.abs(np.array(dm.info.class_counts) - 0.7 * totals) <= 2)

    pixels = np.clip(load_digits().images * 16, 0, 255) / 255
    pre = Preprocessing((16, 16), (pixels.mean(),) * 3, (pixels.std(),) * 3, "bilinear", 3)
    dm.set_preprocessing(pre)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 3, 16, 16) and images.dtype == torch.float32
    assert targets.shape == (64,) and targets.dtype == torch.int64
    val = torch.cat([x for x, _ in dm.val_dataloader()])
    # normalized with the data's own pixel statistics
    assert abs(val.mean().item()) < 0.15 and 0.75 < val.std().item() < 1.25
    assert torch.equal(val[:, 0], val[:, 1])  # gray replicated to 3 channels


def test_stratified_split_is_disjoint_covering_and_seeded():
    labels = load_digits().target
    train, val, test = stratified_split(labels, 0.15, 0.15, seed=0)
    for a, b in ((train, val), (train, test), (val, test)):
        assert len(np.intersect1d(a, b)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(1797))
    for part, fraction in ((train, 0.7), (val, 0.15), (test, 0.15)):
        assert np.all(np.abs(np.bincount(labels[part], minlength=10) - fraction * np.bincount(labels)) <= 2)
    again = stratified_split(labels, 0.15, 0.15, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(val, stratified_split(labels, 0.15, 0.15, seed=1)[1])


def test_stratified_split_keeps_every_class_in_train():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 2])
    train, _, _ = stratified_split(labels, 0.3, 0.3, seed=0)
    assert set(labels[train]) == {0, 1, 2}


def test_digits_never_flipped_even_with_light_augment():
    dm = make_dm(dataset_cfg("digits"), augment="light")
    assert dm.augment.hflip == 0 and dm.augment.vflip == 0
    assert dm.augment.rotate > 0  # the rest of the menu stays on


# --- image folders ------------------------------------------------------------------------------


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="shared hymenoptera data not present")
def test_hymenoptera_train_val_layout(caplog):
    before = snapshot(HYMENOPTERA)
    with caplog.at_level(logging.WARNING):
        dm = make_dm(dataset_cfg("imagefolder", root=str(HYMENOPTERA)))
    assert dm.info.class_names == ["ants", "bees"]
    # train/ants holds 124 files, one of them imageNotFound.gif: not an image extension we read
    assert dm.info.class_counts == [123, 121]
    assert dm.split_sizes == {"train": 244, "val": 153, "test": 153}
    # the test runs on val; training says so where it tests (tests/e2e/test_console_log.py), not every loader
    assert dm.test_is_val and "testing on the val split" not in caplog.text
    assert dm.info.image_channels == 3
    (image, label), *_ = dm.sample_images("val", 2)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and label in (0, 1)
    assert snapshot(HYMENOPTERA) == before


def test_imagefolder_flat_split_is_stratified_and_reproducible(tmp_path):
    root = image_tree(tmp_path / "flat", {"cat": 20, "dog": 20, "owl": 20})
    dm = make_dm(dataset_cfg("imagefolder", root=str(root)))
    assert dm.info.class_names == ["cat", "dog", "owl"]
    assert dm.split_sizes == {"train": 42, "val": 9, "test": 9}
    files = {name: set(s.images) for name, s in dm.splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not files[a] & files[b]
    assert len(files["train"] | files["val"] | files["test"]) == 60
    assert all(set(s.targets) == {0, 1, 2} for s in dm.splits.values())  # every class in every split
    again = make_dm(dataset_cfg("imagefolder", root=str(root)))
    assert {name: set(s.images) for name, s in again.splits.items()} == files
    other = make_dm(dataset_cfg("imagefolder", root=str(root), split_seed=1))
    assert set(other.splits["val"].images) != files["val"]


def test_imagefolder_without_val_folder_carves_val_from_train(tmp_path):
    image_tree(tmp_path / "train", {"a": 10, "b": 10})
    image_tree(tmp_path / "test", {"a": 3, "b": 3})
    dm = make_dm(dataset_cfg("imagefolder", root=str(tmp_path)))
    assert dm.split_sizes == {"train": 17, "val": 3, "test": 6}


def test_class_names_sort_numerically_when_all_integers():
    assert sort_class_names({"10", "2", "1"}) == ["1", "2", "10"]
    assert sort_class_names({"b", "10", "a"}) == ["10", "a", "b"]


# --- csv ----------------------------------------------------------------------------------------


def test_csv_relative_and_absolute_paths_with_split_column(tmp_path):
    images = write_images(tmp_path / "data" / "imgs", 8)
    outside = write_images(tmp_path / "elsewhere", 2)
    rows = ["path,label,split"]
    rows += [f"imgs/{p.name},{'yes' if i % 2 else 'no'},train" for i, p in enumerate(images[:6])]
    rows += [f"imgs/{images[6].name},yes,val", f"imgs/{images[7].name},no,valid"]
    rows += [f"{outside[0]},no,test", f"{outside[1]},yes, Test "]
    (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    dm = make_dm(dataset_cfg("csv", csv=str(tmp_path / "data" / "labels.csv"), allow_outside_root=True), batch_size=4)
    assert dm.info.class_names == ["no", "yes"] and dm.info.class_counts == [3, 3]
    assert dm.split_sizes == {"train": 6, "val": 2, "test": 2}
    assert set(dm.splits["test"].images) == set(outside)
    dm.set_preprocessing(RGB_PRE)
    images_batch, targets = next(iter(dm.test_dataloader()))
    assert images_batch.shape == (2, 3, 16, 16) and targets.dtype == torch.int64


def test_csv_multilabel_gives_multi_hot_targets(tmp_path):
    images = write_images(tmp_path, 12)
    labels = ["cat;dog", "dog", "cat", "owl;cat", "dog;owl", "cat;dog;owl"] * 2
    text = "path,label\n" + "".join(f"{p.name},{label}\n" for p, label in zip(images, labels))
    (tmp_path / "labels.csv").write_text(text)
    dataset = dataset_cfg("csv", csv=str(tmp_path / "labels.csv"), multilabel=True, test_fraction=0.0)
    dm = make_dm(dataset, batch_size=32)
    assert dm.info.multilabel and dm.info.class_names == ["cat", "dog", "owl"]
    dm.set_preprocessing(RGB_PRE)
    _, targets = next(iter(dm.train_dataloader()))
    assert targets.dtype == torch.float32 and targets.shape == (dm.split_sizes["train"], 3)
    assert set(targets.unique().tolist()) == {0.0, 1.0}
    assert dm.info.class_counts == targets.sum(0).int().tolist()
    _, positives = dm.sample_images("train", 1)[0]
    assert isinstance(positives, list) and positives


# --- channels -----------------------------------------------------------------------------------


def test_grayscale_replicate_vs_adapt(tmp_path):
    root = image_tree(tmp_path / "gray", {"a": 6, "b": 6}, mode="L")
    replicate = make_dm(dataset_cfg("imagefolder", root=str(root)))
    adapt = make_dm(dataset_cfg("imagefolder", root=str(root), grayscale="adapt"))
    assert replicate.info.image_channels == adapt.info.image_channels == 1
    assert (replicate.in_chans, adapt.in_chans) == (3, 1)

    gray_mean, gray_std = gray_preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    adapt.set_preprocessing(Preprocessing((20, 20), gray_mean, gray_std, "bicubic", in_chans=1))
    replicate.set_preprocessing(Preprocessing((20, 20), (0.5,) * 3, (0.25,) * 3, "bicubic", in_chans=3))
    for dm, channels in ((replicate, 3), (adapt, 1)):
        images, _ = next(iter(dm.train_dataloader()))
        assert images.shape[1:] == (channels, 20, 20)
    with pytest.raises(ValueError, match="in_chans"):
        adapt.set_preprocessing(RGB_PRE)


def test_color_images_refuse_grayscale_adapt(tmp_path):
    root = image_tree(tmp_path / "rgb", {"a": 3, "b": 3})
    with pytest.raises(DatasetError, match="dataset.grayscale=replicate"):
        make_dm(dataset_cfg("imagefolder", root=str(root), grayscale="adapt"))


def test_mixed_gray_and_color_images_become_rgb(tmp_path):
    write_images(tmp_path / "a", 4, mode="L")
    write_images(tmp_path / "b", 4, mode="RGB")
    dm = make_dm(dataset_cfg("imagefolder", root=str(tmp_path), test_fraction=0.0))
    assert dm.info.image_channels == 3
    assert all(image.shape[2] == 3 for image, _ in dm.sample_images("train", 10))


def test_read_image_modes(tmp_path):
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "wide.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (5, 4)).save(tmp_path / "palette.png")
    Image.new("CMYK", (5, 4)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (5, 4), 7).save(tmp_path / "gray.png")
    wide = read_image(tmp_path / "wide.png", channels=1)
    assert wide.shape == (4, 5, 1) and wide.dtype == np.uint8 and wide.max() == 255
    assert read_image(tmp_path / "alpha.png", 3)[0, 0].tolist() == [10, 20, 30]
    for name in ("palette.png", "cmyk.jpg"):
        assert read_image(tmp_path / name, 3).shape == (4, 5, 3)
    assert read_image(tmp_path / "gray.png", 1).shape == (4, 5, 1)
    assert read_image(tmp_path / "gray.png", 3).shape == (4, 5, 3)


# --- bad input ----------------------------------------------------------------------------------


def corrupt(path: Path) -> Path:
    path.write_bytes(b"definitely not an image")
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def jpeg(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_missing_or_unset_root_names_the_key(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.root=.*does not exist"):
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match="dataset.root is not set"):
        make_dm(dataset_cfg("imagefolder"))


def test_empty_class_folder_is_named(tmp_path):
    image_tree(tmp_path, {"full": 3, "other": 3})
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"hollow holds no images"):
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path)))


def test_single_class_is_refused(tmp_path):
    image_tree(tmp_path, {"only": 5})
    with pytest.raises(DatasetError, match="at least 2"):
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path)))


def test_class_only_in_val_is_refused(tmp_path):
    image_tree(tmp_path / "train", {"a": 3, "b": 3})
    image_tree(tmp_path / "val", {"a": 1, "wasp": 1})
    with pytest.raises(DatasetError, match="wasp"):
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path)))


@pytest.mark.parametrize("layout", ["empty-val-folder", "too-few-to-carve"])
def test_empty_split_is_refused(tmp_path, layout):
    if layout == "empty-val-folder":
        image_tree(tmp_path / "train", {"a": 3, "b": 3})
        (tmp_path / "val" / "a").mkdir(parents=True)
    else:
        image_tree(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match="split has no images"):
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path)))


def test_hidden_folders_are_not_classes(tmp_path):
    image_tree(tmp_path, {"a": 4, "b": 4, ".ipynb_checkpoints": 1})
    assert make_dm(dataset_cfg("imagefolder", root=str(tmp_path))).info.class_names == ["a", "b"]


@pytest.mark.parametrize("damage", ["garbage", "truncated_jpeg", "truncated_png"])
def test_unreadable_image_raises_naming_the_file(tmp_path, damage):
    image_tree(tmp_path, {"a": 4, "b": 4})
    bad = {
        "garbage": lambda: corrupt(tmp_path / "a" / "bad.jpg"),
        "truncated_jpeg": lambda: truncate(jpeg(tmp_path / "a" / "cut.jpg")),
        "truncated_png": lambda: truncate(tmp_path / "a" / "img000.png"),
    }[damage]()
    with pytest.raises(DatasetError, match=str(bad)) as error:
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path)))
    assert "dataset.on_error=skip" in str(error.value)


def test_on_error_skip_leaves_unreadable_images_out(tmp_path, caplog):
    image_tree(tmp_path, {"a": 10, "b": 10})
    corrupt(tmp_path / "a" / "bad.jpg")
    truncate(jpeg(tmp_path / "b" / "cut.jpg"))
    with caplog.at_level(logging.WARNING):
        dm = make_dm(dataset_cfg("imagefolder", root=str(tmp_path), on_error="skip"))
    assert dm.skipped == 2 and sum(dm.split_sizes.values()) == 20
    assert "bad.jpg" in caplog.text and "cut.jpg" in caplog.text


def test_all_images_of_a_class_unreadable_is_refused(tmp_path):
    image_tree(tmp_path, {"a": 3})
    (tmp_path / "b").mkdir()
    corrupt(tmp_path / "b" / "x.png")
    with pytest.raises(DatasetError, match="'b' \\(no readable images\\)"):
        make_dm(dataset_cfg("imagefolder", root=str(tmp_path), on_error="skip"))


def write_csv(tmp_path: Path, text: str) -> Path:
    write_images(tmp_path / "imgs", 4)
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\nimgs/img000.png,a\n", r"lacks column\(s\) \['path'\]"),
        ("path,label\nimgs/img000.png,a\nimgs/missing.png,b\n", r"line 3: 'imgs/missing.png' not found"),
        ("path,label\nimgs/img000.png,\nimgs/img001.png,b\n", "line 2: empty label"),
        ("path,label,split\nimgs/img000.png,a,train\nimgs/img001.png,b,holdout\n", "line 3: unknown split"),
    ],
    ids=["missing-column", "missing-file", "empty-label", "unknown-split"],
)
def test_bad_csv_rows_are_named(tmp_path, text, message):
    csv_path = write_csv(tmp_path, text)
    with pytest.raises(DatasetError, match=message) as error:
        make_dm(dataset_cfg("csv", csv=str(csv_path)))
    assert str(csv_path) in str(error.value)


def test_csv_not_set_names_the_key():
    with pytest.raises(DatasetError, match="dataset.csv is not set"):
        make_dm(dataset_cfg("csv"))


def test_unknown_keys_are_refused():
    plain = dict(OmegaConf.to_container(dataset_cfg("digits")), colour="blue")
    with pytest.raises(DatasetError, match="colour"):
        ClassificationDataModule(plain, augment_cfg("none"), 8, 0, 0)
    with pytest.raises(AugmentError, match="sharpen"):
        ClassificationDataModule(dataset_cfg("digits"), {"sharpen": 0.5}, 8, 0, 0)
    with pytest.raises(AugmentError, match="true/false"):
        ClassificationDataModule(dataset_cfg("digits"), {"hflip": True}, 8, 0, 0)


def test_scanning_and_loading_leave_the_users_folder_unchanged(tmp_path):
    root = image_tree(tmp_path / "user", {"a": 6, "b": 6})
    corrupt(root / "a" / "broken.png")
    (root / "b" / "README.txt").write_text("notes")
    before = snapshot(root)
    dm = make_dm(dataset_cfg("imagefolder", root=str(root), on_error="skip"), augment="strong")
    dm.set_preprocessing(RGB_PRE)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        list(loader)
    dm.sample_images("train", 3)
    assert snapshot(root) == before


# --- transforms ---------------------------------------------------------------------------------


def test_deterministic_flag_follows_the_augment_group():
    assert make_dm(dataset_cfg("digits"), augment="none").train_transform_is_deterministic
    assert not make_dm(dataset_cfg("digits"), augment="light").train_transform_is_deterministic
    assert not make_dm(dataset_cfg("digits"), augment="strong").train_transform_is_deterministic


def test_augment_none_trains_on_exactly_the_eval_images():
    dm = make_dm(dataset_cfg("digits", val_fraction=0.5, test_fraction=0.0))
    dm.set_preprocessing(RGB_PRE)
    train, evaluation = dm.train_dataloader().dataset, dm.val_dataloader().dataset
    image = dm.splits["train"].image(0, 1)
    assert torch.equal(train.transform(image=image)["image"], evaluation.transform(image=image)["image"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hflip", 0.5),
        ("vflip", 0.5),
        ("crop_scale", [0.5, 1.0]),
        ("rotate", 5),
        ("shift", 0.1),
        ("zoom", 0.1),
        ("color_jitter", 0.2),
        ("hue", 0.1),
        ("dropout", 0.5),
    ],
)
def test_each_random_key_makes_training_random(key, value):
    assert is_deterministic(Augment.from_mapping({}))
    assert not is_deterministic(Augment.from_mapping({key: value}))


def test_dropout_keys_reach_coarse_dropout():
    augment = Augment.from_mapping({"dropout": 1.0, "dropout_holes": [3, 3], "dropout_size": [0.2, 0.3]})
    (op,) = augment_ops(augment)
    assert op.num_holes_range == (3, 3) and op.hole_height_range == op.hole_width_range == (0.2, 0.3)


@pytest.mark.parametrize("name", ["none", "light", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_augment_menu_builds_and_runs(name, channels):
    augment = Augment.from_mapping(OmegaConf.to_container(augment_cfg(name)))
    pre = RGB_PRE if channels == 3 else Preprocessing((16, 16), (0.5,), (0.25,), "bicubic", 1)
    image = np.random.default_rng(0).integers(0, 256, (30, 40, channels), dtype=np.uint8)
    out = train_transform(pre, channels, augment)(image=image)["image"]
    assert out.shape == (pre.in_chans, 16, 16) and out.dtype == torch.float32


def test_augmentation_is_seeded_and_differs_between_workers(tmp_path):
    """Identical images: any difference between items comes from the augmentation streams."""
    (source,) = write_images(tmp_path / "src", 1, size=(24, 24))
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "data" / name / f"{i}.png").write_bytes(source.read_bytes())

    def items() -> torch.Tensor:
        root = str(tmp_path / "data")
        dataset = dataset_cfg("imagefolder", root=root, val_fraction=0.25, test_fraction=0.0)
        dm = make_dm(dataset, augment="strong", batch_size=1, workers=2)
        dm.set_preprocessing(RGB_PRE)
        return torch.cat([x for x, _ in dm.train_dataloader()])

    first, second = items(), items()
    assert torch.equal(first, second)  # same seed, same augmentations
    assert not torch.equal(first[0], first[1])  # items 0 and 1 come from different workers


def test_dataloaders_need_preprocessing_first():
    with pytest.raises(RuntimeError, match="set_preprocessing"):
        make_dm(dataset_cfg("digits")).train_dataloader()


def test_preprocessing_helpers():
    mean, std = gray_preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))
    pre = Preprocessing((176, 160), (0.5,) * 3, (0.2,) * 3, "bicubic", 3)
    assert pre.to_dict() == {
        "size": [176, 160],
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
        "interpolation": "bicubic",
        "in_chans": 3,
    }
    with pytest.raises(ValueError, match="gray_preprocessing"):
        Preprocessing((8, 8), (0.5,) * 3, (0.5,) * 3, "bicubic", 1)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing((8, 8), (0.5,), (0.5,), "lanczos", 1)


@pytest.mark.parametrize("kind", ["digits", "imagefolder", "csv", "medmnist", "dicom_folder"])
def test_each_dataset_yaml_holds_exactly_the_keys_its_kind_reads(kind):
    from dataclasses import fields

    from finetune.data import DATASETS

    assert set(dataset_cfg(kind)) == {f.name for f in fields(DATASETS[kind].config_class())}


def test_a_key_of_another_kind_is_refused_by_name():
    from finetune.data.configs import dataset_config

    with pytest.raises(DatasetError, match=r"unknown dataset \(kind=digits\) key\(s\) \['csv'\]"):
        dataset_config({"kind": "digits", "csv": "labels.csv"})
