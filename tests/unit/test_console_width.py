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


def _printed(*objects: object, width: int = 80) -> str:
    from finetune.run.console import Console

    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(*objects)
    return out.getvalue()


def _stage_table():
    from rich.table import Table

    table = Table(title="phase 1/2 'probe'")
    for name in ("stage", "params", "trainable", "status", "BN mode", "units", "connections"):
        table.add_column(name, justify="right" if name in ("params", "trainable", "units", "connections") else "left")
    table.add_row("stage2", "13,968", "0", "frozen", "eval", "1,671,168", "18,776,064")
    table.add_row("stage7", "1,017,600", "0", "frozen", "eval", "126,208", "16,239,616")
    table.add_row("head", "10,248", "10,248", "trainable", "-", "8", "10,240")
    return table


def test_a_stage_table_two_columns_too_wide_keeps_every_number_on_one_line() -> None:
    """The stage table at 128 px needs 82 columns: without its outer border it fits 80, no number or header split
    (last round rich folded it into equal columns: '18,776,06' over '4')."""
    printed = _printed(_stage_table())
    assert max(len(line) for line in printed.splitlines()) <= 80
    for whole in ("18,776,064", "1,671,168", "connections", "trainable"):
        assert whole in printed


def test_a_much_narrower_screen_folds_a_value_and_never_cuts_it() -> None:
    """Too narrow for whole numbers, cells fold onto the next line, every digit kept: never "16,239,6…"."""
    printed = _printed(_stage_table(), width=40)
    assert "…" not in printed
    assert max(len(line) for line in printed.splitlines()) <= 40
    last_column = "".join(line.rsplit("│", 1)[1].strip() for line in printed.splitlines() if "│" in line)
    assert "18,776,064" in last_column


def test_a_title_wider_than_its_cells_stays_on_one_line() -> None:
    from rich.table import Table

    title = "exports (parity on real images: max |Δlogit|, top-1 agreement)"
    table = Table("format", "file", title=title, title_justify="left")
    table.add_row("head", "model.safetensors")
    assert title in _printed(table)


LONG_TITLE = "exports (parity on real images: max |Δlogit|, top-1 agreement)"


def _small_table(title=None):
    from rich.table import Table

    table = Table("format", "file", title=title, title_justify="left")
    table.add_row("head", "model.safetensors")
    return table


def test_a_table_without_a_title_prints_its_cells_first() -> None:
    lines = _printed(_small_table()).splitlines()
    assert "format" in lines[1] and "model.safetensors" in lines[3]


def test_a_text_title_wider_than_its_cells_stays_on_one_line() -> None:
    from rich.text import Text

    assert LONG_TITLE in _printed(_small_table(Text(LONG_TITLE)))


def test_a_moved_title_keeps_its_markup() -> None:
    printed = _printed(_small_table(f"[bold]{LONG_TITLE}[/bold]"))
    assert printed.splitlines()[0] == LONG_TITLE


def test_a_table_printed_twice_prints_the_same_both_times() -> None:
    """Fitting lays out a copy: the caller's table keeps its title."""
    table = _small_table(LONG_TITLE)
    first = _printed(table)
    assert LONG_TITLE in first and _printed(table) == first


def test_wide_padding_folds_numbers_and_never_drops_a_digit() -> None:
    """With padding=(0, 2) five whole 13-character numbers do not fit 80 columns: they fold (rich would crop a
    no_wrap cell it has no room for: 1,000,000,00)."""
    from rich.table import Table

    table = Table(*"abcde", padding=(0, 2))
    for column in table.columns:
        column.justify = "right"
    table.add_row(*["1,000,000,000"] * 5)
    printed = _printed(table)
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert sum(char.isdigit() for char in printed) == 5 * 10


def test_the_log_copy_keeps_the_wide_layout() -> None:
    """The console gets the 80-column layout (no outer border), the log file the table laid out ``WIDE``."""
    import logging

    from finetune.run.console import RECORD

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record.getMessage())

    kept: list[str] = []
    table = _stage_table()
    RECORD.addHandler(handler := Keep())
    try:
        printed = _printed(table)
    finally:
        RECORD.removeHandler(handler)
    assert "┏" not in printed and len(kept) == 1
    assert kept[0].splitlines()[1].startswith("┏") and table.show_edge and table.title


def test_a_string_printed_before_a_moved_title_keeps_its_own_line() -> None:
    lines = _printed("label:", _small_table(LONG_TITLE)).splitlines()
    assert lines[:2] == ["label:", LONG_TITLE]
