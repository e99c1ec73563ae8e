"""What a segmentation test keeps of the images it predicted, so that nothing after it runs the model
again: each image's score, and the predicted masks of the first images (the overlays) and of the
lowest-scoring ones (the report). Written to the run directory by ``save``: ``image_scores.csv``
(every tested image) and ``plots/lowest/<index>_<stem>.png`` (palette PNGs of class indices; the index keeps two
test images of the same name apart)."""

from __future__ import annotations

import csv
import heapq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finetune.run.artifacts import atomic_path

SCORES_FILE = "image_scores.csv"
LOWEST_DIR = Path("plots") / "lowest"


def iou_and_dice(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU = TP / (TP + FP + FN) and Dice = 2TP / (2TP + FP + FN) from a confusion matrix
    (rows: truth); NaN for a class absent from both truth and prediction, so means skip it."""
    confusion = confusion.double()
    tp = confusion.diag()
    fp, fn = confusion.sum(dim=0) - tp, confusion.sum(dim=1) - tp
    union = tp + fp + fn
    nan = torch.full_like(tp, float("nan"))
    return torch.where(union > 0, tp / union, nan), torch.where(union > 0, 2 * tp / (union + tp), nan)


def image_score(truth: torch.Tensor, prediction: torch.Tensor, num_classes: int, ignore_index: int) -> float:
    """Foreground IoU (two classes) or the mean IoU over the classes in the truth or the prediction
    of one image, ignored pixels left out; 1.0 where there is nothing to get wrong."""
    keep = truth != ignore_index
    confusion = torch.bincount(truth[keep] * num_classes + prediction[keep], minlength=num_classes**2)
    iou, _ = iou_and_dice(confusion.reshape(num_classes, num_classes))
    value = iou[1] if num_classes == 2 else iou.nanmean()
    return 1.0 if value.isnan() else float(value)


@dataclass
class TestedImages:
    """Scores of the tested images in test order; predicted masks (H×W uint8) of the first ``first``
    and of the ``worst`` lowest-scoring ones (ties: the earlier image counts as lower)."""

    first: int
    worst: int
    scores: list[float] = field(default_factory=list)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    _lowest: list[tuple[float, int]] = field(default_factory=list)  # (-score, -index): a max-heap

    def add(self, truth: torch.Tensor, prediction: torch.Tensor, num_classes: int, ignore_index: int) -> None:
        """One tested image: its truth and predicted class indices (H×W)."""
        index, score = len(self.scores), image_score(truth, prediction, num_classes, ignore_index)
        self.scores.append(score)
        mask = prediction.to(torch.uint8).cpu().numpy()
        if index < self.first:
            self.masks[index] = mask
        if self.worst <= 0:
            return
        heapq.heappush(self._lowest, (-score, -index))
        self.masks[index] = mask
        if len(self._lowest) > self.worst:
            _, dropped = heapq.heappop(self._lowest)
            if -dropped >= self.first:
                self.masks.pop(-dropped, None)

    def lowest(self) -> list[int]:
        """Indices of the kept lowest-scoring images, worst first."""
        return sorted((-i for _, i in self._lowest), key=lambda i: (self.scores[i], i))

    def save(self, run_dir: Path, stems: list[str]) -> None:
        """``image_scores.csv`` and the lowest-scoring masks, ``stems[i]`` naming test image ``i``."""
        with atomic_path(run_dir / SCORES_FILE) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "image", "score"])
            writer.writerows([i, stems[i], round(s, 6)] for i, s in enumerate(self.scores))
        for i in self.lowest():
            with atomic_path(run_dir / lowest_path(i, stems[i])) as tmp:
                Image.fromarray(self.masks[i]).save(tmp, format="PNG")


@dataclass(frozen=True)
class Scored:
    """One tested image as ``image_scores.csv`` lists it."""

    index: int
    stem: str
    score: float


def read_scores(run_dir: Path) -> list[Scored] | None:
    """The run's ``image_scores.csv`` (None where it wrote none: an older run, or a test on several devices)."""
    path = run_dir / SCORES_FILE
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return [Scored(int(r["index"]), r["image"], float(r["score"])) for r in csv.DictReader(f)]


def lowest_path(index: int, stem: str) -> Path:
    """Where in the run directory the predicted mask of test image ``index`` (named ``stem``) is kept."""
    return LOWEST_DIR / f"{index}_{stem}.png"


def read_lowest(run_dir: Path, image: Scored) -> np.ndarray | None:
    """The predicted mask of a lowest-scoring image the run kept, else None."""
    path = run_dir / lowest_path(image.index, image.stem)
    return np.asarray(Image.open(path)) if path.is_file() else None
