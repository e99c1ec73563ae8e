"""``finetune inspect`` on a 43-image copy of hymenoptera with known problems planted (an exact copy inside
train, an exact copy of a train image in val, a resized JPEG re-encoded copy in val, three label flips): each
detector finds what was planted and little else; the cleaned CSV leaves them out and never touches the data;
training and ``finetune advise`` on the inspected data warn about the leak. Features: efficientnet_lite0's
pip ImageNet weights at 128 px."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.inspect_validation import plant_folder
from finetune.data.inspection.duplicates import leak_groups
from finetune.data.inspection.store import ENV, fingerprint, leak_warning

from ..helpers import cli_in_process, one_torch_thread, squares, tree_hashes

COUNTS = {"exact_within": 1, "exact_cross": 1, "near_cross": 1, "flips": 3}


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    """The planted copy, its truth, and one inspect run over it (report folder and cleaned CSV)."""
    from ..conftest import SHARED_DATA

    hymenoptera = SHARED_DATA / "classification" / "hymenoptera"
    if not hymenoptera.is_dir():
        pytest.skip("../shared/data is not present")
    base = tmp_path_factory.mktemp("inspect")
    data = base / "hymenoptera"
    planted = plant_folder(hymenoptera, data, {"train": 14, "val": 6}, COUNTS)
    before = tree_hashes(data)
    with pytest.MonkeyPatch.context() as patch, one_torch_thread():
        patch.setenv(ENV, str(base / "store"))
        out = cli_in_process(
            "inspect",
            "dataset=imagefolder",
            f"dataset.root={data}",
            "dataset.image_size=224",
            "report=report",
            "out=clean.csv",
            cwd=base,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((base / "report" / "inspect.json").read_text())
    return {"base": base, "data": data, "planted": planted, "record": record, "out": out, "before": before}


def _groups(record: dict, key: str) -> list[set[tuple[str, str]]]:
    return [{(Path(n).parts[-3], Path(n).name) for n in g["names"]} for g in record[key]]


def test_each_detector_finds_what_was_planted(inspected):
    record, planted = inspected["record"], inspected["planted"]
    assert record["splits"] == {"train": 29, "val": 14}  # 28 + 1 copy; 12 + 2 copies; flips moved in train
    assert record["images"]["modes"] == {"RGB": 43} and record["images"]["channels"] == {"3": 43}
    assert sum(record["class_balance"]["train"].values()) == 29

    exact = _groups(record, "exact_duplicates")  # exactly the two planted pairs, one of them a leak
    assert sorted(map(sorted, exact)) == sorted(sorted(pair) for pair in planted.exact)
    assert [g["cross_split"] for g in record["exact_duplicates"]] == [True, False]  # leaks ranked first

    (near,) = planted.near  # the resized, re-encoded copy: both near detectors, nothing else
    assert _groups(record, "near_duplicates_hash") == [set(near)]
    assert _groups(record, "near_duplicates_features") == [set(near)]

    ranked = [("train", Path(r["name"]).name) for r in record["label_issues"]]
    assert set(planted.flips) <= set(ranked[:6]) and len(ranked) <= 10  # every flip, near the top
    flip = next(r for r in record["label_issues"] if Path(r["name"]).name.startswith("flip_"))
    assert flip["suggested_label"] != flip["given_label"] and flip["confidence"] < 0.5

    leaks = record["leaks"]  # the near copy found by both near detectors is one leak, not two
    assert leaks["groups"] == 2 and leaks["possible"] == 0
    assert leaks["by_detector"] == {"exact": 1, "near_hash": 1, "near_features": 1}
    assert [g["confirmed"] for g in record["leak_groups"]] == [True, True]
    text = inspected["out"].stdout
    assert "exact duplicates: 2 group(s), 1 across splits" in text and "LEAK: 2 group(s)" in text


def test_the_page_shows_every_finding(inspected):
    page = (inspected["base"] / "report" / "inspect.html").read_text()
    for title in ("Class balance", "Exact duplicates", "Near duplicates: perceptual hash", "Likely label issues"):
        assert f"<h2>{title}</h2>" in page
    record = inspected["record"]
    groups = 4 + 2 + 2 + 4  # members of: 2 exact groups, 1 phash, 1 features, the 2 leaks
    shown = groups + len(record["label_issues"]) + len(record["outliers"])  # every one below show=30
    assert page.count('src="data:image/png;base64,') == shown


def test_the_cleaned_csv_leaves_out_copies_keeps_label_issues_and_the_data_is_untouched(inspected):
    base, planted = inspected["base"], inspected["planted"]
    assert tree_hashes(inspected["data"]) == inspected["before"]
    with open(base / "clean.csv") as f:
        rows = list(csv.DictReader(f))
    kept = {(r["split"], Path(r["path"]).name) for r in rows}
    left_out = {pair[1] for pair in planted.exact + planted.near}
    assert not kept & left_out and all(pair[0] in kept for pair in planted.exact + planted.near)
    assert set(planted.flips) <= kept  # flagged label issues are listed, not removed, by default
    assert len(rows) == inspected["record"]["clean_csv"]["rows"] == 43 - 3
    assert all(Path(r["path"]).is_absolute() and r["label"] in ("ants", "bees") for r in rows)
    assert f"dataset.root={inspected['data']}" in inspected["out"].stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["out=clean.csv"], "exists: inspect never overwrites"),
        (["out={data}/train/clean.csv"], "is inside the data folder"),
        (["report={data}/report"], "is inside the data folder"),
        (["out=clean.txt"], "the cleaned label file is a CSV"),
        (["near_cosine=2"], "near_cosine='2': use a similarity in (0, 1]"),
        (["keep_label_issues=true"], "keep_label_issues= was replaced by drop_label_issues="),
    ],
)
def test_bad_outputs_are_refused_in_one_line_before_any_work(inspected, args, message):
    args = [a.format(data=inspected["data"]) for a in args]
    out = cli_in_process(
        "inspect", "dataset=imagefolder", f"dataset.root={inspected['data']}", *args, cwd=inspected["base"]
    )
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_training_and_advise_warn_about_the_leak_until_the_data_changes(inspected, monkeypatch, caplog):
    from finetune.tasks.registry import get_task

    from ..conftest import compose_config

    monkeypatch.setenv(ENV, str(inspected["base"] / "store"))
    cfg = compose_config("dataset=imagefolder", f"dataset.root={inspected['data']}")
    data = get_task(cfg.task).data_module(cfg)
    warning = leak_warning(data.splits)
    assert warning.startswith("finetune inspect found 2 group(s) of duplicate images across the splits")
    assert "out=clean.csv" in warning and str(inspected["base"] / "report" / "inspect.html") in warning

    args = ["dataset=imagefolder", f"dataset.root={inspected['data']}", "backbone.name=resnet10t"]
    args += ["backbone.pretrained=false", "dataset.image_size=32", "out=advice"]
    with one_torch_thread(), caplog.at_level("WARNING"):
        out = cli_in_process("advise", *args, cwd=inspected["base"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert warning in caplog.text  # logged by the training build advise shares

    monkeypatch.setenv(ENV, str(inspected["base"] / "elsewhere"))  # never inspected: nothing said, nothing hashed
    assert leak_warning(data.splits) is None


def test_drop_label_issues_leaves_them_out_of_train_only():
    from finetune.data.inspection.clean import dropped
    from finetune.data.inspection.items import Item

    items = [Item(split, i, f"{split}/{i}.png", None, 0) for i, split in enumerate(["train", "train", "val", "test"])]
    assert dropped(items, [], [], [1, 2, 3]) == {1: "likely label issue"}  # val/test flags stay: listed only


def test_the_leak_warning_of_array_data_does_not_suggest_a_label_file(tmp_path, monkeypatch):
    from finetune.data.inspection.store import save_findings
    from finetune.data.sources import Samples

    monkeypatch.setenv(ENV, str(tmp_path))
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1)
    splits = {"train": Samples(images[:2], np.zeros(2, np.int64)), "val": Samples(images[2:], np.zeros(1, np.int64))}
    leaks = {"groups": 1, "by_detector": {"exact": 1}, "example": "train #0 = val #0"}
    page = tmp_path / "r" / "inspect.html"
    save_findings(fingerprint(splits), {"leaks": leaks, "report": str(page)})
    gone = leak_warning(splits)  # the page was removed since (a temporary report folder)
    assert gone.endswith("or re-split the data (its page is gone: run finetune inspect again to see it)")
    assert str(page) not in gone
    page.parent.mkdir()
    page.write_text("<html></html>")
    warning = leak_warning(splits)
    assert warning.startswith("finetune inspect found 1 group(s)") and "out=clean.csv" not in warning
    assert f"see {page}" in warning and "remove the copies from the source arrays" in warning


def test_own_store_files_findings_in_its_folder_and_puts_the_environment_back(tmp_path, monkeypatch):
    from finetune.data.inspection.store import own_store, store_dir

    for before in (None, str(tmp_path / "user")):
        if before is None:
            monkeypatch.delenv(ENV)
        else:
            monkeypatch.setenv(ENV, before)
        with own_store(tmp_path / "own") as folder:
            assert store_dir() == folder == tmp_path / "own"
        assert os.environ.get(ENV) == before


def test_the_validation_records_each_piece_s_image_size():
    from benchmarks.inspect_validation import MEDMNIST_SIZE, PHOTO_SIZE, image_size

    sizes = {p: image_size(p) for p in ("planted_hymenoptera", "planted_breastmnist", "bloodmnist", "drive")}
    assert sizes == {
        "planted_hymenoptera": PHOTO_SIZE,
        "planted_breastmnist": MEDMNIST_SIZE,
        "bloodmnist": MEDMNIST_SIZE,
        "drive": None,  # read whole
    }


def test_the_validation_keeps_the_pieces_another_run_wrote_since_it_started(tmp_path, monkeypatch):
    """Two ``--only`` runs side by side: each piece is put into the file as it is then, not as it was."""
    from benchmarks import inspect_validation as validation

    monkeypatch.setattr(validation, "RESULTS", tmp_path)
    validation.save_piece("planted_breastmnist", {"scores": {"exact": 1}})
    validation.save_piece("drive", {"counts": {"images": 2}})  # the other run's piece
    validation.save_piece("planted_breastmnist", {"scores": {"exact": 2}})
    result = json.loads((tmp_path / "inspect.json").read_text())
    assert result["validation"] == {"breastmnist": {"scores": {"exact": 2}}}
    assert result["datasets"] == {"drive": {"counts": {"images": 2}}}


def test_the_fingerprint_follows_the_files_and_splits(tmp_path):
    from finetune.data.sources import Samples

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]))
    targets = np.zeros(3, np.int64)
    split = {"train": Samples(paths[:2], targets[:2]), "val": Samples(paths[2:], targets[2:])}
    moved = {"train": Samples(paths[:1], targets[:1]), "val": Samples(paths[1:], targets[1:])}
    first = fingerprint(split)
    assert first == fingerprint({**split, "test": split["val"]})  # test = val is seen once
    assert first != fingerprint(moved)
    paths[0].write_bytes(b"edited")
    assert first != fingerprint(split)


def test_segmentation_pairs_and_arrays_get_the_data_checks(tmp_path, monkeypatch):
    """Any kind: image/mask pairs (no per-image class: hashes only) and in-memory arrays (digits), whose
    images are not files a cleaned CSV could name."""
    monkeypatch.setenv(ENV, str(tmp_path / "store"))
    squares(tmp_path / "seg", n=6, size=32)
    copy = tmp_path / "seg" / "images" / "img00.png"
    (tmp_path / "seg" / "images" / "img06.png").write_bytes(copy.read_bytes())
    (tmp_path / "seg" / "masks" / "img06.png").write_bytes((tmp_path / "seg" / "masks" / "img00.png").read_bytes())
    args = [
        "task=segmentation",
        "head=unet",
        "dataset=seg_folder",
        f"dataset.root={tmp_path / 'seg'}",
        "report=seg-report",
    ]
    out = cli_in_process("inspect", *args, "dataset.mask_mode=binary", "dataset.val_fraction=0.3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "seg-report" / "inspect.json").read_text())
    assert sum(record["splits"].values()) == 7 and record["backbone"] is None and record["label_issues"] == []
    assert [sorted(Path(n).name for n in g["names"]) for g in record["exact_duplicates"]] == [
        ["img00.png", "img06.png"]
    ]
    assert "no per-image class" in record["notes"][0]


def test_leaks_join_every_detector_once_and_only_agreement_confirms_a_near_copy():
    splits = ["train", "train", "val", "val", "test", "val", "test", "train"]
    exact = [(0, 2, 0.0)]
    near_hash = [(0, 2, 1.0), (1, 3, 2.0), (1, 4, 3.0), (0, 1, 2.0), (6, 7, 4.0)]  # (0, 1): within train
    near_features = [(0, 2, 0.01), (1, 3, 0.02), (4, 5, 0.02)]
    confirmed, possible = leak_groups(exact, near_hash, near_features, splits)
    assert [g.members for g in confirmed] == [(1, 3, 4, 5), (0, 2)]  # (1, 3): both near detectors; (0, 2) exact
    assert [g.members for g in possible] == [(6, 7)]  # the perceptual hash alone


def test_tiny_images_get_no_perceptual_hash_and_no_leak_warning(tmp_path, monkeypatch):
    """digits (8x8): the perceptual hash is skipped (it called 20 cross-split groups copies), so training on
    the inspected digits warns of nothing."""
    from finetune.tasks.registry import get_task

    from ..conftest import compose_config

    monkeypatch.setenv(ENV, str(tmp_path / "store"))
    out = cli_in_process("inspect", "dataset=digits", "features=false", "report=r", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "r" / "inspect.json").read_text())
    assert record["near_duplicates_hash"] == [] and record["leaks"]["groups"] == 0
    assert any("perceptual hash skipped for 1797 image(s) under 32 px" in n for n in record["notes"])
    assert list(record["class_balance"]["train"]) == [str(c) for c in range(10)]  # by class index
    assert list((tmp_path / "store").glob("*.json"))  # filed, and nothing to warn about
    data = get_task("classification").data_module(compose_config("dataset=digits"))
    assert leak_warning(data.splits) is None


def test_out_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    import finetune.training.train

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before out= was checked")

    monkeypatch.setattr(finetune.training.train, "build", no_model)
    monkeypatch.setenv(ENV, str(tmp_path / "store"))
    out = cli_in_process("inspect", "dataset=digits", "report=digits", "out=d.csv", cwd=tmp_path)
    assert out.returncode == 2 and "keeps its images in arrays or a pack" in out.stderr
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "digits").exists()  # refused before writing


def test_summary_lists_classes_by_index_and_a_rewritten_pack_changes_the_fingerprint(tmp_path):
    from finetune.data.inspection.items import DatasetView
    from finetune.data.sources import Samples
    from finetune.data.streaming import INDEX, PackedSamples, StreamSpec
    from finetune.training.inspect_data import Inspection, summary

    view = DatasetView({"train": Samples(np.zeros((3, 4, 4, 1), np.uint8), np.array([2, 0, 1]))}, "digits")
    result = Inspection(view, ["a", "b", "c"], [], [], [], [], [], [], [], "", None, {})
    assert list(summary(result)["class_balance"]["train"]) == ["a", "b", "c"]

    (tmp_path / INDEX).write_text('{"version": 2, "splits": {"train": {"targets": [0, 1]}}}')
    pack = {"train": PackedSamples(np.arange(2), np.array([0, 1]), None, StreamSpec(str(tmp_path / "train")))}
    first = fingerprint(pack)
    assert first == fingerprint(pack)
    (tmp_path / INDEX).write_text('{"version": 2, "splits": {"train": {"targets": [1, 0]}}}')  # packed again
    assert fingerprint(pack) != first


def test_another_tasks_own_data_is_never_fingerprinted(tmp_path, monkeypatch):
    """A task with its own split format (tests/regression_task: (path, value) tuples) trains as before when the
    inspect store holds findings: no warning, no error (the warning used to read ``pair.image`` of a tuple)."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "0123.json").write_text("{}")
    monkeypatch.setenv(ENV, str(store))
    splits = {"train": [(tmp_path / "a.png", 0.5)], "val": [(tmp_path / "b.png", 1.5)]}
    assert leak_warning(splits) is None
