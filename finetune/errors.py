"""The exception types users see: a clear message, no traceback."""
from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 5  # problems spelled out in one error message


class FinetuneError(Exception):
    """Bad input or configuration: the message says what was wrong, where, and how to fix it."""


class DatasetError(FinetuneError, ValueError):
    """A problem with the user's data or dataset config; the message says what, where and how to fix."""


def listing(problems: Sequence[str]) -> str:
    """The first few problems, one per line, and how many more there are."""
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n  ".join(problems[:MAX_LISTED]) + more
