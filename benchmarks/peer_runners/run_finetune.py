"""finetune itself, run with the project's python: its recipe (or default schedule) composed from
``spec['finetune_overrides']`` and trained through ``finetune.commands.train.train``, as
``python -m finetune`` does. A callback added to every phase's Trainer records the validation curve.

    python run_finetune.py '<json spec>'      # prints one JSON result line
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from peerdata import Clock, emit, read_spec

from finetune.commands.train import train
from finetune.resources import conf_dir
from finetune.run.warning_filters import quiet_library_chatter
from finetune.training import phases

PACKAGES = ("finetune", "lightning", "torch", "torchvision", "timm", "albumentations", "numpy", "pillow")


METRICS = {"classification": ("acc", "auc"), "segmentation": ("miou", "mdice", "pixel_acc")}  # curve: the first


class Curve(L.Callback):
    """Validation metrics (``METRICS`` of the task, where logged) after every epoch of every phase."""

    def __init__(self, clock: Clock, last: dict, names: tuple[str, ...]) -> None:
        self.clock, self.last, self.names = clock, last, names

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if f"val/{self.names[0]}" in metrics:
            self.last.clear()
            self.last.update({k: round(float(metrics[f"val/{k}"]), 6) for k in self.names if f"val/{k}" in metrics})
            self.clock.epoch(self.last[self.names[0]])


def main() -> None:
    quiet_library_chatter()
    spec = read_spec()
    names = METRICS[spec.get("task", "classification")]
    clock, last = Clock(names[0]), {}
    original = phases.make_trainer

    def make_trainer(cfg, run_dir, name, epochs, callbacks, *args, **kwargs):  # make_trainer's own, extended
        return original(cfg, run_dir, name, epochs, [*callbacks, Curve(clock, last, names)], *args, **kwargs)

    phases.make_trainer = make_trainer
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=spec["finetune_overrides"])
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(cfg, Path(tmp) / "run")
        record = json.loads((Path(tmp) / "run" / "weights.json").read_text())
    test = {k: metrics["test"][k] for k in names if metrics["test"].get(k) is not None}
    emit(
        "finetune",
        spec,
        clock,
        dict(last),
        test if spec["has_test"] else None,
        PACKAGES,
        weights_sha256=record.get("sha256"),
        overrides=spec["finetune_overrides"],
    )


if __name__ == "__main__":
    main()
