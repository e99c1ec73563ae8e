"""The config's keys: how a command line spells them (``schedule.phases.0.lr``, ``+a.b@pkg=v``), the type the
schema (``finetune.run.schema``) declares for one, that type in words, and the first required value nothing set.

Read by the command-line checks (``finetune.commands.config_errors``) and by the layers that read a saved config
back (``finetune.run.config``, ``finetune.run.records``). No torch import.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def override_key(arg: str) -> str:
    """The key (or config group) of a command-line override: ``+a.b@pkg=v`` -> ``a.b``."""
    return arg.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def bracketed(key: str) -> str:
    """A command-line key in OmegaConf's spelling: ``schedule.phases.0.lr`` -> ``schedule.phases[0].lr``."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key)


def dotted(key: str) -> str:
    """An OmegaConf key in the command line's spelling: ``schedule.phases[0].lr`` -> ``schedule.phases.0.lr``."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


def parts(key: str) -> list[str]:
    """The names and indices of a key in either spelling: ``a.b[0].c`` -> ``["a", "b", "0", "c"]``."""
    return re.findall(r"[^.\[\]]+", key)


def missing_value(cfg: DictConfig) -> str | None:
    """The first required value nothing set (``???``), as one line; None when every value is set. (Not
    ``OmegaConf.missing_keys``, which resolves ``${…}`` and fails on a reference to the missing value.)"""
    keys = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if not keys:
        return None
    key = keys[0]
    return f"{key}=???: a required value is not set; set it to {describe(declared_type(cfg, key))}: {dotted(key)}=…"


def declared_type(cfg: DictConfig, key: str) -> Any:
    """The type the schema declares for ``key`` (dotted, ``a.b[0].c``) of the composed ``cfg``."""
    node: Any = cfg
    declared: Any = OmegaConf.get_type(cfg)
    for part in parts(key):
        declared = unwrap(declared)[0]
        if (declared is Any or declared is dict) and isinstance(node, DictConfig):
            declared = OmegaConf.get_type(node)  # a group of kinds (dataset, head): the node's own schema
        if dataclasses.is_dataclass(declared):
            declared = typing.get_type_hints(declared).get(part, Any)
        elif typing.get_origin(declared) in (list, dict):
            declared = typing.get_args(declared)[-1] if typing.get_args(declared) else Any
        else:
            return Any
        node = _child(node, part)
    return declared


def describe(declared: Any) -> str:
    """``declared`` in words: a number, a whole number, true or false, a list …"""
    inner, nullable = unwrap(declared)
    origin = typing.get_origin(inner) or inner
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a word"}
    if origin in words:
        text = words[origin]
    elif origin is list:
        text = f"a list of {_plural(typing.get_args(inner))}" if typing.get_args(inner) else "a list"
    elif origin is dict:
        text = "a mapping {key: value, …}"
    elif dataclasses.is_dataclass(inner):
        text = "a group of keys (" + ", ".join(f.name for f in dataclasses.fields(inner)) + ")"
    else:
        text = "a value"
    return f"{text} or null" if nullable else text


def unwrap(declared: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(declared) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(declared) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return declared, False


def _missing(node: Any, prefix: str = "") -> Iterator[str]:
    """The keys (``a.b[0].c``) of the ``???`` values of a plain container."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}[{key}]" if isinstance(node, list) else f"{prefix}.{key}" if prefix else str(key)
        if value == "???":
            yield name
        else:
            yield from _missing(value, name)


def _child(node: Any, part: str) -> Any:
    try:
        if isinstance(node, ListConfig):
            return node._get_node(int(part))
        if isinstance(node, DictConfig):
            return node._get_node(part)
    except (IndexError, KeyError, ValueError, OmegaConfBaseException):
        pass
    return None


def _plural(args: tuple) -> str:
    return {int: "whole numbers", float: "numbers", str: "words"}.get(args[0], "values") if args else "values"
