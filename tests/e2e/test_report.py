"""report.html: one self-contained page per run of any task, rebuilt from a real (tiny) run directory."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.models.saved_runs import load_run
from finetune.report.html import datamodule_for, write_report
from finetune.report.page import table
from finetune.tasks.classification.report import worst_mistakes
from finetune.tasks.registry import get_task

from ..conftest import SEG_CLASSES

SECTIONS = ["Configuration", "Data", "Model", "Results", "Calibration", "Most confident mistakes"]
SEG_SECTIONS = ["Configuration", "Data", "Model", "Results", "Predicted masks"]


class _Page(HTMLParser):
    """Headings, image sources and tags of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2.append(data)


@pytest.fixture(scope="module")
def report(finished_run) -> Path:
    return write_report(finished_run, get_task("classification"))


def test_report_is_one_self_contained_page_with_every_section(report, finished_run):
    assert report == finished_run / "report.html"
    html = report.read_text()
    page = _Page()
    page.feed(html)
    assert page.h2 == SECTIONS
    assert not {"script", "link", "iframe"} & set(page.tags)
    assert len(page.images) >= 10 + 2  # samples, curves, confusion matrix, mistakes
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    weights = json.loads((finished_run / "weights.json").read_text())
    assert weights["sha256"] in html and "tf_efficientnet_lite0" in html
    assert ">stem<" in html and ">stage7<" in html and ">head<" in html and "phase probe" in html
    assert "f1_macro" in html and "true: <b>" in html
    best = json.loads((finished_run / "metrics.json").read_text())["checkpoint"]["best"]
    assert f"the tested checkpoint had the best val/acc: {best:.4f}" in html


def test_worst_mistakes_are_wrong_and_most_confident_first(finished_run):
    run = load_run(finished_run, get_task("classification"))
    data = datamodule_for(run.cfg, get_task("classification"), run.preprocessing)
    mistakes = worst_mistakes(run.model, data, run.cfg, 5)
    assert len(mistakes) == 5
    assert all(m.true != m.predicted for m in mistakes)
    confidences = [m.confidence for m in mistakes]
    assert confidences == sorted(confidences, reverse=True) and confidences[-1] > 0.1
    assert not run.model.training


def test_tables_escape_text():
    html = table(["<b>"], [["<script>alert(1)</script>"]])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html


def test_report_cli_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    from finetune.commands.report import main

    assert main([f"run={tmp_path}"]) == 2
    assert "finetune: error:" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:  # CI (.ci/run) installs Debian's chromium: there a missing browser is a failure
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed")
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,2400",
                report.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 20 and (pixels < 100).mean() > 0.01  # text, tables and images, not a blank page


# --- a segmentation run ---------------------------------------------------------------------------


def _png(img: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).convert("RGB"))


def test_a_segmentation_run_writes_its_report_with_per_class_iou_and_dice(tiny_seg_run):
    html = (tiny_seg_run / "report.html").read_text()  # written by the run itself, after its test
    page = _Page()
    page.feed(html)
    assert page.h2 == SEG_SECTIONS
    assert not {"script", "link", "iframe"} & set(page.tags)
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    per_class = json.loads((tiny_seg_run / "metrics.json").read_text())["test_per_class"]
    assert '<th class="n">test IoU</th><th class="n">test Dice</th>' in html
    pixels = json.loads((tiny_seg_run / "data.json").read_text())["task_record"]["pixel_counts_train"]
    for i, name in enumerate(SEG_CLASSES):
        row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", html).group(1)
        cells = re.findall(r'<td class="n">([^<]*)</td>', row)
        iou, dice = per_class["iou_per_class"][name], per_class["dice_per_class"][name]
        assert cells == [f"{pixels[i]:,}", f"{pixels[i] / sum(pixels):.1%}", f"{iou:.3f}", f"{dice:.3f}"]
    alts = [img["alt"] for img in page.images]
    assert {"training curves", "confusion matrix"} <= set(alts)
    assert sum(alt.startswith("training image") for alt in alts) == 4
    assert "resnet10t + unet head" in html and ">stage4<" in html and ">head<" in html and "phase probe" in html
    assert "<td>miou</td>" in html and "sliding 64 px tiles" in html


def test_segmentation_report_shows_the_masks_the_run_predicted_worst_first(tiny_seg_run, capsys):
    from finetune.commands.report import main
    from finetune.tasks.segmentation.report import PANEL_SIDE

    (tiny_seg_run / "report.html").unlink()
    assert main([f"run={tiny_seg_run}"]) == 0  # rebuilt from the run directory alone
    assert "report written to" in capsys.readouterr().out
    html = (tiny_seg_run / "report.html").read_text()
    page = _Page()
    page.feed(html)
    overlays = {
        img["alt"].split()[4].rstrip(":"): img for img in page.images if img["alt"].startswith("overlay of test image")
    }
    written = sorted(p.name.removesuffix("_overlay.png") for p in (tiny_seg_run / "predictions").glob("*_overlay.png"))
    assert sorted(overlays) == written and len(written) == 2  # every tested image; the run wrote both
    for stem, img in overlays.items():
        shown, saved = (
            _png(img),
            np.asarray(Image.open(tiny_seg_run / "predictions" / f"{stem}_overlay.png").convert("RGB")),
        )
        factor = PANEL_SIDE // saved.shape[1]  # image | truth | prediction enlarged without blur
        assert shown.shape[1] == PANEL_SIDE and factor == 3
        assert np.array_equal(shown[::factor, ::factor], saved)  # the same image, truth and predicted mask
    scores = [float(v) for v in re.findall(r"IoU of thing <b>([0-9.]+)</b>", html)]
    assert len(scores) == 2 and scores == sorted(scores)


def test_image_score_is_the_foreground_iou_or_the_miou_of_one_image():
    from finetune.tasks.segmentation.report import image_score

    truth = torch.tensor([[0, 1, 1], [0, 0, 255]])
    assert image_score(truth, torch.tensor([[1, 1, 0], [0, 0, 1]]), 2, 255) == pytest.approx(1 / 3)
    assert image_score(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 2, 255) == 1.0
    three = torch.tensor([[0, 1, 2, 2]])
    assert image_score(three, torch.tensor([[0, 1, 2, 0]]), 4, 255) == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
