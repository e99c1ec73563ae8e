"""Streaming (``dataset=streaming``, a pack of ``finetune pack``) vs the original dataset kind.

For hymenoptera (image folder, JPEGs, augment=light, 128 px) and BloodMNIST (medmnist npz, 28 px RGB, 64 px
input): the dataset is packed once into a temporary folder, then one training epoch of each data module's
training loader (decode + augmentation + collate, the same worker count) is timed per repetition, the two
sides alternating, each epoch in a fresh process (a process that has just packed forks slow loader workers:
~10 s to a first batch, measured, so no epoch is timed in the packing process); samples/s (median) and their
ratio (streaming / original, target >= 0.9), and each side's peak RSS and its largest worker's.

Accuracy parity (``python -m benchmarks.streaming parity`` runs only this row): the same tiny recipe
(``PARITY_RECIPE``: efficientnet_lite0 from its pip ImageNet weights, a full fine-tune of 2 epochs at 128 px)
trained on the original hymenoptera folder and on its pack, seeds 0, 1, 2 per side, each run in a fresh
process; test accuracy per seed, mean and spread (max - min) per side.
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


PARITY_SEEDS = (0, 1, 2)
PARITY_RECIPE = [
    "backbone=efficientnet_lite0",
    "schedule=finetune",
    "schedule.epochs=2",
    "dataset.image_size=128",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
]
QUICK = ["dataset.image_size=32", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]


def _test_acc(overrides: list[str]) -> dict:
    """Train ``overrides`` in this (fresh) process: its test accuracy and wall time."""
    from finetune.commands.train import train

    from .common import compose

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(compose(*overrides), Path(tmp) / "run")
    return {"test_acc": round(float(metrics["test"]["acc"]), 4), "wall_s": round(time.perf_counter() - start, 1)}


def _train_in_fresh_process(overrides: list[str]) -> dict:
    code = "import json, sys; from benchmarks.streaming import _test_acc; print(json.dumps(_test_acc(sys.argv[1:])))"
    out = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(f"training {overrides} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def accuracy_parity(seeds: tuple[int, ...] = PARITY_SEEDS, quick: bool = False, out: Path | None = None) -> dict:
    """Test accuracy of ``PARITY_RECIPE`` on the original hymenoptera folder and on its pack, per seed."""
    from finetune.data.configs import dataset_config
    from finetune.data.datasets import load_source
    from finetune.data.streaming import pack

    recipe = [*PARITY_RECIPE, *(QUICK if quick else [])]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        config = dataset_config({"kind": "imagefolder", "root": str(HYMENOPTERA)})
        index = pack(load_source(config), config, f"{tmp}/pack", multilabel=False)
        sides = {
            "original": ["dataset=imagefolder", f"dataset.root={HYMENOPTERA}"],
            "streaming": ["dataset=streaming", f"dataset.uri={tmp}/pack", f"dataset.cache_dir={tmp}/cache"],
        }
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for i, seed in enumerate(seeds):
            for side in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                runs[side].append(_train_in_fresh_process([*recipe, *sides[side], f"seed={seed}"]))
    summary = {}
    for side, results in runs.items():
        accs = [r["test_acc"] for r in results]
        summary[side] = {
            "test_acc_per_seed": accs,
            "mean": round(sum(accs) / len(accs), 4),
            "spread_max_minus_min": round(max(accs) - min(accs), 4),
            "wall_s_per_seed": [r["wall_s"] for r in results],
        }
    return {
        "dataset": "hymenoptera",
        "images_train_val_test": [index["splits"][split]["size"] for split in ("train", "val", "test")],
        "recipe": recipe,
        "seeds": list(seeds),
        "sides": summary,
        "difference_of_means_streaming_minus_original": round(
            summary["streaming"]["mean"] - summary["original"]["mean"], 4
        ),
    }


def _print_parity(parity: dict) -> None:
    for side, row in parity["sides"].items():
        print(f"accuracy parity, {side}: test acc {row['test_acc_per_seed']} (mean {row['mean']})")


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    rows = {name: measure(name, repeats=1 if quick else 3) for name in DATASETS}
    for name, row in rows.items():
        print(
            f"{name}: streaming {row['streaming_samples_per_s']} vs original {row['original_samples_per_s']} "
            f"samples/s (ratio {row['ratio_streaming_over_original']}); peak RSS {row['peak_rss_mib']}, "
            f"largest worker {row['largest_worker_rss_mib']}"
        )
    parity = accuracy_parity(PARITY_SEEDS[:1] if quick else PARITY_SEEDS, quick)
    _print_parity(parity)
    write_result("streaming", {"rows": rows, "accuracy_parity": parity}, out_dir)
    return rows


def parity_main(out_dir: Path = RESULTS) -> dict:
    """Only the accuracy parity row, written into the results file beside the throughput rows already there."""
    from .common import environment

    env = environment()  # the load average before the runs
    parity = {**accuracy_parity(), "environment": env}
    _print_parity(parity)
    path = out_dir / "streaming.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"benchmark": "streaming"}
    path.write_text(json.dumps({**payload, "accuracy_parity": parity}, indent=2) + "\n")
    return parity


if __name__ == "__main__":
    if sys.argv[1:] == ["parity"]:
        parity_main()
    else:
        main()
