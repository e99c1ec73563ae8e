"""Fault injection on data (issue 25, items 7, 8, 10, 18; issue 29's image rule): folder links that
lead back into the dataset or outside it, MedMNIST files whose arrays disagree or hold Python
objects, a JPEG cut short and closed with its end marker on every path that reads images (train,
predict, explain, export parity, the Python API), and one rule for which suffixes are images.
Each case ends in one ``finetune: error:`` line (exit 2, no traceback) or a one-line warning, and
leaves the inputs unchanged (sha256 of every file)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.commands import explain as explain_command
from finetune.commands import export as export_command
from finetune.commands import predict as predict_command
from finetune.data.configs import CsvConfig, FolderConfig, MedmnistConfig
from finetune.data.files import find_images, reading_training_data
from finetune.data.folders import load_csv, load_imagefolder
from finetune.data.medmnist import load_medmnist_source
from finetune.run.errors import DatasetError, FinetuneError

from ..helpers import (
    assert_refused,
    class_folders,
    cli_in_process,
    export_tiny_resnet,
    jpeg_bytes,
    tree_hashes,
    write_png,
)

CLASSES = ["ant", "bee"]


# --- helpers ------------------------------------------------------------------------------------


def write_cut_jpeg(path: Path, seed: int = 0) -> Path:
    """A JPEG cut at half its length and closed with its end marker: PIL decodes it without an error."""
    whole = jpeg_bytes(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    return path


def images_per_class(source) -> dict[str, int]:
    """Distinct image files per class name over every split (test may reuse val)."""
    seen: dict[Path, int] = {}
    for split in source.splits.values():
        for path, target in zip(split.images, split.targets):
            seen[Path(path)] = int(target)
    return {name: sum(1 for t in seen.values() if t == i) for i, name in enumerate(source.class_names)}


def labelled_as(source, class_name: str) -> set[str]:
    """Names of the files labelled ``class_name``."""
    index = source.class_names.index(class_name)
    return {
        Path(p).name for split in source.splits.values() for p, t in zip(split.images, split.targets) if int(t) == index
    }


def folder_config(root: Path, **keys) -> FolderConfig:
    return FolderConfig(kind="imagefolder", root=str(root), val_fraction=0.34, test_fraction=0.0, **keys)


def one_error_line(err: str, *fragments: str) -> str:
    """stderr holds exactly one ``finetune: error:`` line with every fragment, and no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("finetune: error: ")]
    assert len(errors) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# --- item 7: folder links ----------------------------------------------------------------------


def test_a_link_looping_back_to_its_parent_is_not_followed(tmp_path, caplog):
    root = class_folders(tmp_path / "data")
    (root / "ant" / "loop").symlink_to("..")
    before = tree_hashes(tmp_path / "data" / "bee")
    with caplog.at_level(logging.WARNING), reading_training_data():  # where a listing says what it left out
        source = load_imagefolder(folder_config(root))
    assert images_per_class(source) == {"ant": 3, "bee": 3}
    assert labelled_as(source, "ant") == {"ant0.png", "ant1.png", "ant2.png"}  # no bee trained as an ant
    warnings = [r.getMessage() for r in caplog.records if "folder link" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "ant/loop -> .." in warnings[0] and "leads back into" in warnings[0], warnings[0]
    assert tree_hashes(tmp_path / "data" / "bee") == before


def test_a_link_to_another_class_is_not_followed(tmp_path, caplog):
    root = class_folders(tmp_path / "data")
    (root / "ant" / "more").symlink_to(root / "bee")
    with caplog.at_level(logging.WARNING), reading_training_data():  # where a listing says what it left out
        source = load_imagefolder(folder_config(root))
    assert images_per_class(source) == {"ant": 3, "bee": 3}
    assert "ant/more -> " in caplog.text and "leads back into" in caplog.text


def test_a_class_folder_linked_to_another_class_is_left_out(tmp_path, caplog):
    root = class_folders(tmp_path / "data")
    write_png(root / "wasp" / "w0.png", 99)
    (root / "copy").symlink_to(root / "bee")
    with caplog.at_level(logging.WARNING), reading_training_data():  # where a listing says what it left out
        source = load_imagefolder(folder_config(root))
    assert source.class_names == ["ant", "bee", "wasp"]  # not a fourth class holding the bees again
    assert "copy -> " in caplog.text


def test_a_link_outside_the_root_is_followed_only_when_allowed(tmp_path, caplog):
    root = class_folders(tmp_path / "data")
    for i in range(2):
        write_png(tmp_path / "elsewhere" / f"extra{i}.png", 50 + i)
    (root / "ant" / "extra").symlink_to(tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING), reading_training_data():  # where a listing says what it left out
        source = load_imagefolder(folder_config(root))
    assert images_per_class(source) == {"ant": 3, "bee": 3}
    assert "ant/extra -> " in caplog.text and "dataset.allow_outside_root=true" in caplog.text
    allowed = load_imagefolder(folder_config(root, allow_outside_root=True))
    assert images_per_class(allowed) == {"ant": 5, "bee": 3}


def test_a_class_folder_linked_outside_the_root_is_a_class_when_allowed(tmp_path):
    # the class folders are listed twice (names, then images): the link must be followed both times
    root = class_folders(tmp_path / "data")
    for i in range(3):
        write_png(tmp_path / "nas" / "wasp" / f"wasp{i}.png", 80 + i)
    (root / "wasp").symlink_to(tmp_path / "nas" / "wasp")
    allowed = load_imagefolder(folder_config(root, allow_outside_root=True))
    assert images_per_class(allowed) == {"ant": 3, "bee": 3, "wasp": 3}


def test_a_loop_below_an_allowed_outside_link_is_not_followed(tmp_path):
    root = class_folders(tmp_path / "data")
    write_png(tmp_path / "elsewhere" / "extra0.png", 50)
    (tmp_path / "elsewhere" / "again").symlink_to(tmp_path / "elsewhere")
    (root / "ant" / "extra").symlink_to(tmp_path / "elsewhere")
    allowed = load_imagefolder(folder_config(root, allow_outside_root=True))
    assert images_per_class(allowed) == {"ant": 4, "bee": 3}


@contextlib.contextmanager
def no_root_handler() -> Iterator[None]:
    """Inside: the root logger without pytest's capture handlers, as in a ``finetune`` process: a warning no
    handler takes goes to stderr (logging's last resort), where the command's output is read."""
    handlers = logging.root.handlers[:]
    logging.root.handlers.clear()
    try:
        yield
    finally:
        logging.root.handlers[:] = handlers


def test_the_cli_trains_a_looped_folder_with_its_real_counts(tmp_path):
    root = class_folders(tmp_path / "data", per_class=4)
    (root / "ant" / "loop").symlink_to("..")
    before = tree_hashes(root / "bee")
    with no_root_handler():
        done = cli_in_process(
            "plan",
            "dataset=imagefolder",
            f"dataset.root={root}",
            "backbone.name=resnet10t",
            "backbone.pretrained=false",
            "dataset.image_size=32",
            "dataset.num_workers=0",
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "ant/loop -> .." in output
    assert tree_hashes(root / "bee") == before


def test_predict_folders_skip_a_looping_link(tmp_path, caplog):
    write_png(tmp_path / "in" / "a.png", 1)
    (tmp_path / "in" / "loop").symlink_to("..")
    with caplog.at_level(logging.WARNING):
        found = find_images(str(tmp_path / "in"))
    assert found == [tmp_path / "in" / "a.png"]
    assert "loop -> .." in caplog.text


def test_predict_globs_do_not_follow_a_looping_link(tmp_path):
    write_png(tmp_path / "in" / "a.png", 1)
    (tmp_path / "in" / "loop").symlink_to("..")
    assert find_images(str(tmp_path / "in" / "**" / "*.png")) == [tmp_path / "in" / "a.png"]


# --- issue 29: one rule for which files are images ----------------------------------------------


def test_gif_is_not_an_image_on_any_route(tmp_path):
    root = class_folders(tmp_path / "data")
    Image.new("P", (8, 8)).save(root / "ant" / "placeholder.gif")
    from_folders = load_imagefolder(folder_config(root))
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.*"))]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    csv_config = CsvConfig(kind="csv", csv=str(root / "labels.csv"), val_fraction=0.34, test_fraction=0.0)
    with pytest.raises(DatasetError) as refused:
        load_csv(csv_config)
    message = str(refused.value)
    assert "\n" not in message and "'ant/placeholder.gif'" in message and ".gif" in message
    assert "dataset.on_error=skip" in message
    skipped = load_csv(CsvConfig(**{**csv_config.__dict__, "on_error": "skip"}))
    assert images_per_class(skipped) == images_per_class(from_folders) == {"ant": 3, "bee": 3}
    assert skipped.skipped == 1
    assert (root / "ant" / "placeholder.gif") not in find_images(str(root))


def test_hymenoptera_folders_and_csv_count_the_same_images(shared_data, tmp_path):
    """The real case: hymenoptera's train/ants holds a GIF placeholder (imageNotFound.gif)."""
    train = shared_data / "classification" / "hymenoptera" / "train"
    files = sorted(p for p in train.rglob("*") if p.is_file())
    assert len(files) == 245
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files))
    config = CsvConfig(kind="csv", csv=str(tmp_path / "labels.csv"), on_error="skip", allow_outside_root=True)
    from_csv = load_csv(config)
    from_folders = load_imagefolder(FolderConfig(kind="imagefolder", root=str(train)))
    assert images_per_class(from_csv) == images_per_class(from_folders) == {"ants": 123, "bees": 121}


# --- items 8 and 18: MedMNIST arrays --------------------------------------------------------------


def medmnist_copy(shared_data: Path, path: Path, change) -> Path:
    """BreastMNIST's real arrays, ``change(arrays)`` applied, saved to ``path``."""
    with np.load(shared_data / "medmnist" / "breastmnist.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    change(arrays)
    np.savez(path, **arrays)
    return path


def test_medmnist_with_fewer_labels_than_images_is_refused(shared_data, tmp_path):
    path = medmnist_copy(
        shared_data, tmp_path / "breastmnist.npz", lambda a: a.update(train_labels=a["train_labels"][:100])
    )
    before = tree_hashes(tmp_path)
    with pytest.raises(DatasetError) as refused:
        load_medmnist_source(MedmnistConfig(kind="medmnist", name="breastmnist", file=str(path)))
    message = str(refused.value)
    assert "\n" not in message
    for fragment in (str(path), "train_images", "train_labels", "546", "100"):
        assert fragment in message, (fragment, message)
    assert tree_hashes(tmp_path) == before


def test_medmnist_count_mismatch_in_the_test_split_is_refused_too(shared_data, tmp_path):
    path = medmnist_copy(
        shared_data, tmp_path / "breastmnist.npz", lambda a: a.update(test_images=a["test_images"][:-6])
    )
    with pytest.raises(DatasetError, match=r"test_images.*150.*test_labels.*156"):
        load_medmnist_source(MedmnistConfig(kind="medmnist", name="breastmnist", file=str(path)))


def test_medmnist_object_array_is_one_line_without_allow_pickle(tmp_path):
    arrays = {
        f"{s}_{k}": np.zeros((4, 28, 28) if k == "images" else (4, 1), np.uint8)
        for s in ("train", "val", "test")
        for k in ("images", "labels")
    }
    arrays["val_images"] = np.array([np.zeros((28, 28), np.uint8)] * 3 + [None], dtype=object)
    path = tmp_path / "breastmnist.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as refused:
        load_medmnist_source(MedmnistConfig(kind="medmnist", name="breastmnist", file=str(path)))
    message = str(refused.value)
    assert str(path) in message and "val_images" in message and "Python objects" in message, message
    assert "allow_pickle" not in message and "\n" not in message


def test_a_pickle_posing_as_medmnist_npz_is_refused_without_allow_pickle(tmp_path):
    path = tmp_path / "breastmnist.npz"
    np.save(path.with_suffix(".npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    path.with_suffix(".npy").rename(path)
    with pytest.raises(DatasetError) as refused:
        load_medmnist_source(MedmnistConfig(kind="medmnist", name="breastmnist", file=str(path)))
    message = str(refused.value)
    assert str(path) in message and "allow_pickle" not in message and "\n" not in message, message


def test_cli_medmnist_mismatch_is_one_line_exit_2(shared_data, tmp_path):

    path = medmnist_copy(
        shared_data, tmp_path / "breastmnist.npz", lambda a: a.update(train_labels=a["train_labels"][:100])
    )
    done = cli_in_process(
        "plan",
        "dataset=medmnist",
        "dataset.name=breastmnist",
        f"dataset.file={path}",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "dataset.image_size=32",
        cwd=tmp_path,
    )
    assert_refused(done, "train_images holds 546 images but train_labels holds 100 labels")


# --- item 10: one image check on every path that reads images ----------------------------------


@pytest.fixture(scope="module")
def head_export(tmp_path_factory) -> Path:
    """A tiny resnet10t (random stand-in "pretrained" weights, random head) exported as head.safetensors."""
    return export_tiny_resnet(tmp_path_factory.mktemp("data_fault_export"), CLASSES, ("head",)) / "head.safetensors"


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Two good images and a cut JPEG closed with its end marker."""
    folder = tmp_path / "inputs"
    write_png(folder / "a.png", 1)
    (folder / "b.jpg").write_bytes(jpeg_bytes(2))
    write_cut_jpeg(folder / "cut.jpg", 3)
    return folder


def test_predict_stops_at_a_cut_jpeg_by_default(head_export, inputs, tmp_path, capsys):
    out = tmp_path / "p.csv"
    before = tree_hashes(inputs)
    assert predict_command.main([f"export={head_export}", f"inputs={inputs}", f"out={out}"]) == 2
    one_error_line(capsys.readouterr().err, f"{inputs / 'cut.jpg'}", "JPEG data ends early", "on_error=skip")
    assert not out.exists() and tree_hashes(inputs) == before


def test_predict_on_error_skip_predicts_the_rest_and_lists_the_skipped(head_export, inputs, tmp_path, capsys):
    out = tmp_path / "p.csv"
    argv = [f"export={head_export}", f"inputs={inputs}", f"out={out}", "on_error=skip"]
    assert predict_command.main(argv) == 0
    err = capsys.readouterr().err
    assert "2 prediction(s)" in err and "skipped 1 unreadable input(s)" in err and "cut.jpg" in err, err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.jpg", "cut.jpg"]
    assert all(r["prediction"] in CLASSES and r["error"] == "" for r in rows[:2])
    assert rows[2]["prediction"] == "" and "JPEG data ends early" in rows[2]["error"]
    json_out = tmp_path / "p.json"
    assert predict_command.main([*argv[:2], f"out={json_out}", "on_error=skip"]) == 0
    record = json.loads(json_out.read_text())
    assert [Path(p["path"]).name for p in record["predictions"]] == ["a.png", "b.jpg"]
    assert [Path(s["path"]).name for s in record["skipped"]] == ["cut.jpg"]
    assert "JPEG data ends early" in record["skipped"][0]["error"]


def test_predict_on_error_takes_only_stop_or_skip(head_export, inputs, tmp_path, capsys):
    argv = [f"export={head_export}", f"inputs={inputs}", f"out={tmp_path / 'p.csv'}", "on_error=ignore"]
    assert predict_command.main(argv) == 2
    one_error_line(capsys.readouterr().err, "on_error='ignore'", "stop", "skip")


def test_the_python_api_refuses_a_cut_jpeg(head_export, inputs):
    model = finetune.load(head_export)
    assert len(model.predict([inputs / "a.png", inputs / "b.jpg"]).labels) == 2
    with pytest.raises(FinetuneError, match=r"cut\.jpg: JPEG data ends early"):
        model.predict([inputs / "a.png", inputs / "cut.jpg"])


def test_explain_refuses_a_cut_jpeg(finished_run, inputs, tmp_path, capsys):
    out = tmp_path / "explained"
    assert explain_command.main([f"run={finished_run}", f"inputs={inputs / 'cut.jpg'}", f"out={out}"]) == 2
    one_error_line(capsys.readouterr().err, f"{inputs / 'cut.jpg'}", "JPEG data ends early")
    assert not (out / "explain.json").exists() and not (out / "cut").exists() and not (out / "filters.png").exists()


def test_export_parity_refuses_a_cut_jpeg(finished_run, inputs, tmp_path, capsys):
    out = tmp_path / "exported"
    argv = [f"run={finished_run}", "format=head", f"out={out}", f"images={inputs / 'cut.jpg'}"]
    assert export_command.main(argv) == 2
    one_error_line(capsys.readouterr().err, f"{inputs / 'cut.jpg'}", "JPEG data ends early")
    assert not (out / "head.safetensors").exists()


def test_segmentation_training_refuses_a_cut_jpeg(tmp_path):
    from finetune.data.segmentation import SegmentationDataModule

    root = tmp_path / "seg"
    for i in range(4):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"s{i}.jpg").write_bytes(jpeg_bytes(i))
        Image.fromarray(np.zeros((64, 48), np.uint8)).save(write_png(root / "masks" / f"s{i}.png", i))
    write_cut_jpeg(root / "images" / "s0.jpg", 0)
    dataset = {"kind": "seg_folder", "root": str(root), "mask_mode": "binary", "num_workers": 0}
    with pytest.raises(DatasetError, match=r"s0\.jpg: JPEG data ends early"):
        SegmentationDataModule(dataset, {}, batch_size=2, seed=0)
