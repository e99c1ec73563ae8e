"""One registry idiom for every named choice (heads, decoders, adapters, optimizers, schedulers, dataset
kinds, loggers, export formats): a ``Registry`` of frozen-dataclass entries, one per name.

An entry type subclasses ``Entry`` (``name``, a one-line ``summary``) and adds what its kind needs. Entries
of the light registries name their heavy builder as a ``"package.module:attribute"`` string that
``resolve`` imports on first use, so config checks read every registry without importing torch.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from finetune.run.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One named choice: its ``name`` (what a config or command line says) and a one-line ``summary``."""

    name: str
    summary: str

    @property
    def label(self) -> str:
        """How the entry is listed among the choices."""
        return self.name


E = TypeVar("E", bound=Entry)


def resolve(reference: str) -> Any:
    """The object a ``"package.module:attribute"`` reference names (its module imported on first use)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registry(Mapping[str, E], Generic[E]):
    """Entries by name, in registration order. ``key`` names the config key (or argument) that picks one;
    ``hint`` is added to the message for an unknown name (e.g. how to give several)."""

    def __init__(self, key: str, entries: Iterable[E], hint: str = "") -> None:
        self.key, self.hint = key, hint
        self._entries: dict[str, E] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise ValueError(f"{key}: {entry.name!r} is registered twice")
            self._entries[entry.name] = entry

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self._entries)})"

    def get(self, name: Any, *, key: str | None = None, hint: str | None = None) -> E:  # type: ignore[override]
        """The entry called ``name``; else a one-line ConfigError naming ``key`` (default: the registry's),
        the choices and the nearest one."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        near = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = self.hint if hint is None else hint
        raise ConfigError(
            f"{key or self.key}={name!r} is not known: choose one of "
            + ", ".join(entry.label for entry in self._entries.values())
            + (f" (did you mean {near[0]}?)" if near else "")
            + (f"; {hint}" if hint else "")
        )
