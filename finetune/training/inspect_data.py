"""``finetune inspect``: what is in a dataset before a model trains on it.

The data module is built exactly as training builds it (``training.train.build``: same config, loaders,
splits, preprocessing and pretrained backbone), after ``check`` has seen the list of images. Every image of
every split is decoded once as training reads it, for its size, channels and mode, an exact hash of its
pixels and a perceptual hash (``finetune.data.inspection``; none below ``PHASH_MIN_SIDE`` px, where it
calls distinct images copies).
Where the task gives one class per image (``Task.check_probing``, as for ``finetune advise``) the frozen
pretrained backbone pools each image's features once (the feature cache's ``extract_features``, evaluation
transform), and from them:

- near duplicates: cosine similarity of the features at least ``near_cosine``;
- likely label issues: cleanlab's ``find_label_issues`` on out-of-fold probabilities of a linear probe
  (``training.probing``'s standardised logistic regression, scikit-learn ``cross_val_predict``, stratified
  folds over all splits together): seconds, not a training run;
- outliers: cleanlab's ``OutOfDistribution`` kNN score on the features, flagged where its distance lies
  more than ``OUTLIER_Z`` robust z-scores (median / MAD) above the dataset's.

Segmentation data (no per-image class) gets the data checks and both hashes only. A leak is a group of
images across splits joined by an exact copy or by a pair both near detectors found; a group only one near
detector links is a possible leak (shown, never warned about).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from omegaconf import DictConfig

from finetune.data.inspection.duplicates import (
    Group,
    cosine_pairs,
    exact_pairs,
    groups_of,
    hamming_pairs,
    leak_groups,
    perceptual_hash,
    pixel_hash,
)
from finetune.data.inspection.items import DatasetView, Facts
from finetune.data.inspection.store import fingerprint
from finetune.run.errors import ConfigError
from finetune.run.task import Task

OUTLIER_Z = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score
FOLDS = 5
PHASH_MIN_SIDE = 32  # smaller native images (digits' 8 px) get no perceptual hash: too few pixels for a DCT


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """How close two images must be to count as near duplicates."""

    near_hash: int = 4  # at most this many of the 64 perceptual-hash bits differ
    near_cosine: float = 0.97  # pretrained-feature cosine similarity at least this


@dataclasses.dataclass
class Inspection:
    """Everything inspect found, indexed by the view's items."""

    view: DatasetView
    class_names: list[str]
    facts: list[Facts]
    exact: list[Group]
    near_hash: list[Group]
    near_features: list[Group]
    label_issues: list[dict]  # {"item", "given", "suggested", "confidence"}, most likely first
    outliers: list[dict]  # {"item", "score", "z"}, most outlying first
    notes: list[str]
    fingerprint: str
    backbone: str | None
    seconds: dict[str, float]
    leaks_confirmed: list[Group] = dataclasses.field(default_factory=list)  # exact, or both near detectors
    leaks_possible: list[Group] = dataclasses.field(default_factory=list)  # one near detector only

    def leaks(self) -> dict:
        """Leak groups (every detector's cross-split pairs joined once): confirmed, possible, the cross-split
        groups of each detector, and one example (a confirmed one where there is one)."""
        by = {"exact": self.exact, "near_hash": self.near_hash, "near_features": self.near_features}
        first = next(iter(self.leaks_confirmed + self.leaks_possible), None)
        example = None
        if first is not None:  # one member of each of the first two splits it spans
            items = [self.view.items[k] for k in first.members]
            shown = [next(i for i in items if i.split == split) for split in first.splits[:2]]
            example = " = ".join(f"{i.split}:{i.name}" for i in shown)
        return {
            "groups": len(self.leaks_confirmed),
            "possible": len(self.leaks_possible),
            "by_detector": {name: sum(g.cross_split for g in groups) for name, groups in by.items()},
            "example": example,
        }


def inspect_data(
    task: Task,
    cfg: DictConfig,
    thresholds: Thresholds,
    features: bool = True,
    check: Callable[[DatasetView], None] | None = None,
) -> Inspection:
    """Inspect the dataset of ``cfg`` (see the module's docstring); ``check(view)`` runs once the images are
    listed, before any is decoded (e.g. to refuse an output the data cannot have)."""
    started = time.perf_counter()
    notes = []
    if features:
        try:
            task.check_probing(cfg)
        except ConfigError:
            features = False
            notes.append(f"task={task.name} has no per-image class: no feature, label or outlier checks")
    model = data = None
    if check is not None or not features:  # the data alone first (listed once: the model build reuses it)
        data = task.data_module(cfg)
        view = DatasetView(data.splits, cfg.dataset.kind)
        if check is not None:
            check(view)  # before the model is built
    if features:
        from finetune.training.train import build

        built = build(task, cfg, data)
        data, model = built.data, built.model
        view = DatasetView(data.splits, cfg.dataset.kind)
    built_at = time.perf_counter()
    facts, hashes, phashes = scan(view)
    splits = [i.split for i in view.items]
    same_pixels = exact_pairs(hashes)
    exact = groups_of(same_pixels, splits)
    hashed = [k for k, h in enumerate(phashes) if h is not None]
    if len(hashed) < len(phashes):
        notes.append(
            f"perceptual hash skipped for {len(phashes) - len(hashed)} image(s) under {PHASH_MIN_SIDE} px "
            "(native size): it calls distinct images that small copies"
        )
    hash_pairs = [
        (hashed[i], hashed[j], d)
        for i, j, d in hamming_pairs(np.asarray([phashes[k] for k in hashed], np.uint64), thresholds.near_hash)
    ]
    near_hash = groups_of(hash_pairs, splits, exact)
    scanned_at = extracted_at = time.perf_counter()
    near_features, feature_pairs, issues, outliers = [], [], [], []
    if model is not None:
        x = pooled_features(model, data, view.splits, cfg.trainer.accelerator)
        extracted_at = time.perf_counter()
        feature_pairs = cosine_pairs(x, thresholds.near_cosine)
        near_features = groups_of(feature_pairs, splits, exact)
        targets = [i.target for i in view.items]
        if any(isinstance(t, tuple) for t in targets):
            notes.append("multi-label data: cleanlab's label check is for one class per image, skipped")
        else:
            issues, note = label_issues(x, np.asarray(targets), len(data.info.class_names), cfg.seed)
            notes += [note] if note else []
        outliers = feature_outliers(x)
    done = time.perf_counter()
    seconds = {
        "build": built_at - started,
        "scan": scanned_at - built_at,
        "features": extracted_at - scanned_at,
        "probe_and_outliers": done - extracted_at,
    }
    return Inspection(
        view,
        list(data.info.class_names),
        facts,
        exact,
        near_hash,
        near_features,
        issues,
        outliers,
        notes,
        fingerprint(data.splits),
        cfg.backbone.name if model is not None else None,
        {k: round(v, 1) for k, v in seconds.items()},
        *leak_groups(same_pixels, hash_pairs, feature_pairs, splits),
    )


def scan(view: DatasetView) -> tuple[list[Facts], list[str], list[int | None]]:
    """Decode every image once: its facts, pixel hash and perceptual hash (None under ``PHASH_MIN_SIDE`` px);
    files decoded on a few threads."""

    def one(k: int) -> tuple[Facts, str, int | None]:
        image = view.read(k)
        small = min(image.shape[:2]) < PHASH_MIN_SIDE
        return view.facts(k, image), pixel_hash(image), None if small else perceptual_hash(image)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(len(view.items))))
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def pooled_features(model, data, splits: Sequence[str], accelerator: str) -> np.ndarray:
    """The frozen backbone's pooled features of every split's images, in the view's item order."""
    from finetune.training.features import extract_features
    from finetune.training.probing import probe_device

    device = probe_device(accelerator)
    parts = [extract_features(model, data.eval_dataloader(split), device).features for split in splits]
    return np.concatenate([p.float().numpy() for p in parts])


def label_issues(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> tuple[list[dict], str | None]:
    """Likely label issues (cleanlab) from out-of-fold linear-probe probabilities; a note when skipped."""
    from cleanlab.filter import find_label_issues
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from finetune.training.probing import probe_pipeline

    counts = np.bincount(y, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2:
        return [], "label check skipped: it needs at least 2 images of each class (and 2 classes)"
    folds = StratifiedKFold(int(min(FOLDS, present.min())), shuffle=True, random_state=seed)
    probe = probe_pipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probs = cross_val_predict(probe, x, y, cv=folds, method="predict_proba")
    full = np.zeros((len(y), num_classes))
    full[:, np.flatnonzero(counts)] = probs  # classes absent from the data keep probability 0
    ranked = find_label_issues(labels=y, pred_probs=full, return_indices_ranked_by="self_confidence")
    return [
        {
            "item": int(k),
            "given": int(y[k]),
            "suggested": int(full[k].argmax()),
            "confidence": round(float(full[k, y[k]]), 4),
        }
        for k in ranked
    ], None


def feature_outliers(x: np.ndarray) -> list[dict]:
    """Images far from their nearest neighbours in feature space (cleanlab ``OutOfDistribution``: mean
    distance to the k nearest), flagged above ``OUTLIER_Z`` robust z-scores; most outlying first."""
    from cleanlab.outlier import OutOfDistribution

    if len(x) < 3:
        return []
    k = min(10, len(x) - 1)
    scores = OutOfDistribution({"k": k}).fit_score(features=x, verbose=False)
    distance = -np.log(np.clip(scores, 1e-12, None))
    median = np.median(distance)
    mad = np.median(np.abs(distance - median)) or 1e-12
    z = 0.6745 * (distance - median) / mad
    order = np.argsort(-z)
    return [
        {"item": int(k), "score": round(float(scores[k]), 4), "z": round(float(z[k]), 2)}
        for k in order
        if z[k] > OUTLIER_Z
    ]


def summary(result: Inspection) -> dict:
    """inspect.json's content: counts per split and class, image facts, every finding (with names)."""
    view, names = result.view, result.class_names
    counts: dict[str, Counter] = {}
    for item in view.items:
        classes = item.target if isinstance(item.target, tuple) else () if item.target is None else (item.target,)
        if classes:
            counts.setdefault(item.split, Counter()).update(classes)
    balance = {split: {names[c]: per[c] for c in sorted(per)} for split, per in counts.items()}
    facts = result.facts

    def counted(values) -> dict[str, int]:
        return {str(k): v for k, v in Counter(values).most_common()}

    def named(groups: list[Group]) -> list[dict]:
        return [
            g.to_dict()
            | {
                "names": [view.items[k].name for k in g.members],
                "member_splits": [view.items[k].split for k in g.members],
            }
            for g in groups
        ]

    def with_names(rows: list[dict]) -> list[dict]:
        return [r | {"split": view.items[r["item"]].split, "name": view.items[r["item"]].name} for r in rows]

    issues = [
        r | {"given_label": names[r["given"]], "suggested_label": names[r["suggested"]]}
        for r in with_names(result.label_issues)
    ]
    return {
        "fingerprint": result.fingerprint,
        "backbone": result.backbone,
        "splits": {s: sum(i.split == s for i in view.items) for s in view.splits},
        "class_balance": balance,
        "images": {
            "sizes": counted(f"{f.width}x{f.height}" for f in facts),
            "modes": counted(f.mode for f in facts),
            "channels": counted(f.channels for f in facts),
        },
        "exact_duplicates": named(result.exact),
        "near_duplicates_hash": named(result.near_hash),
        "near_duplicates_features": named(result.near_features),
        "leak_groups": [g | {"confirmed": True} for g in named(result.leaks_confirmed)]
        + [g | {"confirmed": False} for g in named(result.leaks_possible)],
        "label_issues": issues,
        "outliers": with_names(result.outliers),
        "leaks": result.leaks(),
        "notes": result.notes,
        "seconds": result.seconds,
    }
