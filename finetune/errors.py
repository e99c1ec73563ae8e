"""The exception types users see: a clear message, no traceback."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

MAX_LISTED = 5  # problems spelled out in one error message


class FinetuneError(Exception):
    """Bad input or configuration: the message says what was wrong, where, and how to fix it."""


class ConfigError(FinetuneError):
    """A config value that cannot work."""


class DatasetError(FinetuneError, ValueError):
    """A problem with the user's data or dataset config; the message says what, where and how to fix."""


def listing(problems: Sequence[str]) -> str:
    """The first few problems, one per line, and how many more there are."""
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n  ".join(problems[:MAX_LISTED]) + more


def choice(key: str, value, allowed: Iterable, hint: str = "") -> None:
    """ConfigError naming ``key`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known: choose one of {', '.join(map(str, allowed))}"
                          + (f" ({hint})" if hint else ""))
