"""``lightning_lines_dropped``: Lightning's INFO lines dropped, its warnings reach the root logger's handlers (the
run's finetune.log) once and its own console handler not at all; its logger as it was afterwards."""

from __future__ import annotations

import io
import logging

import lightning.pytorch  # noqa: F401 - sets its logger up as a program that imports it first would

from finetune.run.warning_filters import lightning_lines_dropped


def test_lightning_warnings_reach_the_log_file_once_and_its_info_lines_none() -> None:
    logger = logging.getLogger("lightning.pytorch")
    before = (logger.level, logger.propagate, list(logger.handlers))
    own, heard = logging.StreamHandler(io.StringIO()), []  # Lightning's handler when imported before logging
    root = logging.Handler()  # the run's log file
    root.emit = lambda record: heard.append(record.getMessage())
    logger.addHandler(own)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger().addHandler(root)
    try:
        with lightning_lines_dropped():
            logging.getLogger("lightning.pytorch.trainer").info("GPU available: False")
            logging.getLogger("lightning.pytorch.trainer").warning("the batch size is odd")
        after = (logger.level, logger.propagate, list(logger.handlers))
    finally:
        logging.getLogger().removeHandler(root)
        logger.removeHandler(own)
        logger.setLevel(before[0])
        logger.propagate = before[1]
    assert heard == ["the batch size is odd"]
    assert own.stream.getvalue() == ""
    assert after == (logging.INFO, False, [*before[2], own])
