"""Building blocks of report.html, shared by the generic page (``finetune.report.html``) and the
sections each task adds (``finetune/tasks/<task>/report.py``): the run directory as read back,
embedded images, escaped tables, and what a task hands to the page."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from finetune.report.plots import row_shares
from finetune.run.config import load_config
from finetune.run.errors import FinetuneError

THUMB = 64  # thumbnail side in pixels
MAX_TABLE_CLASSES = 30  # a confusion matrix of more classes is shown as its plot


# --- what the report reads from the run ---------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """The files of a run directory the report reads (metrics may be absent for an unfinished run)."""

    run_dir: Path
    cfg: DictConfig
    data: dict
    weights: dict
    metrics: dict

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        for name in ("config.yaml", "data.json", "weights.json"):
            if not (run_dir / name).is_file():
                raise FinetuneError(f"{run_dir / name} is missing: {run_dir} is not a finetune run directory")
        metrics = run_dir / "metrics.json"
        return cls(
            run_dir,
            load_config(run_dir / "config.yaml"),
            json.loads((run_dir / "data.json").read_text()),
            json.loads((run_dir / "weights.json").read_text()),
            json.loads(metrics.read_text()) if metrics.is_file() else {},
        )


@dataclass(frozen=True)
class ReportOptions:
    """How much the task sections show: ``worst`` test images (most confident mistakes, or the
    lowest-scoring masks) and ``samples`` training images (per class for classification)."""

    worst: int = 12
    samples: int = 4


@dataclass(frozen=True)
class TaskSections:
    """A task's parts of the page (HTML strings, each starting with its ``<h2>``): ``data`` goes
    after the configuration (classes, samples), ``results`` after the generic results (what the
    predictions look like)."""

    data: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


NO_TEST_SPLIT = "val (no test split; also used to pick the checkpoint)"


def no_test_split(metrics: Mapping) -> bool:
    """Whether a run with ``metrics`` (its metrics.json) tested on its val split for want of a test
    split (``test_is_val``; runs before it was recorded for every task kept it under ``calibration``)."""
    return bool(metrics.get("test_is_val", metrics.get("calibration", {}).get("test_is_val")))


def tested_split(metrics: Mapping) -> str:
    """The split the test metrics of ``metrics`` come from, as reports and the console name it."""
    return split_name(no_test_split(metrics))


def results_title(metrics: Mapping) -> str:
    """The heading of a run's tested metrics: ``test results``, or the val split named as such."""
    return "test results" if not no_test_split(metrics) else f"results on {NO_TEST_SPLIT}"


def split_name(test_is_val: bool) -> str:
    """``test``, or the val split named with why it is optimistic where it stood in for the test."""
    return NO_TEST_SPLIT if test_is_val else "test"


def evaluated_split(record: Mapping) -> str:
    """The split a ``finetune evaluate`` record scored (``split``), named as ``split_name`` names a test split."""
    return split_name(True) if record.get("test_is_val") else record["split"]


def tested_split_short(metrics: Mapping) -> str:
    """``test`` or ``val``: the tested split in a column or a plot title."""
    return "val" if no_test_split(metrics) else "test"


def tested_batches(cfg: DictConfig, total: int) -> int:
    """How many test batches the run evaluated (``trainer.limit_test_batches``: int, fraction or null)."""
    limit = cfg.trainer.get("limit_test_batches")
    if limit is None:
        return total
    return min(total, int(limit)) if isinstance(limit, int) else min(total, math.ceil(float(limit) * total))


# --- embedding ----------------------------------------------------------------------------------


def png_data_uri(png: bytes) -> str:
    """A PNG file's bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(image: np.ndarray, side: int = THUMB) -> bytes:
    """HWC uint8 image as a PNG whose longer side is ``side`` (small images enlarged without blur)."""
    picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image[..., :3])
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def img(uri: str, alt: str, css: str) -> str:
    return f'<img class="{css}" src="{uri}" alt="{escape(alt)}">'


def array_img(image: np.ndarray, alt: str, css: str = "", side: int = THUMB) -> str:
    """An HWC uint8 image embedded as a thumbnail ``<img>``."""
    return img(png_data_uri(thumbnail_png(image, side)), alt, css)


def file_img(path: Path, alt: str, css: str = "plot") -> str:
    """A PNG file of the run embedded as is, or a note that the run did not write it."""
    if not path.is_file():
        return f'<p class="note">{escape(path.name)} was not written for this run.</p>'
    return img(png_data_uri(path.read_bytes()), alt, css)


# --- text ---------------------------------------------------------------------------------------


class Html(str):
    """A table cell that is already HTML (e.g. a colour swatch): not escaped."""


def _cell(value: object, numeric: bool) -> str:
    text = value if isinstance(value, Html) else escape(str(value))
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    numeric: Sequence[int] = (),
    row_class: Sequence[str] | None = None,
) -> str:
    """An HTML table; every cell escaped (except ``Html`` cells), columns in ``numeric`` right-aligned."""
    head = "".join(
        f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>" for i, h in enumerate(header)
    )
    body = []
    for r, row in enumerate(rows):
        cells = "".join(_cell(c, i in numeric) for i, c in enumerate(row))
        css = f' class="{row_class[r]}"' if row_class else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def read_confusion(path: Path) -> tuple[np.ndarray | None, list[str]]:
    """A run's ``confusion_matrix.csv`` (rows: true class, columns: predicted) and its class names;
    ``(None, [])`` where the run wrote none."""
    if not path.is_file():
        return None, []
    with open(path, newline="") as f:
        header, *rows = csv.reader(f)
    return np.array([[int(v) for v in row[1:]] for row in rows], dtype=np.int64).reshape(len(rows), -1), header[1:]


def confusion_table(matrix: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix row-normalised: each cell the share of its true class's row (rows sum to
    100%, shaded by it), its count on hover; each row's count in the last column."""
    shares, totals = row_shares(matrix), matrix.sum(axis=1)
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + '<th class="n">count</th>'
    body = []
    for i, name in enumerate(names):
        cells = "".join(
            f'<td class="n{" hi" if share > 0.55 else ""}" style="background:rgba(9,105,218,{share:.3f})" '
            f'title="{count:,} of {totals[i]:,}">{share:.1%}</td>'
            if totals[i]
            else '<td class="n">-</td>'
            for share, count in zip(shares[i].tolist(), matrix[i].tolist())
        )
        body.append(f'<tr><th>{escape(name)}</th>{cells}<td class="n">{totals[i]:,}</td></tr>')
    return (
        f'<table class="cm"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        '<p class="note">Each row is one true class: the share of it predicted as each class (rows sum to '
        "100%); hover a cell for its count.</p>"
    )


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f'<tr><td class="k">{escape(k)}</td><td>{escape(str(v))}</td></tr>' for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def number(value: float | None, digits: int = 3) -> str:
    """A metric for a table cell; "-" where metrics.json has none (an undefined value)."""
    return "-" if value is None else f"{value:.{digits}f}"
