"""Streaming (``dataset=streaming``, a pack of ``finetune pack``) vs the original dataset kind.

For hymenoptera (image folder, JPEGs, augment=light, 128 px) and BloodMNIST (medmnist npz, 28 px RGB, 64 px
input): the dataset is packed once into a temporary folder, then one training epoch of each data module's
training loader (decode + augmentation + collate, the same worker count) is timed per repetition, the two
sides alternating, each epoch in a fresh process (a process that has just packed forks slow loader workers:
~10 s to a first batch, measured, so no epoch is timed in the packing process); samples/s (median) and their
ratio (streaming / original, target >= 0.9), and each side's peak RSS and its largest worker's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import HYMENOPTERA, MEDMNIST, REPO, RESULTS, interleaved, median, write_result

DATASETS = {
    "hymenoptera": ({"kind": "imagefolder", "root": str(HYMENOPTERA)}, 128, "light"),
    "bloodmnist": (
        {"kind": "medmnist", "name": "bloodmnist", "root": str(MEDMNIST), "download": False, "grayscale": "replicate"},
        64,
        "light",
    ),
}


def _data_module(dataset: dict, image_size: int, augment: str, workers: int):
    """The data module the task would build for ``dataset`` (streaming or not), transforms set."""
    from finetune.data.datamodule import ClassificationDataModule, Preprocessing
    from finetune.data.streaming_loader import StreamingDataModule

    cls = StreamingDataModule if dataset["kind"] == "streaming" else ClassificationDataModule
    dm = cls({**dataset, "num_workers": workers}, _augment(augment), 32, workers, 0)
    dm.set_preprocessing(Preprocessing((image_size,) * 2, (0.5,) * 3, (0.5,) * 3, "bilinear", 3))
    return dm


def _augment(name: str) -> dict:
    from omegaconf import OmegaConf

    from .common import compose

    return OmegaConf.to_container(compose(f"augment={name}").augment)


def _epoch_rate(dm) -> float:
    loader = dm.train_dataloader()
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start)


def _in_fresh_process(args: list) -> dict:
    """``_alone(args)`` in a new Python process (its peak RSS is its own)."""
    code = (
        "import json, sys; from benchmarks.streaming import _alone; print(json.dumps(_alone(json.loads(sys.argv[1]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, check=True, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _alone(args: list) -> dict:
    """One epoch in this (fresh) process: samples/s and peak RSS (MiB) of the process and its largest worker."""
    dataset, image_size, augment, workers = args
    rate = _epoch_rate(_data_module(dataset, image_size, augment, workers))
    return {
        "samples_per_s": round(rate, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_worker_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def measure(name: str, workers: int = 2, repeats: int = 3, out: Path | None = None) -> dict:
    from finetune.data.configs import dataset_config
    from finetune.data.datasets import load_source
    from finetune.data.streaming import pack

    dataset, image_size, augment = DATASETS[name]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        config = dataset_config(dataset)
        start = time.perf_counter()
        index = pack(load_source(config), config, f"{tmp}/pack", multilabel=False)
        pack_s = time.perf_counter() - start
        streaming = {"kind": "streaming", "uri": f"{tmp}/pack", "cache_dir": f"{tmp}/cache", "max_cache_size": "1GB"}
        if name == "bloodmnist":
            streaming["grayscale"] = "replicate"
        sides = {"original": dataset, "streaming": streaming}
        runs = interleaved(
            {
                side: (lambda spec=spec: _in_fresh_process([spec, image_size, augment, workers]))
                for side, spec in sides.items()
            },
            repeats,
        )
    rates = {side: [run["samples_per_s"] for run in runs[side]] for side in sides}
    original, streamed = median(rates["original"]), median(rates["streaming"])
    return {
        "train_images": index["splits"]["train"]["size"],
        "image_size": image_size,
        "num_workers": workers,
        "pack_s": round(pack_s, 1),
        "original_samples_per_s": round(original, 1),
        "streaming_samples_per_s": round(streamed, 1),
        "ratio_streaming_over_original": round(streamed / original, 3),
        "target_ratio": 0.9,
        "repeats": repeats,
        "samples_per_s_per_repeat": rates,
        "peak_rss_mib": {side: max(run["peak_rss_mib"] for run in runs[side]) for side in sides},
        "largest_worker_rss_mib": {side: max(run["largest_worker_rss_mib"] for run in runs[side]) for side in sides},
    }


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    rows = {name: measure(name, repeats=1 if quick else 3) for name in DATASETS}
    for name, row in rows.items():
        print(
            f"{name}: streaming {row['streaming_samples_per_s']} vs original {row['original_samples_per_s']} "
            f"samples/s (ratio {row['ratio_streaming_over_original']}); peak RSS {row['peak_rss_mib']}, "
            f"largest worker {row['largest_worker_rss_mib']}"
        )
    write_result("streaming", {"rows": rows}, out_dir)
    return rows


if __name__ == "__main__":
    main()
