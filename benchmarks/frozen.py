"""2. Frozen phases: the feature cache vs a live frozen backbone, and step time over freeze depth.

(a) ``freeze=all`` (linear probe) on digits at 64 px: step (= epoch, same batch count) time of our
stack training the head on a live frozen backbone vs on cached features
(``finetune.training.features.FeatureDataModule``), plus the one-time extraction, so the amortised speed-up
over a whole probe is reported too.
(b) ``freeze=k`` vs ``freeze=0``: training-step time of tf_efficientnet_lite0 (minimal loop, same
batches) for every depth k; frozen stages run forward only, so the curve falls with k.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from finetune.data.datamodule import ClassificationDataModule
from finetune.models.freezing import frozen_stages
from finetune.run.schedule import PhaseOptim
from finetune.tasks.classification.module import ClassificationTask
from finetune.training.features import FeatureDataModule
from finetune.training.phases import make_trainer
from finetune.training.train import model_preprocessing

from .common import RESULTS, build, fake_batches, interleaved, median, write_result
from .overhead import StepTimer, minimal_side, step_intervals


def _fit_steps(cfg, model, datamodule, features_input: bool, num_classes: int, warmup: int) -> float:
    """Median training-step time (s) of our stack (interval between batch starts, warm-up excluded)."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, Path(tmp), "bench", 1, [timer])
        task = ClassificationTask(model, num_classes, False, PhaseOptim(lr=1e-2), features_input=features_input)
        trainer.fit(task, datamodule=datamodule)
    return median(step_intervals(timer.starts, timer.last_end, warmup))


def cache_vs_live(
    image_size: int = 64,
    repeats: int = 5,
    steps: int = 4,
    warmup: int = 1,
    probe_epochs: int = 10,
    extract: bool = True,
) -> dict:
    """Linear-probe step (hence epoch) time, live frozen backbone vs cached features (digits, our stack).

    Both sides run ``warmup + steps`` batches of the real digits loaders (batch size of
    schedule=linear_probe); an epoch is the same number of batches on both sides, so the epoch
    speed-up is the step-time ratio. The one-time extraction (train + val through the backbone)
    is timed once and folded into the speed-up over a whole ``probe_epochs`` probe.
    """
    overrides = [
        "dataset=digits",
        "trainer.progress_bar=false",
        "trainer.limit_val_batches=0",
        "trainer.accelerator=cpu",
        "schedule=linear_probe",
        f"trainer.limit_train_batches={warmup + steps}",
    ]
    cfg, model = build("efficientnet_lite0", image_size, 10, False, *overrides)
    data = ClassificationDataModule(cfg.dataset, cfg.augment, cfg.schedule.batch_size, cfg.dataset.num_workers, 0)
    data.set_preprocessing(model_preprocessing(model.backbone, image_size, data.in_chans))
    model.set_frozen(frozen_stages(model.stage_map, "all"), "frozen")
    start = time.perf_counter()
    if extract:
        features = FeatureDataModule.extract(model, data, next(model.parameters()).device)
    else:  # tiny smoke setting: features of random tensors with the real shape
        n = len(data.splits["train"])
        features = FeatureDataModule(
            data,
            {
                s: TensorDataset(torch.randn(n, model.backbone.num_features), torch.randint(0, 10, (n,)))
                for s in ("train", "val")
            },
        )
    extraction = time.perf_counter() - start
    num_classes = data.info.num_classes
    times = interleaved(
        {
            "live": lambda: _fit_steps(cfg, model, data, False, num_classes, warmup),
            "cached": lambda: _fit_steps(cfg, model, features, True, num_classes, warmup),
        },
        repeats,
    )
    live, cache = median(times["live"]), median(times["cached"])
    batches = -(-len(data.splits["train"]) // cfg.schedule.batch_size)
    per_rep = [a / b for a, b in zip(times["live"], times["cached"])]
    return {
        "dataset": "digits",
        "image_size": image_size,
        "backbone": cfg.backbone.name,
        "batch_size": cfg.schedule.batch_size,
        "train_images": len(data.splits["train"]),
        "batches_per_epoch": batches,
        "repeats": repeats,
        "steps_timed": steps,
        "live_step_ms": round(1e3 * live, 2),
        "cached_step_ms": round(1e3 * cache, 3),
        "live_epoch_s_est": round(batches * live, 2),
        "cached_epoch_s_est": round(batches * cache, 3),
        "extraction_s": round(extraction, 2),
        "epoch_speedup": round(median(per_rep), 1),
        "epoch_speedup_ratio_of_medians": round(live / cache, 1),
        "live_step_ms_per_rep": [round(1e3 * t, 1) for t in times["live"]],
        "cached_step_ms_per_rep": [round(1e3 * t, 2) for t in times["cached"]],
        "probe_epochs": probe_epochs,
        "probe_speedup_incl_extraction": round(
            probe_epochs * batches * live / (extraction + probe_epochs * batches * cache), 2
        ),
        "target_epoch_speedup": 10.0,
    }


def freeze_curve(image_sizes=(64, 128), batch_size: int = 4, steps: int = 2, warmup: int = 1, repeats: int = 5) -> dict:
    """Step time of freeze=k relative to freeze=0 for every k (tf_efficientnet_lite0, minimal loop)."""
    from torch.utils.data import DataLoader

    out = []
    for size in image_sizes:
        cfg, model = build("efficientnet_lite0", size, 10, False)
        n = model.stage_map.num_stages
        depths = [str(k) for k in range(n)] + ["all"]
        loader = DataLoader(fake_batches(warmup + steps, batch_size, size), batch_size=None)

        def side(depth: str):
            def run() -> float:
                model.set_frozen(frozen_stages(model.stage_map, depth), "frozen")
                return minimal_side(model, loader, warmup)

            return run

        times = interleaved({d: side(d) for d in depths}, repeats)
        base = times["0"]
        out.append(
            {
                "image_size": size,
                "batch_size": batch_size,
                "repeats": repeats,
                "backbone": cfg.backbone.name,
                "step_ms": {d: round(1e3 * median(t), 2) for d, t in times.items()},
                "ratio_vs_freeze0": {d: round(median([a / b for a, b in zip(t, base)]), 3) for d, t in times.items()},
            }
        )
    return {"curves": out}


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    if quick:
        payload = {
            "cache": cache_vs_live(32, repeats=1, steps=1, warmup=1, extract=False),
            **freeze_curve((32,), batch_size=2, steps=1, warmup=1, repeats=1),
        }
    else:
        payload = {"cache": cache_vs_live(), **freeze_curve()}
    write_result("frozen", payload, out_dir)
    return payload


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1))
