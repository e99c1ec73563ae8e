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


def test_a_narrow_table_folds_a_value_and_never_cuts_it(monkeypatch) -> None:
    """At 80 columns rich would end a long number with '…' (a stage table's connections read 16,239,6…):
    our console folds it onto the next line, every digit kept."""
    from rich.table import Table

    from finetune.run.console import Console

    out = io.StringIO()
    screen = Console(file=out, width=40, force_terminal=False, color_system=None)
    table = Table("stage", "params", "connections")
    table.add_row("stage7", "1,017,600", "16,239,616,000,123")
    table.add_row("head", "2,562", "2,560")
    screen.print(table)
    printed = out.getvalue()
    assert "…" not in printed
    assert "16,239,616,000,123" in "".join(ch for ch in printed if ch not in " │\n")
