"""Packs (finetune.data.streaming): samples keep their bytes and order, the index answers without images, a
complete pack is never overwritten, an interrupted one never counts as complete, and the streaming data
module feeds the evaluation splits exactly as the original dataset does."""

from __future__ import annotations

import functools
import io
import itertools
import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.commands.pack import pack_command
from finetune.data.configs import dataset_config
from finetune.data.datamodule import ClassificationDataModule
from finetune.data.datasets import load_source
from finetune.data.streaming import INDEX, SPLITS, load_streaming_source, pack
from finetune.data.streaming_loader import StreamingDataModule
from finetune.data.transforms import Preprocessing
from finetune.run.errors import ConfigError, DatasetError

PRE = Preprocessing((32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 3)


def _folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of noise images, PNG and JPEG, gray and RGB, of several sizes."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            shape = (20 + i, 24, 3) if i % 2 else (18, 22)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
                root / label / f"{i}.{'png jpg'.split()[i % 2]}"
            )
    return root


def _packed(folder: Path, dataset: dict) -> tuple[Path, object]:
    config = dataset_config(dataset)
    source = load_source(config)
    out = folder / "pack"
    pack(source, config, str(out), multilabel=False)
    return out, source


@pytest.fixture(scope="module")
def folder_pack(tmp_path_factory) -> tuple[Path, object, Path]:
    """(pack, source, image folder) of a small image folder, packed once for the module."""
    folder = tmp_path_factory.mktemp("folder_pack")
    root = _folder(folder / "images")
    return (*_packed(folder, {"kind": "imagefolder", "root": str(root)}), root)


@pytest.fixture(scope="module")
def digits_pack(tmp_path_factory) -> tuple[Path, object]:
    """(pack, source) of scikit-learn's digits, mostly in val (a small train split), packed once."""
    folder = tmp_path_factory.mktemp("digits_pack")
    return _packed(folder, {"kind": "digits", "val_fraction": 0.9, "test_fraction": 0.05})


def test_a_pack_keeps_every_split_in_order_and_decodes_as_the_original(folder_pack):
    out, source, _ = folder_pack
    packed = load_streaming_source(dataset_config({"kind": "streaming", "uri": str(out)}))
    assert packed.class_names == source.class_names and packed.image_channels == source.image_channels == 3
    for split in SPLITS:
        original, streamed = source.splits[split], packed.splits[split]
        assert np.array_equal(streamed.targets, original.targets)
        for i in range(len(original)):  # the original encoded bytes, decoded by the preprocessing contract
            assert np.array_equal(streamed.image(i, 3), original.image(i, 3))
    index = json.loads((out / INDEX).read_text())
    assert index["splits"]["train"]["image_sizes"] == [[18, 22], [25, 24]]
    assert sum(index["splits"][s]["size"] for s in SPLITS) == 12


def test_in_memory_arrays_are_packed_as_raw_arrays(digits_pack):
    out, source = digits_pack
    packed = load_streaming_source(dataset_config({"kind": "streaming", "uri": str(out)}))
    train = source.splits["train"]
    assert packed.image_channels == 1 and len(packed.splits["train"]) == len(train)
    assert all(np.array_equal(packed.splits["train"].image(i, 1), train.images[i]) for i in range(len(train)))
    stored = packed.splits["train"].stream.open()[0]["image"]  # no encoding: nothing to decode when training
    assert isinstance(stored, np.ndarray) and (stored.dtype, stored.shape) == (np.uint8, train.images[0].shape)


def _png_sample(samples, i: int) -> dict:
    """A sample as packs before raw arrays stored an in-memory array: PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(samples.images[i][..., 0]).save(buffer, format="PNG")
    return {"index": i, "image": buffer.getvalue(), "suffix": ".png", "target": int(samples.targets[i])}


def test_a_pack_that_stored_arrays_as_png_still_reads(digits_pack, tmp_path):
    from litdata import optimize

    out, source = digits_pack
    index = json.loads((out / INDEX).read_text())
    (tmp_path / INDEX).write_text(json.dumps({**index, "version": 1}))  # as version 1 wrote them
    train = source.splits["train"]
    optimize(
        fn=functools.partial(_png_sample, train),
        inputs=list(range(len(train))),
        output_dir=str(tmp_path / "train"),
        chunk_bytes="64MB",
        num_workers=1,
        verbose=False,
        start_method="fork",  # as pack() does here: no fresh interpreter, and this process is left forking
    )
    packed = load_streaming_source(dataset_config({"kind": "streaming", "uri": str(tmp_path)})).splits["train"]
    assert not isinstance(packed.stream.open()[0]["image"], np.ndarray)  # encoded bytes
    assert all(np.array_equal(packed.image(i, 1), train.images[i]) for i in range(len(train)))


def test_a_complete_pack_is_refused_and_left_as_it_was(digits_pack):
    out, source = digits_pack
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(DatasetError, match=r"already holds a complete pack .*nothing was overwritten"):
        pack(source, dataset_config({"kind": "digits"}), str(out), multilabel=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.skipif(sys.platform != "linux", reason="LitData's own start method elsewhere")
def test_a_local_pack_forks_its_worker_and_leaves_later_loader_workers_forked(tmp_path, monkeypatch):
    import litdata

    optimize, methods = litdata.optimize, []
    monkeypatch.setattr(litdata, "optimize", lambda **kw: methods.append(kw["start_method"]) or optimize(**kw))
    multiprocessing.set_start_method("spawn", force=True)  # as LitData's default left it
    try:
        _packed(_folder(tmp_path / "images", per_class=2), {"kind": "imagefolder", "root": str(tmp_path / "images")})
        assert methods == ["fork"] * len(SPLITS)  # no fresh interpreter per split
        assert multiprocessing.get_start_method() == "fork"  # this process's later DataLoader workers too
    finally:
        multiprocessing.set_start_method("fork", force=True)  # Linux's default, for the tests after this one


def test_an_unfinished_pack_is_not_a_pack(digits_pack, tmp_path):
    out = tmp_path / "pack"
    shutil.copytree(digits_pack[0], out, ignore=shutil.ignore_patterns(INDEX))  # a pack stopped before its index
    with pytest.raises(DatasetError, match=r"dataset.uri=.*no complete pack there"):
        load_streaming_source(dataset_config({"kind": "streaming", "uri": str(out)}))
    assert not list(digits_pack[0].parent.glob(".pack.packing-*"))  # no staging folder left behind


def test_bad_images_are_refused_at_pack_time_with_the_folder_loaders_message(tmp_path):
    root = _folder(tmp_path / "images")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DatasetError) as folder_error:
        load_source(dataset_config({"kind": "imagefolder", "root": str(root)}))
    with pytest.raises(DatasetError) as pack_error:
        pack_command(["dataset=imagefolder", f"dataset.root={root}", f"out={tmp_path / 'pack'}"])
    assert str(pack_error.value) == str(folder_error.value) and "broken.png" in str(pack_error.value)
    assert not (tmp_path / "pack").exists() and not list(tmp_path.glob(".pack.packing-*"))


def test_streaming_test_split_feeds_the_same_tensors_as_the_original(folder_pack):
    out, _, root = folder_pack
    original = ClassificationDataModule({"kind": "imagefolder", "root": str(root)}, {}, 4, 0, seed=0)
    streamed = StreamingDataModule({"kind": "streaming", "uri": str(out), "num_workers": 0}, {}, 4, 0, seed=0)
    assert streamed.info == original.info
    for data in (original, streamed):
        data.set_preprocessing(PRE)
    for split in ("val", "test"):
        for (a, ya), (b, yb) in zip(original.eval_dataloader(split), streamed.eval_dataloader(split), strict=True):
            assert torch.equal(a, b) and torch.equal(ya, yb)


def test_imbalance_sampler_is_refused_on_a_stream(digits_pack):
    out, _ = digits_pack
    with pytest.raises(DatasetError, match=r"imbalance=sampler .*use imbalance=weighted_loss"):
        StreamingDataModule({"kind": "streaming", "uri": str(out)}, {}, 4, 0, seed=0, imbalance="sampler")


def test_kinds_that_cannot_be_packed_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"pack: dataset=streaming cannot be packed .*packable kinds: digits, "):
        pack_command(["dataset=streaming", f"out={tmp_path / 'pack'}"])
    assert not (tmp_path / "pack").exists()


def _drive(root: Path) -> Path:
    """A DRIVE layout of 32 px squares: 5 training and 2 test images, each with a field-of-view mask."""
    rng = np.random.default_rng(1)
    for folder, n in (("training", 5), ("test", 2)):
        for sub in ("images", "1st_manual", "mask"):
            (root / folder / sub).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            vessels = (rng.random((32, 32)) > 0.7).astype(np.uint8) * 255
            fov = np.zeros((32, 32), np.uint8)
            fov[4:28, 2 + i : 30] = 255
            Image.fromarray(image).save(root / folder / "images" / f"{i:02d}_{folder}.png")
            Image.fromarray(vessels).save(root / folder / "1st_manual" / f"{i:02d}_manual1.png")
            Image.fromarray(fov).save(root / folder / "mask" / f"{i:02d}_{folder}_mask.gif")
    return root


@pytest.mark.parametrize("kind", ["seg_folder", "drive"])
def test_a_segmentation_pack_reads_back_the_original_data_modules_images_and_masks(kind, tmp_path):
    from finetune.commands.args import compose_config
    from finetune.data.seg_pack import load_pairs
    from finetune.data.segmentation import SegmentationDataModule

    from ..helpers import squares

    root = tmp_path / "data"
    if kind == "drive":
        dataset = {"kind": "drive", "root": str(_drive(root))}
    else:
        squares(root, n=8, size=32)
        dataset = {"kind": "seg_folder", "root": str(root), "mask_mode": "binary", "test_fraction": 0.25}
    args = [f"dataset={kind}", *(f"dataset.{key}={value}" for key, value in dataset.items() if key != "kind")]
    pack_command([*args, f"out={tmp_path / 'pack'}"])
    original = SegmentationDataModule(compose_config(args).dataset, {}, 2, seed=0)  # as training composes it
    index, packed = load_pairs(str(tmp_path / "pack"))
    assert (index["class_names"], index["image_channels"]) == (original.info.class_names, original.info.image_channels)
    assert index["splits"]["train"]["class_pixels"] == original.info.class_counts
    masks = []
    for split in SPLITS:
        assert len(packed[split]) == index["splits"][split]["size"] == len(original.splits[split]) > 0
        for i in range(len(packed[split])):
            image, mask = packed[split].pair(i)
            want_image, want_mask = original.raw_pair(split, i)
            assert np.array_equal(image, want_image) and np.array_equal(mask, want_mask)
            masks.append(mask)
    values = set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist())
    assert values == ({0, 1, 255} if kind == "drive" else {0, 1})  # DRIVE: 255 outside the field of view
    with pytest.raises(
        DatasetError, match=rf"is a segmentation pack \(of dataset={kind}\).*task=segmentation .*dataset=streaming"
    ):
        load_streaming_source(dataset_config({"kind": "streaming", "uri": str(tmp_path / "pack")}))


def _epoch(loader, epoch: int, batches: int | None = None) -> torch.Tensor:
    """The images of the training stream's epoch ``epoch`` (from 0) in the order the loader gives them: every
    one, or those of its first ``batches`` batches (an epoch cut short, as by trainer.limit_train_batches)."""
    loader.epoch = lambda: epoch
    return torch.cat([images for images, _ in itertools.islice(loader, batches)])


def test_persistent_loader_workers_stream_each_epoch_as_fresh_ones_would(digits_pack):
    out, _ = digits_pack
    dataset = {"kind": "streaming", "uri": str(out), "num_workers": 2}
    modules = [StreamingDataModule(dataset, {}, 4, 2, seed=0) for _ in range(2)]
    for data in modules:
        data.set_preprocessing(PRE)
    persistent, fresh = (data.train_dataloader() for data in modules)
    first = _epoch(persistent, 0, batches=2)  # cut short: LitData's workers count only the epochs they finish
    workers = list(persistent._iterator._workers)
    second = _epoch(persistent, 1)
    assert persistent._iterator._workers == workers and all(w.is_alive() for w in workers)  # not started again
    assert not torch.equal(first, second[: len(first)])  # shuffled anew
    assert torch.equal(second, _epoch(fresh, 1))  # as a new loader's workers stream epoch 2


def _no_pack_left(tmp_path: Path) -> bool:
    return not (tmp_path / "pack").exists() and not list(tmp_path.glob(".pack.packing-*"))


def test_an_interrupted_pack_leaves_nothing_and_the_next_one_streams_multi_label_csv_as_the_original(
    tmp_path, monkeypatch
):
    import litdata

    optimize, written = litdata.optimize, []

    def interrupted(**kw) -> None:  # Ctrl-C once the train split is written
        if written:
            raise KeyboardInterrupt
        written.append(optimize(**kw))

    root = _folder(tmp_path / "images", per_class=3)
    labels = ["a", "b", "a;b"]
    rows = [f"{p},{labels[i % 3]}" for i, p in enumerate(sorted(root.rglob("*.*")))]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    dataset = {"kind": "csv", "csv": str(tmp_path / "labels.csv"), "multilabel": True, "allow_outside_root": True}
    config = dataset_config(dataset)
    monkeypatch.setattr(litdata, "optimize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack(load_source(config), config, str(tmp_path / "pack"), multilabel=True)
    assert written and _no_pack_left(tmp_path)
    monkeypatch.undo()
    stale, other = tmp_path / ".pack.packing-0123abcd", tmp_path / ".other.packing-0123abcd"  # as after SIGKILL
    for folder in (stale, other):
        folder.mkdir()
    options = ["dataset.multilabel=true", "dataset.allow_outside_root=true", f"out={tmp_path / 'pack'}"]
    pack_command(["dataset=csv", f"dataset.csv={dataset['csv']}", *options])
    assert (tmp_path / "pack" / INDEX).is_file() and not stale.exists() and other.is_dir()
    original = ClassificationDataModule(dataset, {}, 4, 0, seed=0)
    streamed = StreamingDataModule({"kind": "streaming", "uri": str(tmp_path / "pack")}, {}, 4, 0, seed=0)
    assert streamed.info.multilabel and streamed.info == original.info


def test_a_pack_missing_samples_is_refused_and_leaves_no_index(digits_pack, tmp_path, monkeypatch):
    import litdata

    optimize = litdata.optimize
    monkeypatch.setattr(litdata, "optimize", lambda inputs, **kw: optimize(inputs=inputs[:-1], **kw))  # one lost
    _, source = digits_pack
    with pytest.raises(DatasetError, match=r"out=.*pack: the train split holds 89 of 90 samples"):
        pack(source, dataset_config({"kind": "digits"}), str(tmp_path / "pack"), multilabel=False)
    assert _no_pack_left(tmp_path)


def test_a_non_empty_out_is_refused_before_any_image_is_read(tmp_path):
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"out=.*pack is a folder that is not empty and holds no pack"):
        pack_command(["dataset=imagefolder", f"dataset.root={tmp_path / 'missing'}", f"out={tmp_path / 'pack'}"])
    assert (tmp_path / "pack" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["gs://bucket/pack", "azure://container/pack"])
def test_stores_that_packs_cannot_use_yet_are_refused_before_any_image_is_read(out, tmp_path):
    with pytest.raises(DatasetError, match=rf"out={out}: .*s3://"):
        pack_command(["dataset=imagefolder", f"dataset.root={tmp_path / 'missing'}", f"out={out}"])


def test_a_corrupt_index_or_another_pack_version_is_refused_in_one_line(digits_pack, tmp_path):
    shutil.copytree(digits_pack[0], tmp_path / "pack")
    index = json.loads((tmp_path / "pack" / INDEX).read_text())
    streaming = dataset_config({"kind": "streaming", "uri": str(tmp_path / "pack")})
    (tmp_path / "pack" / INDEX).write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(DatasetError, match=r"dataset.uri=.*pack: a pack of version 99.*reads versions") as error:
        load_streaming_source(streaming)
    (tmp_path / "pack" / INDEX).write_text('{"version": ')
    with pytest.raises(DatasetError, match=r"dataset.uri=.*pack: .*finetune-pack.json is not valid JSON") as error:
        load_streaming_source(streaming)
    assert "\n" not in str(error.value)


def test_a_corrupt_sample_is_refused_with_the_image_loaders_message(tmp_path):
    from finetune.data.images import read_image
    from finetune.data.streaming import decode

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DatasetError, match="broken.png") as from_file:
        read_image(broken, 3)
    with pytest.raises(DatasetError) as from_pack:
        decode(broken.read_bytes(), ".png", 3, name=str(tmp_path / "broken"))
    same = f"cannot read image {broken}: cannot identify image file "  # then PIL names the file or the bytes
    assert str(from_pack.value).startswith(same) and str(from_file.value).startswith(same)


def test_a_split_is_cut_into_chunks_that_loader_workers_read_apart():
    from finetune.data.sources import Samples
    from finetune.data.streaming import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, chunk_size

    blood = Samples(np.zeros((11_959, 28, 28, 3), np.uint8), np.zeros(11_959, np.int64))  # 28 MB: 16 chunks
    assert chunk_size(blood) == 11_959 * 28 * 28 * 3 // 16
    assert chunk_size(blood.subset(np.arange(10))) == MIN_CHUNK_BYTES
    big = Samples(np.zeros((1, 2**31), np.uint8), np.zeros(1, np.int64))  # 2 GB: chunks of LitData's default
    assert chunk_size(big) == MAX_CHUNK_BYTES


def test_an_image_folder_split_is_cut_by_its_file_sizes(folder_pack):
    from finetune.data.streaming import MIN_CHUNK_BYTES, chunk_size

    _, source, _ = folder_pack
    assert chunk_size(source.splits["train"]) == MIN_CHUNK_BYTES  # a few kB of PNG and JPEG


def test_a_local_pack_is_a_data_folder_and_a_missing_one_does_not_exist(digits_pack, tmp_path):
    from omegaconf import OmegaConf

    from finetune.commands.precheck import check_run_dir_outside_data
    from finetune.run.config import check_data_paths
    from finetune.run.errors import FinetuneError

    out, _ = digits_pack
    cfg = OmegaConf.create({"dataset": {"kind": "streaming", "uri": str(out)}})
    with pytest.raises(FinetuneError, match=rf"hydra.run.dir={out}/runs is inside the data folder {out}"):
        check_run_dir_outside_data(f"{out}/runs", cfg)
    check_run_dir_outside_data(str(tmp_path / "runs"), OmegaConf.create({"dataset": {"uri": "s3://packs/a"}}))
    with pytest.raises(ConfigError, match=r"dataset.uri=.*missing does not exist"):
        check_data_paths(OmegaConf.create({"dataset": {"kind": "streaming", "uri": str(tmp_path / "missing")}}))
