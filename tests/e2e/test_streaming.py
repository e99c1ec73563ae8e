"""``finetune pack`` then ``dataset=streaming``: a packed image folder trains, resumes after SIGKILL mid-epoch
with the uninterrupted run's test metrics (the loader's position is in the checkpoint), and plans from the
pack's index alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..helpers import (
    RESUMABLE_TWO_EPOCHS,
    assert_refused,
    cli_in_process,
    one_torch_thread,
    start_interrupted,
)

# The resume tests' two epochs on the stream. Two loader workers: LitData shards the stream between them.
TWO_EPOCHS = [
    *RESUMABLE_TWO_EPOCHS,
    "dataset=streaming",
    "dataset.uri=pack",
    "dataset.image_size=32",
    "dataset.num_workers=2",
    "augment=light",
]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A folder holding ``pack``: two classes of 40 px noise PNGs of overlapping brightness, packed."""
    folder = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(0)
    for label, (low, high) in {"darker": (0, 200), "brighter": (40, 240)}.items():
        (folder / "images" / label).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(rng.integers(low, high, (40, 40, 3), dtype=np.uint8)).save(
                folder / "images" / label / f"{i}.png"
            )
    out = cli_in_process("pack", "dataset=imagefolder", "dataset.root=images", "out=pack", cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train/val/test = 22/5/5" in out.stdout
    return folder


def _test_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


def _validated_epochs(run_dir: Path) -> int:
    with open(run_dir / "logs" / "finetune" / "metrics.csv", newline="") as f:
        return sum(bool(row.get("val/loss")) for row in csv.DictReader(f))


def test_a_stream_resumes_after_sigkill_mid_epoch_as_if_never_stopped(packed):
    cwd = packed
    interrupted = start_interrupted(
        *TWO_EPOCHS,
        "hydra.run.dir=interrupted",
        cwd=cwd,
        signal_name="SIGKILL",
        epoch=1,
        batch=2,
        log=cwd / "interrupted.log",
    )
    with one_torch_thread():  # the uninterrupted reference in this process (an interpreter start less)
        whole = cli_in_process(*TWO_EPOCHS, "hydra.run.dir=whole", cwd=cwd)
    interrupted.wait(timeout=300)
    interrupted_log = (cwd / "interrupted.log").read_text()
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = cwd / "interrupted"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists(), interrupted_log[
        -3000:
    ]
    assert _validated_epochs(run) == 1, interrupted_log[-3000:]  # killed inside epoch 2

    with one_torch_thread():  # the resume in this process too
        resumed = cli_in_process("resume=interrupted", cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout, resumed.stdout[-3000:]
    expected, got = _test_metrics(cwd / "whole"), _test_metrics(run)
    assert got.keys() == expected.keys()
    differing = {k: (got[k], expected[k]) for k in expected if got[k] != pytest.approx(expected[k], abs=1e-6)}
    assert not differing, f"resumed vs uninterrupted test metrics: {differing}"


def test_plan_reads_the_pack_index_only_and_a_complete_pack_is_refused(packed):
    out = cli_in_process("plan", *TWO_EPOCHS, cwd=packed)  # the command's output only: in this process
    assert out.returncode == 0, out.stderr[-3000:]
    assert "brighter=11, darker=11" in out.stdout, out.stdout[-3000:]
    assert_refused(cli_in_process("pack", "dataset=digits", "out=pack", cwd=packed), "already holds a complete pack")


@pytest.fixture
def s3_server(monkeypatch) -> str:
    """An S3-compatible server (moto) on 127.0.0.1 with a bucket ``packs``, for this test only; its endpoint and
    credentials are given the way boto3 and LitData read them (AWS_* variables)."""
    import multiprocessing

    import boto3
    from moto.server import ThreadedMotoServer

    method = multiprocessing.get_start_method()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="packs")
    yield "s3://packs"
    server.stop()
    # LitData sets its start method (spawn) for the whole process when it packs to S3: the later tests of this
    # pytest worker would spawn a fresh interpreter for every DataLoader worker
    multiprocessing.set_start_method(method, force=True)


def test_a_pack_on_s3_is_written_read_back_and_streamed(s3_server, tmp_path):
    import boto3
    import torch

    from finetune.commands.pack import pack_command
    from finetune.data.configs import dataset_config
    from finetune.data.datamodule import ClassificationDataModule
    from finetune.data.streaming import load_streaming_source
    from finetune.data.streaming_loader import StreamingDataModule
    from finetune.data.transforms import Preprocessing
    from finetune.run.errors import DatasetError

    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    s3 = boto3.client("s3")
    s3.put_object(Bucket="packs", Key="mine/train/photo.jpg", Body=b"precious")  # the user's, never deleted
    with pytest.raises(DatasetError, match=r"out=s3://packs/mine holds objects that are not a pack .*photo.jpg"):
        pack_command(["dataset=imagefolder", f"dataset.root={tmp_path / 'images'}", f"out={s3_server}/mine"])
    with pytest.raises(DatasetError, match=r"s3://nobucket/pack/finetune-pack.json: S3 refused it \(NoSuchBucket"):
        load_streaming_source(dataset_config({"kind": "streaming", "uri": "s3://nobucket/pack"}))
    s3.put_object(Bucket="packs", Key="tiny/.finetune-packing", Body=b"")  # an unfinished pack of ours ...
    s3.put_object(Bucket="packs", Key="tiny/train/chunk-9-9.bin", Body=b"stale")  # ... is written again
    uri = f"{s3_server}/tiny"
    pack_command(["dataset=imagefolder", f"dataset.root={tmp_path / 'images'}", f"out={uri}"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="packs")["Contents"]}
    assert {"tiny/finetune-pack.json", "tiny/train/index.json", "tiny/test/index.json"} <= keys
    assert "mine/train/photo.jpg" in keys and not {"tiny/.finetune-packing", "tiny/train/chunk-9-9.bin"} & keys

    dataset = {"kind": "streaming", "uri": uri, "cache_dir": str(tmp_path / "cache"), "num_workers": 0}
    streamed = StreamingDataModule(dataset, {}, 4, 0, seed=0)
    original = ClassificationDataModule({"kind": "imagefolder", "root": str(tmp_path / "images")}, {}, 4, 0, seed=0)
    pre = Preprocessing((24, 24), (0.5,) * 3, (0.5,) * 3, "bilinear", 3)
    for data in (streamed, original):
        data.set_preprocessing(pre)
    for (a, ya), (b, yb) in zip(streamed.eval_dataloader("test"), original.eval_dataloader("test"), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    trained = sum(len(images) for images, _ in streamed.train_dataloader())
    assert trained == 4 * (len(load_streaming_source(dataset_config(dataset)).splits["train"]) // 4)
    assert any((tmp_path / "cache").rglob("*.bin"))  # chunks came through the local cache
