"""5. Accuracy per minute: validation accuracy against wall time for a linear probe (cached
features), gradual unfreezing and a full fine-tune, through the real ``finetune.training.train.train``.

``finetune.training.phases.make_trainer`` is wrapped (in this process only) to add a callback that records
(seconds since ``train`` started, phase, epoch, val/acc) after every validation; the final test
metrics and the total wall time come from the run's metrics.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L

from finetune.resources import conf_dir
from finetune.training import phases

from .common import HYMENOPTERA, MEDMNIST, RESULTS, compose, write_result


class Curve(L.Callback):
    def __init__(self, started: float, phase: str, points: list) -> None:
        self.started, self.phase, self.points = started, phase, points

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        if "val/acc" in metrics:
            self.points.append(
                {
                    "t_s": round(time.perf_counter() - self.started, 2),
                    "phase": self.phase,
                    "epoch": trainer.current_epoch,
                    "val_acc": round(float(metrics["val/acc"]), 4),
                }
            )


def run(overrides: list[str]) -> dict:
    """One ``finetune.training.train.train`` with a val-accuracy-vs-time curve."""
    from finetune.commands.train import train

    cfg = compose(*overrides)
    points: list[dict] = []
    original = phases.make_trainer
    started = time.perf_counter()

    def make_trainer(cfg, run_dir, name, epochs, callbacks, *args, **kwargs):  # make_trainer's own, extended
        return original(cfg, run_dir, name, epochs, [*callbacks, Curve(started, name, points)], *args, **kwargs)

    phases.make_trainer = make_trainer
    try:
        with tempfile.TemporaryDirectory() as tmp:
            metrics = train(cfg, Path(tmp) / "run")
    finally:
        phases.make_trainer = original
    wall = time.perf_counter() - started
    test = metrics.get("test", {})
    return {
        "overrides": overrides,
        "wall_s": round(wall, 1),
        "test_acc": test.get("acc"),
        "test_f1_macro": test.get("f1_macro"),
        "best_val_acc": max((p["val_acc"] for p in points), default=None),
        "curve": points,
    }


SCHEDULES = {
    "linear_probe (cached)": ["schedule=linear_probe"],
    "gradual": ["schedule=gradual"],
    "full fine-tune": ["schedule=finetune"],
}


def subset(root: Path, into: Path, per_class: int = 4) -> Path:
    """``into`` holding the first ``per_class`` images of every root/<split>/<class>/ (symlinks)."""
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        (into / folder.relative_to(root)).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            (into / folder.relative_to(root) / image.name).symlink_to(image)
    return into


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    with tempfile.TemporaryDirectory() as scratch:  # quick: its images' subset
        return _main(quick, out_dir, Path(scratch))


def _main(quick: bool, out_dir: Path, scratch: Path) -> dict:
    common = ["backbone=efficientnet_lite0", "trainer.progress_bar=false", "trainer.accelerator=cpu"]
    datasets = {"hymenoptera": ["dataset=imagefolder", f"dataset.root={HYMENOPTERA}", "dataset.image_size=128"]}
    epochs = {
        "linear_probe (cached)": ["schedule.epochs=5"],
        "gradual": ["schedule.epochs=1"],
        "full fine-tune": ["schedule.epochs=1"],
    }
    notes = []
    if (conf_dir() / "dataset" / "medmnist.yaml").is_file() and (MEDMNIST / "bloodmnist.npz").is_file():
        datasets["bloodmnist"] = [
            "dataset=medmnist",
            "dataset.name=bloodmnist",
            f"dataset.root={MEDMNIST}",
            "dataset.image_size=32",
        ]
        notes.append(
            "bloodmnist: the official 28 px npz upsampled to 32 px (the recipe uses 64 px), full "
            "train split, no gradual run, to keep make bench short on a 2-core CPU"
        )
    else:
        notes.append("bloodmnist skipped: conf/dataset/medmnist.yaml or bloodmnist.npz missing")
    if quick:
        datasets = {
            "hymenoptera": [
                "dataset=imagefolder",
                f"dataset.root={subset(HYMENOPTERA, scratch / 'hymenoptera')}",  # 4 images a class and split
                "dataset.num_workers=0",
                "dataset.image_size=32",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
            ]
        }
        epochs = {"linear_probe (cached)": ["schedule.epochs=1"]}
    skip = {("bloodmnist", "gradual")}
    rows = []
    for dataset, d_over in datasets.items():
        for schedule, s_over in epochs.items():
            if (dataset, schedule) in skip:
                continue
            result = run([*common, *d_over, *SCHEDULES[schedule], *s_over])
            rows.append({"dataset": dataset, "schedule": schedule, **result})
    payload = {"backbone": "tf_efficientnet_lite0 (pip ImageNet weights)", "rows": rows, "notes": notes}
    write_result("accuracy", payload, out_dir)
    return payload


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1))
