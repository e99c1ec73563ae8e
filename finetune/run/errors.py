"""The exception types users see: a clear message, no traceback."""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence

MAX_LISTED = 5  # problems spelled out in one error message


class FinetuneError(Exception):
    """Bad input or configuration: the message says what was wrong, where, and how to fix it."""


class ConfigError(FinetuneError):
    """A config value that cannot work."""


class DatasetError(FinetuneError, ValueError):
    """A problem with the user's data or dataset config; the message says what, where and how to fix."""


DIVERGED_EXIT_CODE = 3  # not 1 (a crash, a traceback) nor 2 (input refused): the run trained and blew up


class TrainingDiverged(Exception):
    """A phase's loss became non-finite or ran far above its start: training stopped before weights that
    diverged were tested or exported. ``message`` is None on ranks other than 0 (rank 0 says it)."""

    exit_code = DIVERGED_EXIT_CODE

    def __init__(self, message: str | None) -> None:
        super().__init__(message or "training diverged")
        self.message = message


class RunInterrupted(BaseException):
    """A run stopped on signal ``signum`` (a BaseException, as KeyboardInterrupt: it is no error of the
    run). ``message`` (None on ranks other than 0) says where it stopped and how to continue."""

    def __init__(self, message: str | None, signum: int) -> None:
        super().__init__(message or f"interrupted by signal {signum}")
        self.message, self.signum = message, signum

    def __reduce__(self) -> tuple[type, tuple[str | None, int]]:
        """Picklable with its message and signal: a launcher that runs jobs in other processes sends it back."""
        return type(self), (self.message, self.signum)

    @property
    def exit_code(self) -> int:
        """130 for SIGINT (Ctrl-C), else 143: SIGTERM, and SIGUSR1 (a scheduler's notice) behaves alike."""
        return 130 if self.signum == signal.SIGINT else 143


def listing(problems: Sequence[str]) -> str:
    """The first few problems, one per line, and how many more there are."""
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "\n  ".join(problems[:MAX_LISTED]) + more


def one_line(named: Sequence[str]) -> str:
    """The first few of ``named`` on one line, and how many more there are."""
    more = f"; ... and {len(named) - MAX_LISTED} more" if len(named) > MAX_LISTED else ""
    return "; ".join(named[:MAX_LISTED]) + more


def choice(key: str, value, allowed: Iterable, hint: str = "") -> None:
    """ConfigError naming ``key`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not known: choose one of {', '.join(map(str, allowed))}"
            + (f" ({hint})" if hint else "")
        )
