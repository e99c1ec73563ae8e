"""What a classification run adds to report.html and to ``finetune explain``.

Report: a Data section (classes with train counts and per-class test metrics, seeded training
samples per class) and the most confidently wrong test images. Explain: the top-k classes
(softmax, or a sigmoid per class when multi-label) and Grad-CAM of the top-1 class's logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import torch
from omegaconf import DictConfig
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from finetune.data.datamodule import ClassificationDataModule
from finetune.export.loading import preprocess
from finetune.models.freezing import FineTuneModel
from finetune.models.saved_runs import LoadedRun
from finetune.report.explain import Explained
from finetune.report.page import (
    ReportOptions,
    RunRecord,
    TaskSections,
    array_img,
    file_img,
    no_test_split,
    number,
    table,
    tested_batches,
    tested_split,
)
from finetune.tasks.classification.module import decide, flip_averaged, probabilities
from finetune.tasks.classification.records import classification_record

MAX_SAMPLE_CLASSES = 20


# --- report.html --------------------------------------------------------------------------------


def report_sections(
    run: RunRecord, data: ClassificationDataModule, model: FineTuneModel, options: ReportOptions
) -> TaskSections:
    """Data (classes, samples) and the most confident mistakes on the test split."""
    calibration = run.metrics.get("calibration", {})
    mistakes = worst_mistakes(
        model,
        data,
        run.cfg,
        options.worst,
        run.metrics.get("test", {}).get("threshold"),
        calibration.get("temperature", 1.0),
        calibration.get("tta", ()),
    )
    return TaskSections(
        data=[_data_section(run, data, options.samples)],
        results=[_calibration_section(run), _mistakes_section(mistakes, data, tested_split(run.metrics))],
    )


@dataclass(frozen=True)
class Mistake:
    """One wrong test prediction: split index, true and predicted labels, confidence in the prediction."""

    index: int
    true: str
    predicted: str
    confidence: float


def worst_mistakes(
    model: FineTuneModel,
    data: ClassificationDataModule,
    cfg: DictConfig,
    n: int,
    threshold: float | list[float] | None = None,
    temperature: float = 1.0,
    tta: Sequence[str] = (),
) -> list[Mistake]:
    """The ``n`` most confident wrong predictions on the test split (the batches the run tested),
    decided as the test metrics were (the run's ``tta`` flips and ``temperature``; argmax, or
    ``threshold`` for binary / multi-label tasks)."""
    if n <= 0 or not len(data.splits.get("test", ())):
        return []
    loader = data.test_dataloader()
    batches = tested_batches(cfg, len(loader))
    ref = next(model.parameters())
    multilabel, names = data.info.multilabel, data.info.class_names
    was_training = model.training
    model.eval()
    probs, targets = [], []
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if i >= batches:
                    break
                logits = flip_averaged(model, x.to(ref.device, ref.dtype), tta)
                probs.append(probabilities(logits.cpu() / temperature, data.info.task))
                targets.append(y)
    finally:
        model.train(was_training)
    p, y = torch.cat(probs), torch.cat(targets)
    decision = decide(p, data.info.task, threshold)
    if multilabel:
        wrong = (decision != y.int()).any(dim=1)
        confidence = (p - y).abs().amax(dim=1)
        label = lambda row: ", ".join(names[j] for j in torch.flatnonzero(row).tolist()) or "(none)"  # noqa: E731
        true = [label(row) for row in y]
        predicted = [label(row) for row in decision]
    else:
        top = decision
        confidence = p.gather(1, top[:, None]).squeeze(1)
        wrong = top != y
        true, predicted = [names[i] for i in y.tolist()], [names[i] for i in top.tolist()]
    order = [i for i in confidence.argsort(descending=True).tolist() if wrong[i]][:n]
    return [Mistake(i, true[i], predicted[i], float(confidence[i])) for i in order]


def _calibration_section(run: RunRecord) -> str:
    """Temperature, calibration errors before / after it (val and test) and the reliability diagram."""
    record = run.metrics.get("calibration")
    if not record or "test" not in record:
        return ""
    fitted = record.get("method") == "temperature"
    rows = [
        [split, when, *(number(record[split][when].get(k)) for k in ("ece", "adaptive_ece", "nll"))]
        for split in ("val", "test")
        for when in ("before", "after")
        if when in record.get(split, {}) and (fitted or when == "before")
    ]
    views = " + ".join(["image", *record.get("tta", [])])
    note = (
        f"One temperature T = {record['temperature']:.3f} fitted on the validation split (never the test) divides "
        "the logits; decisions are unchanged, probabilities are rescaled. predict and the exports apply it."
        if fitted
        else "Not calibrated (calibration=none): calibration=temperature fits one temperature on val."
    )
    if fitted and no_test_split(run.metrics):
        note += (
            " This dataset has no test split: the test is the validation split the temperature was fitted "
            "on, so the calibrated test errors are in-sample (optimistic)."
        )
    return (
        "<h2>Calibration</h2><p>"
        + escape(note)
        + f" Test predictions average: {escape(views)}.</p>"
        + '<div class="cols"><div>'
        + table(
            ["split", "temperature", "ECE", "adaptive ECE", "NLL"],
            [[_split_row(r[0], run.metrics), "T" if r[1] == "after" else "1", *r[2:]] for r in rows],
            numeric=(2, 3, 4),
        )
        + f'</div><div style="flex:1">{file_img(run.run_dir / "plots" / "reliability.png", "reliability diagram")}'
        + "</div></div>"
    )


def _samples_by_class(data: ClassificationDataModule, per_class: int) -> list[tuple[str, list[np.ndarray]]]:
    """Up to ``per_class`` seeded training images of each of the first classes."""
    samples = data.splits["train"]
    targets = samples.targets
    rng = np.random.default_rng(data.seed)
    rows = []
    for c, name in enumerate(data.info.class_names[:MAX_SAMPLE_CLASSES]):
        members = np.flatnonzero(targets[:, c] > 0 if targets.ndim == 2 else targets == c)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        rows.append((name, [samples.image(int(i), data.info.image_channels) for i in chosen]))
    return rows


def _data_section(run: RunRecord, data: ClassificationDataModule, per_class: int) -> str:
    names, record = run.data["class_names"], classification_record(run.data)
    counts = record.get("class_counts_train") or []
    per_class_metrics = run.metrics.get("test_per_class", {})
    header = ["class", "train images", *per_class_metrics]
    rows = [
        [
            name,
            counts[i] if i < len(counts) else "-",
            *(number(per_class_metrics[m].get(name, float("nan"))) for m in per_class_metrics),
        ]
        for i, name in enumerate(names)
    ]
    sizes = ", ".join(f"{k} {v:,}" for k, v in data.split_sizes.items())
    classes_table = table(header, rows, numeric=tuple(range(1, len(header))))
    classes = (
        classes_table
        if len(names) <= MAX_SAMPLE_CLASSES
        else f"<details><summary>{len(names)} classes (click to show)</summary>{classes_table}</details>"
    )
    gallery = "".join(
        f"<tr><td>{escape(name)}</td><td>"
        + "".join(array_img(im, f"training image of {name}", "thumb") for im in images)
        + "</td></tr>"
        for name, images in _samples_by_class(data, per_class)
    )
    more = (
        f'<p class="note">Samples of the first {MAX_SAMPLE_CLASSES} of {len(names)} classes.</p>'
        if len(names) > MAX_SAMPLE_CLASSES
        else ""
    )
    return (
        f"<h2>Data</h2><p>{len(names)} classes{' (multi-label)' if record.get('multilabel') else ''}; "
        f"images per split: {escape(sizes)}; source images have {run.data.get('image_channels')} channel(s).</p>"
        + f'<div class="cols"><div><h3>Classes</h3>{classes}</div><div><h3>Training samples</h3>'
        + f"<table><tbody>{gallery}</tbody></table>{more}</div></div>"
    )


def _split_row(split: str, metrics: dict) -> str:
    """A calibration table's split, the test named for what it was."""
    return "test (= val: no test split)" if split == "test" and no_test_split(metrics) else split


def _mistakes_section(mistakes: list[Mistake], data: ClassificationDataModule, split: str) -> str:
    if not mistakes:
        return f"<h2>Most confident mistakes</h2><p>No wrong predictions on the tested images ({escape(split)}).</p>"
    samples, channels = data.splits["test"], data.info.image_channels
    cards = "".join(_mistake_card(m, samples.image(m.index, channels)) for m in mistakes)
    return (
        f"<h2>Most confident mistakes</h2><p>Wrong predictions on the tested images ({escape(split)}), highest "
        "confidence first.</p>" + f'<div class="gallery">{cards}</div>'
    )


def _mistake_card(mistake: Mistake, image: np.ndarray) -> str:
    picture = array_img(image, f"test image {mistake.index}", "", side=112)
    return (
        f'<div class="card">{picture}<div>true: <b>{escape(mistake.true)}</b></div>'
        f'<div class="bad">pred: <b>{escape(mistake.predicted)}</b> ({mistake.confidence:.0%})</div></div>'
    )


# --- finetune explain ---------------------------------------------------------------------------


def top_k(logits: torch.Tensor, class_names: list[str], k: int, multilabel: bool) -> list[dict]:
    """The k most probable classes of one image (softmax; sigmoid per class when multi-label)."""
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    values, indices = probs.topk(min(k, probs.numel()))
    return [
        {"rank": r + 1, "class": class_names[i], "index": int(i), "probability": round(float(p), 6)}
        for r, (p, i) in enumerate(zip(values.tolist(), indices.tolist()))
    ]


class ClassificationExplainer:
    """The image resized as at evaluation; the top-k classes; Grad-CAM of the top-1 class's logit."""

    def __init__(self, run: LoadedRun) -> None:
        self.run = run

    def model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        x = torch.from_numpy(preprocess([image], self.run.preprocessing))
        return x, tuple(x.shape[-2:])

    def explain(self, logits: torch.Tensor, valid: tuple[int, int], k: int) -> Explained:
        multilabel = bool(self.run.task_record.get("multilabel"))
        listed = top_k(logits[0], self.run.class_names, k, multilabel)
        best = listed[0]
        return Explained(
            listed,
            best["index"],
            best["class"],
            ClassifierOutputTarget(best["index"]),
            f"{best['class']} ({best['probability']:.1%})",
            {"multilabel": multilabel},
        )
