"""Training curves and confusion matrices as PNG files (matplotlib, no display needed)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .artifacts import atomic_path  # noqa: E402


def epoch_history(metric_csvs: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series (``train/loss_epoch``, ``val/acc`` …) from Lightning CSV logs, phases in order."""
    series: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for path in metric_csvs:
        last_epoch = -1
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = int(float(row["epoch"])) if row.get("epoch") else None
                if epoch is None:
                    continue
                last_epoch = max(last_epoch, epoch)
                for key, value in row.items():
                    if value and key.startswith(("train/", "val/")) and not key.endswith("_step"):
                        series.setdefault(key, []).append((offset + epoch + 1, float(value)))
        offset += last_epoch + 1
    return series


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    """Loss and accuracy per epoch (train vs val) side by side."""
    panels = [("loss", ["train/loss_epoch", "val/loss"]), ("accuracy", ["train/acc", "val/acc"])]
    if not any(k in series for _, keys in panels for k in keys):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, keys) in zip(axes, panels):
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


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        peak = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > peak / 2 else "black", fontsize=8)
    ax.set_title("confusion matrix (test)")
    return save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
