"""4. Data pipeline throughput vs model training throughput.

Pipeline: ``ClassificationDataModule`` on hymenoptera (imagefolder, augment=light) at the default
worker count of conf/dataset/imagefolder.yaml: decode + albumentations + collate, one full train
epoch per repetition through one persistent loader (its worker start-up is timed separately).
Model: tf_efficientnet_lite0 training steps (freeze=0, minimal loop) at the same image size.
Both alternate in one process; the ratio pipeline images/s / model images/s should be >= 2 so
the loader never starves the model (its workers share the same CPU cores while training).
"""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import DataLoader

from finetune.data.datamodule import ClassificationDataModule
from finetune.training.train import model_preprocessing

from .common import HYMENOPTERA, RESULTS, build, fake_batches, interleaved, median, write_result
from .overhead import minimal_side


def _epoch_rate(loader: DataLoader) -> float:
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n / (time.perf_counter() - start)


def measure(
    image_size: int = 128,
    root: Path = HYMENOPTERA,
    batch_size: int = 32,
    model_batch: int = 4,
    steps: int = 2,
    warmup: int = 1,
    repeats: int = 5,
    extra_workers: tuple[int, ...] = (0,),
) -> dict:
    cfg, model = build(
        "efficientnet_lite0", image_size, 2, False, "dataset=imagefolder", f"dataset.root={root}", "augment=light"
    )

    def datamodule(workers: int) -> ClassificationDataModule:
        dm = ClassificationDataModule(cfg.dataset, cfg.augment, batch_size, workers, 0)
        dm.set_preprocessing(model_preprocessing(model.backbone, image_size, dm.in_chans))
        return dm

    workers = int(cfg.dataset.num_workers)
    loaders, startup = {}, {}
    for w in (workers, *[w for w in extra_workers if w != workers]):
        dm = datamodule(w)
        loader = dm.train_dataloader()
        start = time.perf_counter()
        next(iter(loader))  # persistent workers start here
        startup[w] = time.perf_counter() - start
        _epoch_rate(loader)  # warm epoch
        loaders[w] = loader
    model_loader = DataLoader(fake_batches(warmup + steps, model_batch, image_size, 2), batch_size=None)
    sides = {f"pipeline_w{w}": (lambda loader=loader: _epoch_rate(loader)) for w, loader in loaders.items()}
    sides["model"] = lambda: model_batch / minimal_side(model, model_loader, warmup)
    rates = interleaved(sides, repeats)
    key = f"pipeline_w{workers}"
    ratios = [a / b for a, b in zip(rates[key], rates["model"])]
    first = loaders[workers]
    return {
        "dataset": "hymenoptera",
        "image_size": image_size,
        "augment": "light",
        "batch_size": batch_size,
        "train_images": len(first.dataset),
        "repeats": repeats,
        "loader": {
            "num_workers": workers,
            "persistent_workers": first.persistent_workers,
            "pin_memory": first.pin_memory,
            "worker_startup_s": round(startup[workers], 2),
        },
        "images_per_s": {k: round(median(v), 1) for k, v in rates.items()},
        "model": f"{cfg.backbone.name} train step, freeze=0, batch {model_batch}",
        "ratio_pipeline_over_model": round(median(ratios), 2),
        "target_ratio": 2.0,
    }


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    if quick:
        rows = [measure(64, repeats=1, steps=1, warmup=1, model_batch=2, extra_workers=())]
    else:
        rows = [measure(128), measure(224)]
    payload = {
        "rows": rows,
        "defaults": "imagefolder/csv: num_workers=2 (conf/dataset), persistent_workers=num_workers>0, "
        "pin_memory=torch.cuda.is_available(); digits/medmnist (in memory): num_workers=0",
    }
    write_result("pipeline", payload, out_dir)
    return payload


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1))
