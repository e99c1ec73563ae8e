"""fastai: ``vision_learner`` with the benchmark's timm architecture and weights (fastai's default head,
normalization from the weights' pretrained config), ``fine_tune`` with its default base lr (2e-3) and
schedule (one frozen epoch, then one-cycle on all layers), fastai's default augmentation
(``Resize`` item transform + ``aug_transforms()``). The spec's epochs count the frozen epoch too.
With ``"lr_find": true`` in the spec the base lr is ``lr_find()``'s ``valley`` suggestion (the range
test runs on the frozen model, as fastai's course does before ``fine_tune``; its time is counted).

    python run_fastai.py '<json spec>'      # prints one JSON result line
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastai.vision.all import (
    Callback,
    CategoryBlock,
    DataBlock,
    FuncSplitter,
    ImageBlock,
    Recorder,
    Resize,
    RocAucBinary,
    accuracy,
    aug_transforms,
    set_seed,
    vision_learner,
)
from peerdata import Clock, Split, emit, load_data, read_spec, rgb_image, scores

PACKAGES = ("fastai", "fastcore", "torch", "torchvision", "timm", "numpy", "pillow")


@dataclass
class Row:
    """One image for fastai's DataBlock (a class, not a tuple: fastai maps transforms over tuples)."""

    item: str | np.ndarray
    label: int
    valid: bool


def rows(split: Split, valid: bool) -> list[Row]:
    return [Row(x, y, valid) for x, y in zip(split.items, split.labels)]


class Curve(Callback):
    """Validation metrics and time after every epoch (after fastai's Recorder has logged them)."""

    order = Recorder.order + 1

    def __init__(self, clock: Clock) -> None:
        self.clock, self.last = clock, {}

    def after_epoch(self) -> None:
        logged = dict(zip(self.recorder.metric_names[1:-1], self.recorder.values[-1]))
        self.last = {"acc": round(float(logged["accuracy"]), 6)}
        if "roc_auc_score" in logged:
            self.last["auc"] = round(float(logged["roc_auc_score"]), 6)
        self.clock.epoch(self.last["acc"])


def main() -> None:
    spec = read_spec()
    clock = Clock()
    set_seed(spec["seed"])
    data = load_data(spec)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=data.classes)),
        get_x=lambda row: np.asarray(rgb_image(row.item)),
        get_y=lambda row: data.classes[row.label],
        splitter=FuncSplitter(lambda row: row.valid),
        item_tfms=Resize(spec["image_size"]),
        batch_tfms=aug_transforms(),
    )
    dls = block.dataloaders(
        rows(data.train, False) + rows(data.val, True), bs=spec["batch_size"], num_workers=spec["workers"], device="cpu"
    )
    binary = len(data.classes) == 2
    curve = Curve(clock)
    learn = vision_learner(
        dls,
        spec["arch"],
        metrics=[accuracy, *([RocAucBinary()] if binary else [])],
        cbs=[curve],
        pretrained_cfg_overlay={"file": spec["weights"], **spec["preprocessing"]},
    )
    frozen = 1 if spec["epochs"] > 1 else 0
    with learn.no_bar(), learn.no_logging():
        base_lr = 2e-3  # fine_tune's default
        if spec.get("lr_find"):
            learn.remove_cb(curve)  # the range test's batches are not training epochs
            base_lr = float(learn.lr_find(show_plot=False).valley)
            learn.add_cb(curve)
        learn.fine_tune(spec["epochs"] - frozen, base_lr=base_lr, freeze_epochs=frozen)
        learn.remove_cb(curve)  # get_preds fires after_epoch too: the curve is training's only
        test = None
        if data.test:
            test_dl = dls.test_dl(rows(data.test, True), with_labels=True)
            test = scores(learn.get_preds(dl=test_dl)[0].numpy(), data.test.labels)
    emit("fastai", spec, clock, curve.last, test, PACKAGES, base_lr=base_lr)


if __name__ == "__main__":
    main()
