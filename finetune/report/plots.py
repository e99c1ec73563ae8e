"""Training curves, confusion matrices (matplotlib, no display needed) and segmentation overlays as PNG files."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from finetune.run.artifacts import atomic_path  # noqa: E402

IGNORED_COLOR = (0, 0, 0)
COUNT_DIGITS = 5  # a confusion plot shows counts below this many digits


def epoch_history(metric_csvs: list[Path | list[Path]]) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series (``train/loss_epoch``, ``val/acc`` …) from Lightning CSV logs, phases in order.

    Each item is one phase: its ``metrics.csv``, or the files of its attempts (a resumed phase logs
    to ``logs/<phase>/attempt-<n>/``), oldest first; an epoch logged by a later attempt replaces it."""
    series: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for phase in metric_csvs:
        attempts = [phase] if isinstance(phase, (str, Path)) else list(phase)
        by_epoch: dict[str, dict[int, float]] = {}
        last_epoch = -1
        for path in attempts:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    epoch = int(float(row["epoch"])) if row.get("epoch") else None
                    if epoch is None:
                        continue
                    last_epoch = max(last_epoch, epoch)
                    for key, value in row.items():
                        if value and key and key.startswith(("train/", "val/")) and not key.endswith("_step"):
                            by_epoch.setdefault(key, {})[epoch] = float(value)
        for key, values in by_epoch.items():
            series.setdefault(key, []).extend((offset + epoch + 1, value) for epoch, value in sorted(values.items()))
        offset += last_epoch + 1
    return series


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path, metric: str = "acc") -> Path | None:
    """Loss and ``metric`` (the monitored one: accuracy, AUC, Dice, mIoU …) per epoch, train vs val,
    side by side."""
    panels = [("loss", ["train/loss_epoch", "val/loss"])]
    if metric != "loss":
        panels.append((metric, [f"train/{metric}", f"val/{metric}"]))
    if not any(k in series for _, keys in panels for k in keys):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            if key in series:
                xs, ys = zip(*series[key])
                ax.plot(xs, ys, marker="o", label=key.split("/")[0])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def row_shares(matrix: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix as shares of its sum (rows sum to 1; an empty row stays 0)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, split: str = "test") -> Path:
    """Confusion matrix (rows: true class, columns: predicted) row-normalised: each cell shaded and
    labelled with its share of the true class (rows sum to 100%), its count below where counts are
    short (under ``COUNT_DIGITS`` digits: images, not pixels). ``split``: what was tested, for the title."""
    n = len(class_names)
    shares = row_shares(matrix)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    counts = matrix.max() < 10**COUNT_DIGITS
    if n <= 30:
        for (i, j), share in np.ndenumerate(shares):
            text = f"{share:.0%}" + (f"\n{matrix[i, j]}" if counts else "")
            color = "white" if share > 0.55 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=7 if counts else 8)
    width = max(24, int(7 * fig.get_figwidth()))  # characters the title has room for
    ax.set_title(textwrap.fill(f"confusion matrix, % of each true class ({split})", width), fontsize=10)
    return save_figure(fig, path)


def plot_reliability(bins: dict[str, dict], temperature: float, path: Path, split: str = "test") -> Path:
    """Reliability diagram of the test: observed frequency against mean confidence per bin (marker
    area: the bin's share of predictions), before and after the temperature; the diagonal is perfect.
    ``split``: what was tested, for the title."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfectly calibrated")
    runs = (
        [("before", "uncalibrated")]
        if temperature == 1.0
        else [("before", "T = 1"), ("after", f"T = {temperature:.2f}")]
    )
    for when, label in runs:
        b = bins[when]
        share = np.asarray(b["count"], dtype=float) / max(sum(b["count"]), 1)
        ax.plot(b["confidence"], b["frequency"], marker="o", label=label)
        ax.scatter(b["confidence"], b["frequency"], s=400 * share, alpha=0.25)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("observed frequency")
    ax.set_title(textwrap.fill(f"reliability ({split})", 40), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def class_colors(num_classes: int) -> np.ndarray:
    """One RGB colour (uint8) per class from matplotlib's tab20 / hsv maps (binary: black, red)."""
    if num_classes == 2:
        return np.array([[0, 0, 0], [255, 32, 32]], np.uint8)
    cmap = plt.get_cmap("tab20" if num_classes <= 20 else "hsv", max(num_classes, 2))
    return (np.array([cmap(i)[:3] for i in range(num_classes)]) * 255).astype(np.uint8)


def colorize(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Class-index mask (HxW) as RGB; indices beyond the classes (ignored pixels) in black."""
    lookup = np.zeros((256, 3), np.uint8)
    lookup[: len(colors)] = colors
    lookup[len(colors) :] = IGNORED_COLOR
    return lookup[mask]


def save_mask(mask: np.ndarray, colors: np.ndarray, path: Path) -> Path:
    """A class-index mask as a palette PNG: pixel values are class indices, shown in class colours."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    image.putpalette(palette.ravel().tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def overlay_panel(
    image: np.ndarray, masks: list[np.ndarray], colors: np.ndarray, alpha: float = 0.5, background: int | None = None
) -> np.ndarray:
    """image | mask | mask … side by side (HWC uint8), each mask blended over the image (ignored
    pixels dark); pixels of the ``background`` class (binary tasks: 0) are left untinted."""
    rgb = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)

    def blend(mask: np.ndarray) -> np.ndarray:
        tinted = (rgb * (1 - alpha) + colorize(mask, colors) * alpha).astype(np.uint8)
        return tinted if background is None else np.where((mask == background)[..., None], rgb, tinted)

    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    panels = [rgb]
    for mask in masks:
        panels += [gap, blend(mask)]
    return np.concatenate(panels, axis=1)


def save_overlay(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    colors: np.ndarray,
    path: Path,
    alpha: float = 0.5,
    background: int | None = None,
) -> Path:
    """image | truth | prediction side by side, masks blended over the image (ignored pixels dark);
    pixels of the ``background`` class (binary tasks: 0) are left untinted."""
    panel = overlay_panel(image, [truth, prediction], colors, alpha, background)
    with atomic_path(path) as tmp:
        Image.fromarray(panel).save(tmp, format="PNG")
    return path


def plot_lr_scan(
    lrs: list[float], losses: list[float], suggestion: float | None, config_lr: float, path: Path, title: str
) -> Path:
    """A learning-rate range test: training loss against lr (log scale), the suggested lr and the
    configured lr marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, np.where(np.isfinite(losses), losses, np.nan), color="tab:blue")  # a diverged step: a gap
    ax.set_xscale("log")
    ax.axvline(config_lr, color="gray", linestyle="--", label=f"configured lr {config_lr:.3g}")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", label=f"suggested lr {suggestion:.3g}")
        ax.plot([suggestion], [losses[lrs.index(suggestion)]], marker="o", color="tab:red")
    ax.set_xlabel("learning rate (head; every stage keeps its ratio)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_stage_scores(
    stages: list[str], acc: list[float], auc: list[float | None], marked: int, path: Path, title: str
) -> Path:
    """Linear-probe val accuracy and AUC after each backbone stage; stage ``marked`` (0-based) highlighted."""
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(stages) + 2), 4))
    x = np.arange(len(stages))
    ax.plot(x, acc, marker="o", color="tab:blue", label="val accuracy")
    ax.plot(x, [np.nan if a is None else a for a in auc], marker="s", color="tab:orange", label="val AUC")
    ax.axvline(marked, color="gray", linestyle="--", label=f"peak: {stages[marked]}")
    ax.set_xticks(x, stages, rotation=45 if len(stages) > 8 else 0)
    ax.set_xlabel("features after stage (frozen backbone)")
    ax.set_ylabel("linear probe on val")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
