"""Honest reports (issue 29): a run without a test split names the val split it tested on everywhere it
shows the test; the confusion matrix is row-normalised with its counts on hover; a segmentation run's
overlays and report use the masks its test predicted instead of running the model again."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from finetune.report.html import _results_section
from finetune.report.page import NO_TEST_SPLIT, RunRecord, confusion_table, no_test_split, results_title
from finetune.tasks.segmentation import module as seg_module
from finetune.tasks.segmentation.module import SegmentationTask
from finetune.training.sweep import write_summary

from ..helpers import cli_in_process, one_torch_thread, squares

SEG_NO_TEST = [
    "task=segmentation",
    "dataset=seg_folder",
    "dataset.mask_mode=binary",
    "dataset.test_fraction=0",
    "dataset.val_fraction=0.3",
    "dataset.crop_size=32",
    "dataset.num_workers=0",
    "head=unet",
    "head.decoder_channels=[16,16,16,16,16]",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "schedule=linear_probe",
    "schedule.epochs=1",
    "schedule.batch_size=2",
    "trainer.limit_train_batches=2",
    "trainer.progress_bar=false",
    "segmentation.overlays=2",
    "hydra.run.dir=run",
]


@pytest.fixture(scope="module")
def seg_no_test(tmp_path_factory) -> tuple[Path, str, int]:
    """A tiny segmentation run without a test split (test = val), made in this process, counting the
    sliding-window passes made after its test ended: (run dir, stdout, passes after the test)."""
    base = tmp_path_factory.mktemp("seg_no_test")
    squares(base / "data", n=10, size=48)
    calls = {"all": 0, "at_test_end": None}
    windows, test_end = seg_module.sliding_window_logits, SegmentationTask.on_test_epoch_end

    def counted(*args, **kwargs):
        calls["all"] += 1
        return windows(*args, **kwargs)

    def ended(self) -> None:
        calls["at_test_end"] = calls["all"]
        test_end(self)

    with pytest.MonkeyPatch.context() as patch, one_torch_thread():
        patch.setattr(seg_module, "sliding_window_logits", counted)
        patch.setattr(SegmentationTask, "on_test_epoch_end", ended)
        out = cli_in_process(*SEG_NO_TEST, f"dataset.root={base / 'data'}", cwd=base)
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "run", out.stdout, calls["all"] - calls["at_test_end"]


def test_no_test_split_is_named_as_val_in_metrics_console_and_report(seg_no_test):
    run, stdout, _ = seg_no_test
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_is_val"] is True
    assert f"results on {NO_TEST_SPLIT}" in stdout and "test results" not in stdout
    page = (run / "report.html").read_text()
    assert f"Tested on: {NO_TEST_SPLIT}" in page and f"Confusion matrix ({NO_TEST_SPLIT})" in page
    assert f"tested images ({NO_TEST_SPLIT})" in page  # the predicted masks section
    assert "Test split" not in page and "test IoU" not in page and "val IoU" in page


def test_segmentation_overlays_and_report_reuse_the_tests_masks(seg_no_test):
    run, _, passes_after_test = seg_no_test
    assert passes_after_test == 0  # overlays and report: no model run after the test (it was one per image)
    with open(run / "image_scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == 3 and all(0 <= float(r["score"]) <= 1 for r in scores)  # 3 val images tested
    assert len(list((run / "predictions").glob("*_overlay.png"))) == 2
    lowest = sorted(p.stem for p in (run / "plots" / "lowest").glob("*.png"))
    assert lowest == sorted(f"{r['index']}_{r['image']}" for r in scores)  # all three: among the report's 12 lowest


def test_the_reports_confusion_matrix_is_row_normalised_with_counts_on_hover(seg_no_test):
    run, _, _ = seg_no_test
    page = (run / "report.html").read_text()
    table = page[page.index('<table class="cm">') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr><th>(\w+)</th>(.*?)</tr>", table)
    assert [name for name, _ in rows] == ["background", "foreground"]
    with open(run / "confusion_matrix.csv", newline="") as f:
        counts = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])
    for (_, cells), row in zip(rows, counts):
        shares = [float(s) for s in re.findall(r">([\d.]+)%</td>", cells)]
        hover = [int(c.replace(",", "")) for c in re.findall(r'title="([\d,]+) of', cells)]
        assert hover == row.tolist() and sum(shares) == pytest.approx(100, abs=0.2)
        assert shares == pytest.approx((100 * row / row.sum()).tolist(), abs=0.06)


def test_confusion_table_shows_shares_and_keeps_an_empty_row_empty():
    html = confusion_table(np.array([[3, 1], [0, 0]]), ["a", "b"])
    assert 'title="3 of 4">75.0%</td>' in html and 'title="1 of 4">25.0%</td>' in html
    assert '<tr><th>b</th><td class="n">-</td><td class="n">-</td><td class="n">0</td></tr>' in html


def test_results_section_names_the_tested_split(tmp_path):
    def section(metrics: dict) -> str:
        return _results_section(RunRecord(tmp_path, None, {}, {}, {"test": {"acc": 0.5}, **metrics}))

    assert "Tested on: test;" in section({"test_is_val": False})
    assert f"Tested on: {NO_TEST_SPLIT};" in section({"test_is_val": True})
    old_classification_run = {"calibration": {"test_is_val": True}}  # before every task recorded it
    assert no_test_split(old_classification_run) and f"Tested on: {NO_TEST_SPLIT};" in section(old_classification_run)
    assert results_title({"test_is_val": False}) == "test results"


def test_sweep_summary_says_its_test_columns_are_val_scores_without_a_test_split(tmp_path):
    for job, (val, test) in enumerate([(0.8, 0.85), (0.9, 0.88)]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- schedule.lr={job + 1}\n")
        metrics = {"test": {"acc": test}, "checkpoint": {"monitor": "val/acc", "best": val}, "test_is_val": True}
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(metrics))
    write_summary(tmp_path)
    assert (
        f"No test split: the test/ columns are scores on {NO_TEST_SPLIT}."
        in (tmp_path / "sweep_summary.md").read_text()
    )
