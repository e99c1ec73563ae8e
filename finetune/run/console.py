"""The one console everything we print goes through (rich), and the copy of it a run's log file keeps."""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import rich.console
from rich.console import Group, RenderableType
from rich.control import Control
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# Long lines (paths above all) are never broken by rich: a terminal wraps them visually and a log
# file or pipe keeps them whole. Tables are laid out for a wide page in the log file, and 80 columns wide
# when output goes to a pipe or file (COLUMNS, if set, says otherwise).
WIDE = 160
PIPE_WIDTH = 80

# What the console showed, as plain text, for the run's log file only (no handler of its own: ``log_file_copy``
# lends it the log file's): a table or a progress line is printed once, on the console, not again by logging.
RECORD = logging.getLogger("finetune.console")
RECORD.propagate = False
RECORD.setLevel(logging.INFO)


def plain_text(*objects: object, **options) -> str:
    """``objects`` as the console prints them (``options``: ``Console.print``'s), without colour or markup, laid
    out ``WIDE`` columns wide (a table as ``fit_table`` lays it out for that width)."""
    out = io.StringIO()
    wide = rich.console.Console(file=out, width=WIDE, color_system=None, soft_wrap=True)
    wide.print(*(fit_table(o, wide) if isinstance(o, Table) else o for o in objects), **options)
    return out.getvalue().rstrip("\n")


def fit_table(table: Table, screen: rich.console.Console) -> RenderableType:
    """A copy of ``table`` laid out for ``screen`` (``table`` itself is left as it is), as what to print: a title
    wider than the cells goes on a line of its own above them (rich would wrap it to the cells' width); where the
    screen is narrower than the table, first without its outer border and edge padding, then text cells fold onto
    the next line while numbers (right-justified columns) stay whole where the table still fits so, else they fold
    too; a cell never ends in "…" (rich's default, which printed a stage's connections as 16,239,6…)."""
    table = copy.deepcopy(table)
    for column in table.columns:
        if column.overflow == "ellipsis":
            column.overflow = "fold"
    natural = _natural_width(table, screen)
    title = _title_text(table, screen)
    moved = title is not None and title.cell_len > natural  # on a line of its own, not wrapped
    if moved:
        table.title = None
    if natural > screen.width:
        table.show_edge = table.pad_edge = False
        _keep_numbers_whole(table, screen)
    return Group(title, table) if moved else table


def _title_text(table: Table, screen: rich.console.Console) -> Text | None:
    """``table``'s title as rich prints it: a ``str`` with its markup and the title style, a ``Text`` as it is."""
    if isinstance(table.title, str):
        return screen.render_str(table.title, style=table.title_style or "table.title", highlight=False)
    return table.title if isinstance(table.title, Text) else None


def _natural_width(table: Table, screen: rich.console.Console) -> int:
    return Measurement.get(screen, screen.options.update_width(10_000), table).maximum


def _keep_numbers_whole(table: Table, screen: rich.console.Console) -> None:
    """Right-justified columns (numbers) on one line where ``table`` still fits ``screen`` so: rich crops a
    ``no_wrap`` cell it has no room for."""
    numbers = [column for column in table.columns if column.justify == "right" and not column.no_wrap]
    for column in numbers:
        column.no_wrap = True
    if _least_width(table, screen) > screen.width:
        for column in numbers:
            column.no_wrap = False


def _least_width(table: Table, screen: rich.console.Console) -> int:
    """The narrowest ``table`` prints with no cell cut, as rich measures it (padding, rules, markup, wide
    characters): a ``no_wrap`` column as wide as its widest cell, any other as wide as its longest word."""
    trial = copy.deepcopy(table)
    options = screen.options.update_width(10_000)
    for column in trial.columns:
        if column.no_wrap:
            widest = max(Measurement.get(screen, options, cell).maximum for cell in (column.header, *column.cells))
            column.min_width = max(widest, column.min_width or 0)
    return Measurement.get(screen, options, trial).minimum


class Console(rich.console.Console):
    """A rich console whose printed lines are also recorded in the log file ``log_file_copy`` names."""

    def print(self, *objects, **kwargs) -> None:
        super().print(*(fit_table(o, self) if isinstance(o, Table) else o for o in objects), **kwargs)
        if RECORD.handlers and objects and not all(isinstance(o, Control) for o in objects):  # Control: a live redraw
            RECORD.info(plain_text(*objects, **kwargs))


console = Console(soft_wrap=True)


def console_is_terminal() -> bool:
    """Whether the console draws on a terminal (not a notebook, pipe or file): live bars, else plain lines."""
    return console.is_terminal and not console.is_jupyter


def fit_width(screen: rich.console.Console) -> None:
    """A pipe or file gets 80 columns unless ``COLUMNS`` says (not the width of a terminal on stdin); a terminal
    and a notebook keep the width rich gives them."""
    if not screen.is_terminal and not screen.is_jupyter:
        screen.width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else PIPE_WIDTH


fit_width(console)


@contextmanager
def log_file_copy(root: logging.Logger | None = None) -> Iterator[None]:
    """Inside: what ``console`` prints, the ``RECORD`` lines (each epoch's metrics) and every warning shown are
    copied to the log files ``root`` (the root logger: Hydra's ``<run dir>/finetune.log``) writes. Warnings are
    still shown where Python shows them (stderr); records of the ``logging`` module reach the file already."""
    files = [h for h in (root or logging.getLogger()).handlers if isinstance(h, logging.FileHandler)]
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        shown(message, category, filename, lineno, file, line)
        RECORD.warning("%s: %s", category.__name__, message)

    for handler in files:
        RECORD.addHandler(handler)
    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = shown
        for handler in files:
            RECORD.removeHandler(handler)
