"""What a segmentation run adds to report.html and to ``finetune explain``.

Report: a Data section (classes with their overlay colour, train pixels and per-class test IoU /
Dice; training images with their masks) and the tested test images whose predicted masks score
lowest (foreground IoU for two classes, else mIoU), worst first, as image | truth | prediction.
Explain: the classes by their share of the predicted pixels, and Grad-CAM of the summed logit of
one predicted class over the pixels predicted as it (pytorch-grad-cam's
``SemanticSegmentationTarget``): the largest predicted class other than class 0 (usually the
background), or class 0 when nothing else is predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from finetune.data.segmentation import SegmentationDataModule
from finetune.export.loading import preprocess
from finetune.models.freezing import FineTuneModel
from finetune.models.saved_runs import LoadedRun
from finetune.report.explain import Explained
from finetune.report.page import (
    Html,
    ReportOptions,
    RunRecord,
    TaskSections,
    array_img,
    number,
    table,
    tested_batches,
    tested_split,
    tested_split_short,
)
from finetune.report.plots import class_colors, overlay_panel
from finetune.tasks.segmentation.module import DIVISOR
from finetune.tasks.segmentation.overlays import predicted_masks
from finetune.tasks.segmentation.records import segmentation_record
from finetune.tasks.segmentation.tested import image_score, read_lowest, read_scores

PANEL_SIDE = 600  # longer side of an embedded image | truth | prediction panel, in pixels
SAMPLE_SIDE = 240  # longer side of an embedded image | mask training sample
METRIC_NAMES = {"iou": "IoU", "dice": "Dice"}


# --- report.html --------------------------------------------------------------------------------


def report_sections(
    run: RunRecord, data: SegmentationDataModule, model: FineTuneModel, options: ReportOptions
) -> TaskSections:
    """Data (classes, training images with masks) and the lowest-scoring predicted test masks."""
    shown, tested = lowest_scoring(model, data, run, options.worst)
    return TaskSections(
        data=[_data_section(run, data, options.samples)], results=[_masks_section(run, data, shown, tested)]
    )


@dataclass(frozen=True)
class ScoredImage:
    """One tested image: its index in the test split, file stem, score and predicted mask (H×W)."""

    index: int
    stem: str
    score: float
    prediction: np.ndarray


def score_name(class_names: list[str]) -> str:
    """What ``image_score`` measures."""
    return f"IoU of {class_names[1]}" if len(class_names) == 2 else "mIoU"


def lowest_scoring(
    model: FineTuneModel, data: SegmentationDataModule, run: RunRecord, n: int
) -> tuple[list[ScoredImage], int]:
    """The ``n`` tested test images (``trainer.limit_test_batches``) with the lowest score, worst first,
    with their predicted masks; and how many images were tested. The scores and masks the test kept
    (``image_scores.csv``, ``plots/lowest/``) are used as they are: only a mask it did not keep is
    predicted again, and every image only for a run that kept no scores (an older run; a test on
    several devices)."""
    tested = tested_batches(run.cfg, len(data.splits["test"]))
    recorded = read_scores(run.run_dir)
    if recorded is None or len(recorded) != tested:
        return score_every_image(model, data, tested)[: max(n, 0)], tested
    worst = sorted(recorded, key=lambda s: (s.score, s.index))[: max(n, 0)]
    masks = [read_lowest(run.run_dir, s) for s in worst]
    fresh = predicted_masks(model, data, "test", [s.index for s, mask in zip(worst, masks) if mask is None])
    return [
        ScoredImage(s.index, s.stem, s.score, next(fresh)[0] if mask is None else mask) for s, mask in zip(worst, masks)
    ], tested


def score_every_image(model: FineTuneModel, data: SegmentationDataModule, tested: int) -> list[ScoredImage]:
    """The first ``tested`` test images predicted as the test did (sliding windows at the training
    scale), with their scores; worst first."""
    info, test = data.info, data.splits["test"]
    scored = [
        ScoredImage(
            i, test[i].image.stem, image_score(truth, torch.from_numpy(mask), info.num_classes, info.ignore_index), mask
        )
        for i, (mask, truth) in enumerate(predicted_masks(model, data, "test", range(tested)))
    ]
    return sorted(scored, key=lambda s: s.score)


def _swatch(color: np.ndarray) -> Html:
    r, g, b = (int(c) for c in color)
    return Html(f'<span class="swatch" style="background:#{r:02x}{g:02x}{b:02x}"></span>')


def _background(data: SegmentationDataModule) -> int | None:
    """The class left untinted in overlays: class 0 of a binary task."""
    return 0 if data.info.binary else None


def _data_section(run: RunRecord, data: SegmentationDataModule, samples: int) -> str:
    info, d = data.info, data.config
    names, colors = info.class_names, class_colors(info.num_classes)
    pixels = segmentation_record(run.data).get("pixel_counts_train", info.class_counts)
    total = max(sum(pixels), 1)
    per_class = run.metrics.get("test_per_class", {})
    columns = {
        key: f"{tested_split_short(run.metrics)} " + METRIC_NAMES.get(key.removesuffix("_per_class"), key)
        for key in sorted(per_class, key=lambda k: (not k.startswith("iou"), k))
    }  # IoU first
    background = _background(data)
    rows = [
        [
            name,
            Html(_swatch(colors[i]) + (" untinted" if i == background else "")),
            f"{pixels[i]:,}" if i < len(pixels) else "-",
            f"{pixels[i] / total:.1%}" if i < len(pixels) else "-",
            *(number(per_class[key].get(name, float("nan"))) for key in columns),
        ]
        for i, name in enumerate(names)
    ]
    classes = table(
        ["class", "colour", "train pixels", "share", *columns.values()], rows, numeric=tuple(range(2, 4 + len(columns)))
    )
    sizes = ", ".join(f"{k} {v:,}" for k, v in data.split_sizes.items())
    scale = f" after resizing by {d.scale:g}" if d.scale != 1 else ""
    how = (
        f"Training takes random {d.crop_size}x{d.crop_size} px crops{scale}; validation and test predict whole "
        f"images in sliding {d.crop_size} px tiles ({d.tile_overlap:.0%} overlap), scored at the original size. "
        f"Pixels labelled {info.ignore_index} count in no loss and no metric."
    )
    chosen = np.sort(
        np.random.default_rng(data.seed).choice(
            len(data.splits["train"]), size=min(samples, len(data.splits["train"])), replace=False
        )
    )
    gallery = ""
    for i in chosen.tolist():
        image, mask = data.raw_pair("train", i)
        stem = data.splits["train"][i].image.stem
        panel = overlay_panel(image, [mask], colors, background=background)
        gallery += array_img(panel, f"training image {stem} | its mask", "pair", side=SAMPLE_SIDE)
    return (
        f"<h2>Data</h2><p>{len(names)} classes (segmentation); images per split: {escape(sizes)}; source "
        f"images have {info.image_channels} channel(s). {escape(how)}</p>"
        + f'<div class="cols"><div><h3>Classes</h3>{classes}</div>'
        + f"<div><h3>Training samples (image | mask)</h3>{gallery}</div></div>"
    )


def _masks_section(run: RunRecord, data: SegmentationDataModule, shown: list[ScoredImage], tested: int) -> str:
    names = data.info.class_names
    metric = score_name(names)
    title = "<h2>Predicted masks</h2>"
    split = tested_split(run.metrics)
    if not shown:
        return title + f"<p>No images were predicted ({escape(split)}).</p>"
    colors, background = class_colors(len(names)), _background(data)
    cards = ""
    for s in shown:
        image, truth = data.raw_pair("test", s.index)
        panel = overlay_panel(image, [truth, s.prediction], colors, background=background)
        picture = array_img(panel, f"overlay of test image {s.stem}: image | truth | prediction", "", PANEL_SIDE)
        cards += (
            f'<div class="card wide">{picture}<div>{escape(s.stem)}: {escape(metric)} <b>{s.score:.3f}</b></div></div>'
        )
    saved = run.run_dir / "predictions"
    written = len(list(saved.glob("*_overlay.png"))) if saved.is_dir() else 0
    note = (
        f'<p class="note">The run also wrote predicted masks (PNG of class indices) and overlays of '
        f"{written} test image(s) to {escape(str(saved))}.</p>"
        if written
        else ""
    )
    return (
        title + f"<p>The {len(shown)} of {tested} tested images ({escape(split)}) with the lowest "
        f"{escape(metric)}, worst first: image | truth | prediction, coloured as in the class table (ignored "
        "pixels dark).</p>" + f'<div class="gallery">{cards}</div>' + note
    )


# --- finetune explain ---------------------------------------------------------------------------


class SegmentationExplainer:
    """Whole images (at the training scale, padded to a multiple of 32); classes listed by their
    share of the predicted pixels; Grad-CAM of one class's summed logit over its predicted pixels."""

    def __init__(self, run: LoadedRun) -> None:
        self.run = run
        self.scale = float(run.cfg.dataset.get("scale", 1.0))

    def model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x = torch.from_numpy(preprocess([image], self.run.preprocessing, full_size=True))
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        height, width = x.shape[-2:]
        padded = [-(-side // DIVISOR) * DIVISOR for side in (height, width)]
        return F.pad(x, (0, padded[1] - width, 0, padded[0] - height)), (height, width)

    def explain(self, logits: torch.Tensor, valid: tuple[int, int], k: int) -> Explained:
        names = self.run.class_names
        logits = logits[0].float()
        probs = logits[:, : valid[0], : valid[1]].softmax(dim=0)
        prediction = probs.argmax(dim=0)
        counts = torch.bincount(prediction.flatten(), minlength=len(names))
        fractions = counts.double() / prediction.numel()
        present = [int(c) for c in fractions.argsort(descending=True) if counts[c] > 0][:k]
        listed = [
            {
                "rank": r + 1,
                "class": names[c],
                "index": c,
                "pixel_fraction": round(float(fractions[c]), 6),
                "mean_probability": round(float(probs[c][prediction == c].mean()), 6),
            }
            for r, c in enumerate(present)
        ]
        chosen = next((c for c in present if c != 0), present[0])
        mask = torch.zeros(logits.shape[-2:], dtype=torch.float32)
        mask[: valid[0], : valid[1]] = (prediction == chosen).float()
        caption = f"{names[chosen]} ({float(fractions[chosen]):.1%} of pixels)"
        return Explained(
            listed,
            chosen,
            names[chosen],
            SemanticSegmentationTarget(chosen, mask.numpy()),
            caption,
            {"listed": "classes by their share of the predicted pixels"},
        )
