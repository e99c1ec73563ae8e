"""A dataset's "left out" line (a GIF among the images) is said by the commands that read the training data
(train; inspect, advise, lr-find through ``tool_main``) and not again by those that read a finished run (report,
export, evaluate: they list the dataset outside ``reading_training_data``). In process: the run's data module listed
inside and outside the block, and the training entry point spied on."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf
from PIL import Image

from finetune.commands import train as run_module
from finetune.commands.tool import tool_main
from finetune.data.files import reading_training_data, says_left_out
from finetune.tasks.registry import get_task
from finetune.training import train as train_module

from ..helpers import TINY, class_folders, compose_config


def left_out(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out")]


def test_the_training_data_names_the_gif_once_and_a_finished_runs_listing_does_not(tmp_path, caplog) -> None:
    """The data module train builds (``task.data_module``, as report and export rebuild it) says the line inside
    ``reading_training_data`` only."""
    root = class_folders(tmp_path / "data", 6, (32, 32))
    Image.new("P", (8, 8)).save(root / "ant" / "placeholder.gif")
    cfg = compose_config(*TINY, "dataset=imagefolder", f"dataset.root={root}")
    task = get_task(cfg.task)
    with caplog.at_level(logging.WARNING), reading_training_data():
        task.data_module(cfg)
    assert left_out(caplog) == ["left out 1 GIF: ant/placeholder.gif (convert to .png to use)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        task.data_module(cfg)  # a finished run's report or export
    assert left_out(caplog) == []


def test_train_runs_inside_reading_training_data(tmp_path, monkeypatch) -> None:
    """``finetune train``, ``finetune.train`` and a DDP worker all train through ``commands.train.train``: the
    training (``training.train.train``, spied on here) runs inside the block, and the block ends with it."""
    seen = []
    monkeypatch.setattr(train_module, "train", lambda task, cfg, run_dir, resume_from: seen.append(says_left_out()))
    run_module.train(OmegaConf.create({"task": "classification"}), tmp_path)
    assert (seen, says_left_out()) == ([True], False)


def test_the_tools_that_take_training_overrides_read_the_training_data() -> None:
    """inspect, advise and lr-find run inside ``reading_training_data`` (their overrides prechecked first)."""
    seen = []
    code = tool_main([], None, {}, "finetune inspect", "", dict, lambda parsed, overrides: seen.append(says_left_out()))
    assert (code, seen, says_left_out()) == (None, [True], False)
