"""Python arguments of ``finetune.train`` / ``plan`` / ``advise`` as the command line's Hydra overrides.

The rule (``docs``: the Python API):

* a positional string is an override exactly as typed after ``finetune``: ``"+classification=digits"``;
* ``recipe="classification/digits"`` is ``+classification=digits``;
* ``key=value`` sets a config group's option (``backbone="resnet18"``) or a dotted key
  (``**{"schedule.epochs": 1}``); the value is written in Hydra's grammar: None is ``null``, a bool
  ``true``/``false``, a list ``[...]``, a string or ``Path`` the text (quoted where Hydra would read it otherwise);
* a dict spreads into dotted keys, nested dicts too: ``backbone={"name": "resnet10t", "pretrained": False}`` is
  ``backbone.name=resnet10t backbone.pretrained=false``; in a dict given for a config group, ``kind`` picks the
  group's option: ``dataset={"kind": "imagefolder", "root": "~/photos"}`` is ``dataset=imagefolder
  dataset.root=~/photos``.

Positional overrides come first, then the recipe, then the keywords in their order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath

from finetune.run.errors import FinetuneError


def as_overrides(
    positional: Sequence[str], recipe: str | None, params: Mapping[str, object], groups: set[str]
) -> list[str]:
    """The override strings of a call (``groups``: the config groups, whose dicts may name a ``kind``)."""
    for item in positional:
        if not isinstance(item, str):
            raise FinetuneError(f"{item!r}: a positional argument is an override string such as 'backbone=resnet18'")
    overrides = list(positional)
    if recipe is not None:
        overrides.append(recipe_override(recipe))
    for key, value in params.items():
        overrides += keyword_overrides(key, value, groups)
    return overrides


def recipe_override(recipe: str) -> str:
    """``"classification/digits"`` -> ``+classification=digits``."""
    group, sep, name = recipe.partition("/")
    if not (sep and group and name) or "/" in name:
        raise FinetuneError(f"recipe={recipe!r}: write <group>/<name>, e.g. recipe='classification/digits'")
    return f"+{group}={name}"


def keyword_overrides(key: str, value: object, groups: set[str]) -> list[str]:
    """``key=value`` as overrides: a dict spreads into ``key.<k>`` (``kind`` picks a group's option)."""
    if not isinstance(value, Mapping):
        return [f"{key}={hydra_value(value)}"]
    entries = dict(value)
    picked = [f"{key}={hydra_value(entries.pop('kind'))}"] if key in groups and "kind" in entries else []
    return picked + [o for k, v in entries.items() for o in keyword_overrides(f"{key}.{k}", v, set())]


def hydra_value(value: object) -> str:
    """``value`` in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # inf, -inf, nan
    if isinstance(value, (str, PurePath)):
        return _string(str(value))
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise FinetuneError(f"{value!r}: a config value is None, a bool, a number, a string, a path, a list or a dict")


def _string(text: str) -> str:
    """``text`` as is where Hydra's parser reads it back as that string, else single-quoted (quotes and the
    backslashes before them escaped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        if OverridesParser.create().parse_override(f"k={text}").value() == text:
            return text
    except HydraException:
        pass
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"
