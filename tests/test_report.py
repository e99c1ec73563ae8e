"""report.html: one self-contained page per run, rebuilt from a real (tiny) run directory."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.report.html import _table, datamodule_for, worst_mistakes, write_report
from finetune.engine.runs import load_run

SECTIONS = ["Configuration", "Data", "Model", "Results", "Most confident mistakes"]


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
    return write_report(finished_run)


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
    run = load_run(finished_run)
    data = datamodule_for(run.cfg, run.preprocessing)
    mistakes = worst_mistakes(run.model, data, run.cfg, 5)
    assert len(mistakes) == 5
    assert all(m.true != m.predicted for m in mistakes)
    confidences = [m.confidence for m in mistakes]
    assert confidences == sorted(confidences, reverse=True) and confidences[-1] > 0.1
    assert not run.model.training


def test_tables_escape_text():
    html = _table(["<b>"], [["<script>alert(1)</script>"]])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html


def test_report_cli_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    from finetune.report.html import main

    assert main([f"run={tmp_path}"]) == 2
    assert "finetune: error:" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,2400",
                        report.resolve().as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 20 and (pixels < 100).mean() > 0.01  # text, tables and images, not a blank page
