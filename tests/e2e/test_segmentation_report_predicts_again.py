"""A segmentation report of a run whose test kept no masks or scores (an older run, a test on several devices)
predicts them again, as the test did: the same panels as the report built from what the test kept."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from finetune.tasks.segmentation.tested import LOWEST_DIR, SCORES_FILE


def _masks_shown(run: Path) -> list[tuple[str, str, str]]:
    """(image, score, embedded panel) of each predicted-mask card of ``run``'s report, as rebuilt now."""
    from finetune.commands.report import main

    assert main([f"run={run}"]) == 0
    html = (run / "report.html").read_text()
    cards = re.findall(
        r'<img class="[^"]*" src="([^"]+)" alt="overlay of test image ([^:]+):[^"]*">.*?<b>([0-9.]+)</b>', html
    )
    assert cards, html[-2000:]
    return [(stem, score, src) for src, stem, score in cards]


def test_a_report_predicts_what_the_test_did_not_keep(tiny_seg_run, tmp_path):
    """On a copy of the shared run (a report rewrites report.html): the panels of the report built from what the
    test kept, then with the masks forgotten, then with the scores forgotten too (a report writes neither back)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_seg_run, run, symlinks=True)
    kept = _masks_shown(run)
    assert len(kept) == 2
    shutil.rmtree(run / LOWEST_DIR)
    assert _masks_shown(run) == kept and not (run / LOWEST_DIR).exists()
    (run / SCORES_FILE).unlink()
    assert _masks_shown(run) == kept
