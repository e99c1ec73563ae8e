"""The console's width: 80 columns (or ``COLUMNS``) for a pipe or a file; a notebook keeps rich's own."""

from __future__ import annotations

import io

import rich.console

from finetune.run.console import PIPE_WIDTH, fit_width


def test_a_pipe_gets_80_columns_and_a_notebook_keeps_its_width(monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    notebook = rich.console.Console(file=io.StringIO(), force_jupyter=True)
    kept = notebook.width
    fit_width(notebook)
    assert notebook.width == kept != PIPE_WIDTH
    piped = rich.console.Console(file=io.StringIO(), force_terminal=False, force_jupyter=False)
    fit_width(piped)
    assert piped.width == PIPE_WIDTH
    monkeypatch.setenv("COLUMNS", "132")
    fit_width(piped)
    assert piped.width == 132
