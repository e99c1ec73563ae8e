"""``dataset=streaming``: a dataset packed by ``finetune pack`` into LitData chunks, streamed from a folder
or an object store (``s3://``, ``gs://``, ``azure://``) through a bounded local cache.

A pack holds one LitData dataset per split (``<uri>/train``, ``/val``, ``/test``); each sample keeps its
image's original encoded bytes, decoded by the preprocessing contract (``finetune.data.reference``) exactly
as from files; in-memory arrays (MedMNIST, digits) are kept as the uint8 arrays they are (LitData stores
shape and dtype), so reading them decodes nothing (packs of version 1 stored them as PNG; they still read).
``finetune-pack.json``, written last, is the completion marker and the index: class names, counts and
targets per split, channels, image sizes, so a plan or a data module is built without reading an image.

Training streams through LitData's ``StreamingDataset`` / ``StreamingDataLoader`` (sharded per rank and
worker, shuffled per epoch from the seed); the loader's state goes into Lightning's checkpoint (the fit
loop saves a stateful training loader's ``state_dict``), so a resumed run replays the restored epoch's
order. Validation and test read samples by index, in order.

Segmentation kinds pack image/mask pairs (``finetune.data.seg_pack``, index version 3, ``task_group``
``segmentation``); this module writes them (``write_pack``); they train through ``finetune.data.seg_stream``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data.configs import DatasetConfig
from finetune.data.files import DICOM_EXTENSIONS
from finetune.data.images import read_image
from finetune.data.sources import Samples, Source, class_counts
from finetune.run.errors import DatasetError

INDEX = "finetune-pack.json"
PACK_VERSION = 2  # 2: in-memory arrays stored raw (1: as PNG bytes, still read)
READABLE_VERSIONS = (1, 2, 3)  # 3: segmentation pairs (finetune.data.seg_pack)
MARKER = ".finetune-packing"  # an S3 pack's first object, removed after its index: an unfinished pack of ours
SPLITS = ("train", "val", "test")
STREAMED = "classification"  # the task group whose packs train from a stream (the index's "task_group")
REMOTE_SCHEMES = ("s3://", "gs://", "azure://", "hf://")
# Chunks per split: LitData memory-maps only the chunks that no other loader worker reads, and reads a shared
# chunk item by item, so a split in one chunk (BloodMNIST's 28 MB in LitData's 64 MB default) streams to two
# workers slower than to one (measured: 1213 vs 2044 samples/s; 1868 with 16 chunks). Bounds: 1 MB .. 64 MB.
CHUNKS_PER_SPLIT, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 16, 2**20, 64 * 2**20


@dataclass(frozen=True)
class StreamingConfig(DatasetConfig):
    """``dataset=streaming``: a pack written by ``finetune pack``."""

    uri: str | None = None  # the pack: a folder or s3://bucket/prefix (gs://, azure:// as LitData reads them)
    cache_dir: str | None = None  # local chunk cache; None: LitData's default
    max_cache_size: str = "10GB"  # the cache's bound (LitData evicts chunks beyond it)
    # task=segmentation (a segmentation pack, finetune.data.seg_stream): as for dataset=seg_folder|drive
    crop_size: int = 256
    tile_overlap: float = 0.5
    scale: float = 1.0
    samples_per_image: int = 1


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names an object store rather than a local folder."""
    return uri.startswith(REMOTE_SCHEMES)


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name if is_remote(uri) else str(Path(uri) / name)


def storage_options() -> dict[str, Any]:
    """LitData's ``storage_options`` for S3: an S3-compatible endpoint from ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` (boto3 reads the credentials from the usual AWS_* variables itself)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def allow_plain_http() -> None:
    """Let LitData's obstore transfers reach a plain-HTTP S3-compatible endpoint (a local MinIO or moto).

    LitData 0.2.76 builds its obstore ``S3Store`` from the boto3 client's endpoint but without
    ``allow_http``, so every chunk upload and download to an ``http://`` endpoint fails ("builder error");
    its client options are one module-level dict, which this sets in this process (and the loader worker
    processes it forks). Called before packing to or streaming from S3 when the endpoint is http://."""
    if storage_options().get("endpoint_url", "").startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True


# --- reading a pack's index ------------------------------------------------------------------------------


class NoPack(DatasetError):
    """``uri`` holds no complete pack (no index)."""


def read_index(uri: str, key: str = "dataset.uri") -> dict:
    """The index of the complete pack at ``uri`` (given as ``key``); NoPack when there is none (or it is
    unfinished), DatasetError when it cannot be read or is of a version this finetune does not read."""
    try:
        text = _read_text(join(uri, INDEX))
    except FileNotFoundError:
        raise NoPack(
            f"{key}={uri}: no complete pack there (no {INDEX}; an interrupted pack has none): "
            "write one with `finetune pack dataset=<kind> ... out=<uri>`"
        ) from None
    try:
        index = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{key}={uri}: its {INDEX} is not valid JSON ({e}): remove it and pack again") from None
    version = index.get("version") if isinstance(index, dict) else None
    if version not in READABLE_VERSIONS:
        raise DatasetError(
            f"{key}={uri}: a pack of version {version}; this finetune reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: pack the dataset again with this finetune"
        )
    return index


def _read_text(uri: str) -> str:
    """The text of a file or ``s3://`` object; FileNotFoundError when there is none."""
    return _read_s3(uri) if is_remote(uri) else Path(uri).read_text()


def check_scheme(uri: str, key: str) -> None:
    """DatasetError unless ``uri`` is a folder or an ``s3://`` address (the stores packs use)."""
    if is_remote(uri) and not uri.startswith("s3://"):
        raise DatasetError(
            f"{key}={uri}: packs are read and written in folders and on s3:// (gs://, azure://, hf:// not yet): "
            f"give {key}=<folder> or {key}=s3://bucket/prefix"
        )


def _s3(uri: str) -> tuple[Any, str, str]:
    """(boto3 S3 client, bucket, key) of an ``s3://bucket/key`` address."""
    check_scheme(uri, "dataset.uri")
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return boto3.client("s3", **storage_options()), bucket, key


def _read_s3(uri: str) -> str:
    client, bucket, key = _s3(uri)
    with _s3_errors(uri):
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(uri) from None


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """S3's refusals (no such bucket, access denied, no endpoint) as one-line DatasetErrors naming ``uri``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        error = e.response.get("Error", {})
        raise DatasetError(
            f"{uri}: S3 refused it ({error.get('Code')}: {error.get('Message')}): check the bucket, the prefix "
            "and the AWS_* credentials"
        ) from None
    except BotoCoreError as e:
        raise DatasetError(f"{uri}: S3 cannot be reached ({e}): check AWS_ENDPOINT_URL and the credentials") from None


def load_streaming_source(config: StreamingConfig) -> Source:
    """The pack's class names, channels and per-split targets from its index (no image is read)."""
    if not config.uri:
        raise DatasetError("dataset.uri is required: dataset.uri=<folder or s3://bucket/prefix> of a pack")
    index = read_index(config.uri)
    if index.get("task_group", STREAMED) != STREAMED:
        raise DatasetError(
            f"dataset.uri={config.uri} is a {index['task_group']} pack (of dataset={index['kind']}); "
            "task=classification trains classification packs: train it with task=segmentation "
            "head=unet|fpn|deeplabv3plus dataset=streaming"
        )
    splits = {
        name: PackedSamples(
            np.arange(len(index["splits"][name]["targets"])),
            _targets(index["splits"][name]["targets"], index["multilabel"]),
            _window(index),
            stream=StreamSpec(join(config.uri, name), config.cache_dir, config.max_cache_size),
        )
        for name in SPLITS
    }
    return Source(
        index["class_names"],
        splits,
        image_channels=index["image_channels"],
        task=index["task"] or ("multi-label" if index["multilabel"] else None),
        channels_from_metadata=index["channels_from_metadata"],
    )


def _targets(values: list, multilabel: bool) -> np.ndarray:
    return np.asarray(values, dtype=np.float32 if multilabel else np.int64)


def _window(index: dict) -> tuple[float, float] | None:
    return tuple(index["window"]) if index.get("window") else None


# --- decoding ----------------------------------------------------------------------------------------------


def decode(
    data: bytes | np.ndarray,
    suffix: str,
    channels: int,
    window: tuple[float, float] | None = None,
    name: str = "packed sample",
) -> np.ndarray:
    """A sample's image as HWC uint8: a stored array as it is (as ``Samples.image`` returns it), encoded bytes
    with ``channels`` channels, decoded as its file would be, by ``finetune.data.images.read_image`` (the
    reference decode; DICOM through its LUTs; an undecodable one refused naming ``name``)."""
    if isinstance(data, np.ndarray):
        return data
    return read_image(f"{name}{suffix}", channels, window, data)


@dataclass(frozen=True)
class StreamSpec:
    """Where one split's chunks are and how they are cached."""

    uri: str
    cache_dir: str | None = None
    max_cache_size: str = "10GB"

    def open(self):
        """A LitData StreamingDataset over the split, in order (random access by index)."""
        from litdata import StreamingDataset

        allow_plain_http()
        return StreamingDataset(self.uri, **self.options())

    def options(self) -> dict[str, Any]:
        """LitData's cache and storage arguments for this split."""
        options: dict[str, Any] = {"max_cache_size": self.max_cache_size}
        if self.cache_dir:
            options["cache_dir"] = join(self.cache_dir, Path(self.uri.rstrip("/")).name)
        if is_remote(self.uri):
            options["storage_options"] = storage_options()
        return options


_OPEN: dict[tuple[int, StreamSpec], Any] = {}  # (process id, split) -> its random-access StreamingDataset


def opened(stream: StreamSpec):
    """This process's random-access StreamingDataset over ``stream``, opened once."""
    key = (os.getpid(), stream)
    if key not in _OPEN:
        _OPEN[key] = stream.open()
    return _OPEN[key]


@dataclass(frozen=True)
class PackedSamples(Samples):
    """A split of a pack: ``images`` are sample indices in the pack, decoded from the stream when read."""

    stream: StreamSpec = field(default_factory=lambda: StreamSpec(""))

    def subset(self, index: np.ndarray) -> PackedSamples:
        return PackedSamples(self.images[index], self.targets[index], self.window, self.stream)

    def image(self, i: int, channels: int) -> np.ndarray:
        sample = opened(self.stream)[int(self.images[i])]
        name = f"{self.stream.uri}#{sample['index']}"  # the pack's split and the sample's position in it
        return decode(sample["image"], sample["suffix"], channels, self.window, name)


# --- packing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sampler:
    """``litdata.optimize``'s function: the pack sample of (split, position) (picklable for its workers)."""

    samples: Samples

    def __call__(self, i: int) -> dict:
        images = self.samples.images
        if isinstance(images, np.ndarray):
            data, suffix = np.ascontiguousarray(images[i]), ".npy"
        else:
            data, suffix = Path(images[i]).read_bytes(), Path(images[i]).suffix.lower()
        target = self.samples.targets[i]
        return {
            "index": int(i),
            "image": data,
            "suffix": suffix,
            "target": target.astype(np.float32) if target.ndim else int(target),
        }


def image_sizes(images: np.ndarray | list[Path]) -> list[list[int]]:
    """[[min height, min width], [max height, max width]] of a split's images (file headers only)."""
    if isinstance(images, np.ndarray):
        shape = images.shape[1:3]
        return [list(shape), list(shape)]
    from PIL import Image

    sizes = []
    for path in images:
        if Path(path).suffix.lower() in DICOM_EXTENSIONS:
            continue
        with Image.open(path) as image:
            sizes.append(image.size[::-1])
    if not sizes:
        return []
    return [list(np.min(sizes, axis=0).tolist()), list(np.max(sizes, axis=0).tolist())]


def pack_index(source: Source, config: DatasetConfig, multilabel: bool) -> dict:
    """The pack's own index (``finetune-pack.json``)."""
    n = len(source.class_names)
    return {
        "version": PACK_VERSION,
        "kind": config.kind,
        "task_group": STREAMED,  # the task it trains (task=…); segmentation packs: finetune.data.seg_pack
        "class_names": source.class_names,
        "image_channels": source.image_channels,
        "task": source.task,
        "multilabel": multilabel,
        "channels_from_metadata": source.channels_from_metadata,
        "window": list(source.splits["train"].window) if source.splits["train"].window else None,
        "skipped": source.skipped,
        "splits": {
            name: {
                "size": len(samples),
                "class_counts": class_counts(samples.targets, n),
                "image_sizes": image_sizes(samples.images),
                "targets": samples.targets.tolist(),
            }
            for name, samples in source.splits.items()
        },
    }


def chunk_size(samples: Samples) -> int:
    """The chunk size that cuts a split into CHUNKS_PER_SPLIT chunks, within MIN_CHUNK_BYTES .. MAX_CHUNK_BYTES."""
    if isinstance(samples.images, np.ndarray):
        return chunk_bytes_of(samples.images.nbytes)
    return chunk_bytes_of(sum(os.path.getsize(path) for path in samples.images))


def chunk_bytes_of(total: int) -> int:
    """The chunk size that cuts ``total`` bytes into CHUNKS_PER_SPLIT chunks, within the bounds."""
    return int(np.clip(total // CHUNKS_PER_SPLIT, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES))


@dataclass(frozen=True)
class PackSplit:
    """One split to write: LitData's function of a sample's position, how many samples, their chunk size."""

    sampler: Callable[[int], dict]
    size: int
    chunk_bytes: int


def pack(source: Source, config: DatasetConfig, out: str, multilabel: bool, chunk_bytes: str | None = None) -> dict:
    """Write ``source`` to ``out`` as a pack; the index written last, once every split holds all its samples.
    A local pack is written to a sibling folder and renamed into place; a remote one starts with a marker
    object and is complete when its index is there. ``out`` is checked first (``check_out``). Returns the index."""
    check_out(out)
    index = pack_index(source, config, multilabel)
    splits = {name: PackSplit(_Sampler(s), len(s), chunk_size(s)) for name, s in source.splits.items()}
    return write_pack(out, index, splits, chunk_bytes)


def write_pack(out: str, index: dict, splits: dict[str, PackSplit], chunk_bytes: str | None = None) -> dict:
    """Write ``splits`` and then ``index`` to ``out`` (checked by the caller with ``check_out`` before any image
    was read): a local pack in a sibling folder renamed into place, a remote one after a marker object.
    Returns the index."""
    if is_remote(out):
        client, bucket, key = _s3(join(out, MARKER))
        with _s3_errors(out):
            client.put_object(Bucket=bucket, Key=key, Body=b"")
        _write_splits(splits, out, out, chunk_bytes)
        _write_remote_index(join(out, INDEX), index)
        with _s3_errors(out):
            client.delete_object(Bucket=bucket, Key=key)
        return index
    target = Path(out)
    _remove_stale_staging(target)
    staging = target.parent / f".{target.name}.packing-{uuid.uuid4().hex[:8]}"
    try:
        _write_splits(splits, str(staging), out, chunk_bytes)
        (staging / INDEX).write_text(json.dumps(index))
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index


def check_out(out: str) -> None:
    """DatasetError unless ``out`` may be packed into: a folder or ``s3://`` prefix that is empty or holds an
    unfinished pack of ours (an S3 one has its marker object); a complete pack is never overwritten, and
    nothing else there is deleted (LitData's overwrite empties ``train/``, ``val/``, ``test/``)."""
    check_scheme(out, "out")
    refuse_complete(out)
    if is_remote(out):
        _refuse_foreign_objects(out)
        return
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise DatasetError(f"out={out} is a file: give a new folder")
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"out={out} is a folder that is not empty and holds no pack: give a new folder")


def refuse_complete(out: str) -> None:
    """A DatasetError when ``out`` already holds a complete pack (never overwritten) or an unreadable index."""
    try:
        read_index(out, "out")
    except NoPack:
        return
    raise DatasetError(
        f"out={out} already holds a complete pack ({INDEX}); nothing was overwritten: choose another out= "
        "or remove that pack first"
    )


def _refuse_foreign_objects(out: str) -> None:
    """DatasetError when the ``out`` prefix holds objects and no marker of an unfinished pack of ours."""
    from botocore.exceptions import ClientError

    client, bucket, prefix = _s3(join(out, MARKER))
    prefix = prefix.removesuffix(MARKER)
    with _s3_errors(out):
        try:
            client.head_object(Bucket=bucket, Key=prefix + MARKER)
            return  # an unfinished pack of ours: written again
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    if listing.get("KeyCount", 0):
        raise DatasetError(
            f"out={out} holds objects that are not a pack (e.g. s3://{bucket}/{listing['Contents'][0]['Key']}); "
            "packing could delete them: give an empty prefix"
        )


def _remove_stale_staging(target: Path) -> None:
    """Remove the staging folders an interrupted earlier pack to ``target`` left (ours by their name)."""
    ours = re.compile(rf"\.{re.escape(target.name)}\.packing-[0-9a-f]{{8}}")
    for folder in target.parent.glob(f".{target.name}.packing-*"):
        if ours.fullmatch(folder.name) and folder.is_dir():
            shutil.rmtree(folder)


def _check_written(size: int, where: str, name: str, out: str) -> None:
    """DatasetError unless the chunks of split ``name`` at ``where`` hold all its ``size`` samples (the sum of
    ``chunk_size`` in LitData's ``index.json``)."""
    try:
        chunks = json.loads(_read_text(join(where, "index.json")))["chunks"]
    except FileNotFoundError:
        chunks = []
    written = sum(chunk["chunk_size"] for chunk in chunks)
    if written != size:
        raise DatasetError(
            f"out={out}: the {name} split holds {written} of {size} samples after packing (no index was "
            "written; the pack is unfinished): pack again"
        )


def _write_splits(splits: dict[str, PackSplit], where: str, out: str, chunk_bytes: str | None) -> None:
    """Each split's chunks under ``where`` (``out``: as the user gave it, for messages), each checked whole."""
    from litdata import optimize

    allow_plain_http()
    remote = is_remote(where)
    for name in SPLITS:
        split = splits[name]
        optimize(
            fn=split.sampler,
            inputs=list(range(split.size)),
            output_dir=join(where, name),
            chunk_bytes=chunk_bytes or split.chunk_bytes,
            num_workers=1,
            mode="overwrite",
            verbose=False,
            storage_options=storage_options() if remote else {},
            start_method=_start_method(remote),
        )
        _check_written(split.size, join(where, name), name, out)


def _start_method(remote: bool) -> str | None:
    """How LitData starts its packing worker: forked on Linux for a local pack (LitData's default, spawn, starts a
    fresh interpreter per split that imports torch again: ~3 s of CPU each, most of a small pack's time; and
    LitData sets the start method for the whole process, so this process's later loader workers would be spawned
    too); LitData's default for an object store, whose client may run threads a fork would not carry over."""
    return "fork" if sys.platform == "linux" and not remote else None


def _write_remote_index(out: str, index: dict) -> None:
    client, bucket, key = _s3(out)
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(index).encode())
