"""The one console everything we print goes through (rich)."""

from __future__ import annotations

from rich.console import Console

# Long lines (paths above all) are never broken by rich: a terminal wraps them visually and a log
# file or pipe keeps them whole. Tables are laid out for a wide page when output is not a terminal.
WIDE = 160
console = Console(soft_wrap=True)
if not console.is_terminal and not console.is_jupyter:
    console.width = max(console.width, WIDE)
