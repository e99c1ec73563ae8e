"""One rule for what counts as an image (issue 29): class folders, CSV rows and predict inputs leave out
the same files, and each says so in one line that names the file and how to include it (a dataset's lines: where
the training data is read, not again for a finished run)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from finetune.data.configs import CsvConfig, FolderConfig
from finetune.data.files import WIDTH, find_images, left_out_line, reading_training_data
from finetune.data.folders import load_csv, load_imagefolder
from finetune.run.errors import DatasetError

from ..helpers import class_folders

WHY = "GIF: a 256-colour palette"
HOW = "to include one, convert it to one of .bmp, "
GIF_LINE = "left out 1 GIF: {} (convert to .png to use)"


@pytest.fixture
def folder_with_gif(tmp_path) -> Path:
    """``ant`` and ``bee`` with three PNGs each, and a GIF placeholder among the ants."""
    root = class_folders(tmp_path / "data")
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
    with caplog.at_level(logging.WARNING), reading_training_data():
        from_folders = load_imagefolder(FolderConfig(kind="imagefolder", root=str(root), val_fraction=0.34))
    (line,) = [w for w in _warnings(caplog) if "left out" in w]
    assert line == GIF_LINE.format("ant/placeholder.gif") and len(line) <= WIDTH

    caplog.clear()
    with caplog.at_level(logging.WARNING), reading_training_data():
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
    assert line == GIF_LINE.format("placeholder.gif")


def test_a_listing_for_a_finished_run_says_nothing_left_out(folder_with_gif, caplog):
    """export, report, evaluate list a run's dataset again, outside ``reading_training_data``: no line repeated."""
    with caplog.at_level(logging.WARNING):
        load_imagefolder(FolderConfig(kind="imagefolder", root=str(folder_with_gif), val_fraction=0.34))
        load_csv(_csv(folder_with_gif, on_error="skip"))
    assert _warnings(caplog) == []


def test_many_left_out_files_are_counted_in_one_line_of_80_columns(folder_with_gif, caplog):
    deep = folder_with_gif / "bee" / ("a_long_folder_name_" * 4) / "notes.txt"
    deep.parent.mkdir()
    deep.write_text("not an image")
    Image.new("P", (8, 8)).save(folder_with_gif / "bee" / "placeholder.gif")
    with caplog.at_level(logging.WARNING), reading_training_data():
        load_imagefolder(FolderConfig(kind="imagefolder", root=str(folder_with_gif), val_fraction=0.34))
    (line,) = [w for w in _warnings(caplog) if "left out" in w]
    assert line == "left out 3 GIF/TXT, e.g. ant/placeholder.gif (convert to .png to use)"
    assert len(f"WARNING: {line}") <= 80


@pytest.fixture
def folder_with_bare_files(tmp_path) -> Path:
    """``ant`` and ``bee`` with three PNGs each, and files that are not images among them."""
    root = class_folders(tmp_path / "data")
    (root / "ant" / "Thumbs.db").write_bytes(b"\0" * 8)
    (root / "bee" / "notes.txt").write_text("not an image")
    return root


def test_only_images_pillow_reads_get_the_conversion_hint(folder_with_bare_files, caplog):
    """Thumbs.db, notes.txt: "(not an image)"; among them an image of another format (.psd) is the one named."""
    with caplog.at_level(logging.WARNING), reading_training_data():
        load_imagefolder(FolderConfig(kind="imagefolder", root=str(folder_with_bare_files), val_fraction=0.34))
    (line,) = [w for w in _warnings(caplog) if "left out" in w]
    assert line == "left out 2 DB/TXT, e.g. ant/Thumbs.db (not an image)"
    paths = [Path("ant/Thumbs.db"), Path("bee/cover.psd"), Path("bee/notes.txt")]
    line = left_out_line(paths, str, frozenset({".png"}))
    assert line == "left out 3 files, e.g. bee/cover.psd (convert to .png to use)"
