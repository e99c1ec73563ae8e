"""The Robustness section of report.html, from metrics.json's ``robustness`` (``finetune evaluate``): per
corruption set, a heatmap of accuracy per corruption × severity, calibration under shift (ECE per
severity against the clean images), the means and, for MedMNIST-C, the paper's summary."""

from __future__ import annotations

import io
from collections.abc import Mapping
from html import escape

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from finetune.report.page import evaluated_split, img, number, png_data_uri, table  # noqa: E402


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png_data_uri(buffer.getvalue())


def heatmap(record: Mapping, metric: str = "acc") -> str:
    """A ``data:`` PNG: ``metric`` per corruption (rows) and severity (columns), values written in."""
    names, severities = list(record["results"]), record["severities"]
    values = np.array(
        [[np.nan if (v := record["results"][n][str(s)][metric]) is None else v for s in severities] for n in names]
    )
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(severities), 0.8 + 0.35 * len(names)))
    ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    ax.set_title(f"{metric} (clean {number(record['clean'][metric])})", fontsize=10)
    for (row, column), value in np.ndenumerate(values):
        ax.text(column, row, "-" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
    return _png(fig)


def calibration_plot(record: Mapping) -> str:
    """A ``data:`` PNG: ECE and accuracy per severity (mean over corruptions), severity 0 the clean images."""
    severities = [0, *record["severities"]]
    rows = [record["clean"], *(record["by_severity"][str(s)] for s in record["severities"])]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for metric, style in (("ece", "o-"), ("acc", "s--")):
        ax.plot(severities, [np.nan if r[metric] is None else r[metric] for r in rows], style, label=metric)
    ax.set_xticks(severities, ["clean", *map(str, record["severities"])])
    ax.set_xlabel("severity (mean over corruptions)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _set_section(record: Mapping) -> str:
    metrics = [k for k in ("acc", "balanced_acc", "auc", "f1_macro", "ece") if k in record["clean"]]
    rows = [("clean", *(number(record["clean"][m]) for m in metrics))]
    rows += [(f"severity {s}", *(number(record["by_severity"][s][m]) for m in metrics)) for s in record["by_severity"]]
    rows.append(("mean over corruptions × severities", *(number(record["mean"].get(m)) for m in metrics)))
    intro = (
        f"<h3>{escape(record['corruptions'])}</h3><p>{record['images']} images of the "
        f"{escape(evaluated_split(record))}{'' if record.get('test_is_val') else ' split'} "
        f"({'x'.join(map(str, record['image_size']))} px), corrupted before the unchanged preprocessing; "
        f"seed {record['seed']}. {escape(' '.join(record.get('notes', [])))}</p>"
    )
    figures = ""
    if record["results"]:
        figures = (
            '<div class="cols">'
            + img(heatmap(record), "accuracy per corruption and severity", "plot")
            + img(calibration_plot(record), "calibration under shift", "plot")
            + "</div>"
        )
    skipped = "".join(f'<p class="note">skipped {escape(k)}: {escape(v)}</p>' for k, v in record["skipped"].items())
    return (
        intro
        + figures
        + table(["condition", *metrics], rows, numeric=tuple(range(1, len(metrics) + 1)))
        + skipped
        + _paper(record)
    )


def _paper(record: Mapping) -> str:
    paper = record.get("paper")
    if not paper:
        return ""
    if "be" not in paper:
        return f'<p class="note">MedMNIST-C summary: {escape(paper["note"])}</p>'
    rows = [
        (
            name,
            number(paper["balanced_error"][name]),
            number(paper["alexnet_balanced_error"][name]),
            number(paper["be_per_corruption"][name]),
            number(paper["rbe_per_corruption"][name]),
        )
        for name in paper["corruptions"]
    ]
    rows.append(("mean", "", "", number(paper["be"]), number(paper["rbe"])))
    return (
        "<p>MedMNIST-C summary (the medmnistc package's Evaluator): balanced error (BE, mean over the 5 severities) "
        "normalised to the paper's AlexNet; rBE: its increase over the clean error, relative to AlexNet's. "
        f"Clean balanced error {number(paper['clean_balanced_error'])}"
        + ("" if paper["complete"] else "; not every corruption of the paper was evaluated")
        + ".</p>"
        + table(["corruption", "balanced error", "AlexNet", "BE", "rBE"], rows, numeric=(1, 2, 3, 4))
    )


def robustness_section(metrics: Mapping) -> str:
    """The section's HTML ("" when the run has not been evaluated under corruptions)."""
    sets = metrics.get("robustness") or {}
    if not sets:
        return ""
    return (
        "<h2>Robustness</h2><p>The test images corrupted (<code>finetune evaluate</code>): accuracy per corruption "
        "and severity, and calibration under shift (ECE of the probabilities the run decides with).</p>"
        + "".join(_set_section(record) for record in sets.values())
    )
