"""One rule for what counts as an image (issue 29): class folders, CSV rows and predict inputs leave out
the same files, and each says so in one line that names the file, why, and how to include it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from finetune.data.configs import CsvConfig, FolderConfig
from finetune.data.files import find_images
from finetune.data.folders import load_csv, load_imagefolder
from finetune.run.errors import DatasetError

from ..helpers import write_png

WHY = "GIF: a 256-colour palette"
HOW = "to include one, convert it to one of .bmp, "


@pytest.fixture
def folder_with_gif(tmp_path) -> Path:
    """``ant`` and ``bee`` with three PNGs each, and a GIF placeholder among the ants."""
    root = tmp_path / "data"
    for c, name in enumerate(("ant", "bee")):
        for i in range(3):
            write_png(root / name / f"{name}{i}.png", 10 * c + i)
    Image.new("P", (8, 8)).save(root / "ant" / "placeholder.gif")
    return root


def _csv(root: Path, **keys) -> CsvConfig:
    rows = [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.*"))]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return CsvConfig(kind="csv", csv=str(root / "labels.csv"), val_fraction=0.34, test_fraction=0.0, **keys)


def _images(source) -> set[str]:
    return {Path(p).name for split in source.splits.values() for p in split.images}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_folders_and_csv_count_the_same_images_and_name_the_gif(folder_with_gif, caplog):
    root = folder_with_gif
    with caplog.at_level(logging.WARNING):
        from_folders = load_imagefolder(FolderConfig(kind="imagefolder", root=str(root), val_fraction=0.34))
    (line,) = [w for w in _warnings(caplog) if "left out" in w]
    assert "ant/placeholder.gif" in line and WHY in line and HOW in line and "\n" not in line

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        from_csv = load_csv(_csv(root, on_error="skip"))
    (row_line,) = [w for w in _warnings(caplog) if "left out" in w]
    assert "'ant/placeholder.gif'" in row_line and WHY in row_line and HOW in row_line and "\n" not in row_line

    assert _images(from_csv) == _images(from_folders) and len(_images(from_folders)) == 6
    assert "placeholder.gif" not in _images(from_folders)
    assert from_csv.skipped == 1


def test_a_csv_row_naming_a_gif_is_refused_in_one_line_that_says_how_to_include_it(folder_with_gif):
    with pytest.raises(DatasetError) as refused:
        load_csv(_csv(folder_with_gif))
    message = str(refused.value)
    assert "\n" not in message and "'ant/placeholder.gif'" in message
    assert WHY in message and "to include one, convert it to one of .bmp, " in message and "on_error=skip" in message


def test_predict_inputs_follow_the_same_rule(folder_with_gif, caplog):
    with caplog.at_level(logging.WARNING):
        found = find_images(str(folder_with_gif / "ant"))
    assert [p.name for p in found] == ["ant0.png", "ant1.png", "ant2.png"]
    (line,) = [w for w in _warnings(caplog) if "left out" in w]
    assert "placeholder.gif" in line and WHY in line and HOW in line
