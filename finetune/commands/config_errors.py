"""Hydra's and OmegaConf's errors about a training command line, as the one ``finetune: error:`` line a
user sees: ``<key>=<value>: <what is wrong>; <how to fix>``, with the nearest key where one is close.

The errors name the key (``full_key``, or in their text); the schema (``finetune.run.schema``) says what
it should hold, which task or kind declares it, or which key does what a Lightning Trainer argument
would; an unknown option of a group gets the group's options. An error this cannot place is left to
Hydra. No torch import.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from finetune.run.schema import KINDS, LIGHTNING_ELSEWHERE, TASKS

Compose = Callable[[Sequence[str]], DictConfig]
_ABSENT = object()
_FILE_ERROR = re.compile(r"In '([^']+)': (\w+) raised while composing config:\n(.*)", re.S)


def explain(err: Exception, overrides: Sequence[str], compose: Compose, groups: set[str]) -> str | None:
    """The one line for ``err``, raised composing ``overrides`` (``compose`` composes without checks;
    ``groups``: the config groups, whose selections compose the base the message compares with); None
    when Hydra's own message says it better."""
    text = str(err)
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return unknown_option(err.missing_cfg_file, err.options)
    base = _base(overrides, compose, groups)
    cause = err.__cause__ if err.__cause__ is not None else err
    if match := re.match(r"Could not override '([^']+)'", text):
        key = match.group(1)
        arg = _shown(overrides, key)
        if "=" in arg and not _bracketed(key).startswith(getattr(cause, "full_key", None) or key):
            return _bad_override(arg, cause, base)  # a key inside the list or mapping given as the value
        return unknown_key(arg, key, base, _task(base, cause))
    if match := re.match(r"Error merging override (.+)", text):
        return _bad_override(match.group(1), cause, base)
    if match := _FILE_ERROR.match(text):
        where, kind, detail = match.groups()
        key = re.search(r"full_key: (\S+)", detail)
        if key is None:
            return None
        shown = f"{key.group(1)} (in {where}.yaml)"
        if kind in ("ConfigKeyError", "ConfigAttributeError"):
            return unknown_key(shown, key.group(1), base, _task(base, detail))
        return f"{shown}: {detail.splitlines()[0]}"
    if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
        key = err.full_key
        return f"{_shown(overrides, key)}: {text.splitlines()[0]}"
    return None


def unknown_option(missing: str, options: Sequence[str]) -> str:
    """``head=mpl``: the group's options, and the nearest one where one is close."""
    group, _, option = missing.rpartition("/")
    near = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {group}={near[0]}?)" if near else ""
    return f"{group}={option}: not an option of {group}; choose one of {', '.join(sorted(options))}{hint}"


def unknown_key(shown: str, key: str, cfg: DictConfig | None, task: str | None) -> str:
    """What to say about ``key`` (``shown`` as the user wrote it), which the config ``cfg`` of ``task`` lacks."""
    group, _, name = key.partition(".")
    if group == "trainer" and name in LIGHTNING_ELSEWHERE:
        why, fix = LIGHTNING_ELSEWHERE[name]
        value = shown.split("=", 1)[1] if "=" in shown else "…"
        return f"{shown}: finetune sets Lightning's {name} itself ({why}); use {fix.format(value=value)}"
    own = TASKS.get(task or "")
    owner = next((t for t, schema in TASKS.items() if t != task and _declares(schema, key)), None)
    if owner and not (own and _declares(own, key)):
        return (
            f"{shown}: {key} is a key of task={owner}, and this run is task={task}; remove it, or choose task={owner}"
        )
    kind = cfg is not None and group in KINDS and OmegaConf.select(cfg, f"{group}.kind", default=None)
    others = [k for k, schema in KINDS.get(group, {}).items() if k != kind and _declares(schema, name)]
    if kind and others:
        return (
            f"{shown}: {key} is a key of {group}={'|'.join(others)}, and this run's {group} is {kind}; "
            f"remove it, or choose {group}={others[0]}"
        )
    near = difflib.get_close_matches(_bracketed(key), _candidates(cfg, key), n=1, cutoff=0.6)
    if near and "[" not in key:  # in the spelling the user typed: schedule.phases.0.lr
        near = [re.sub(r"\[(\d+)\]", r".\1", near[0])]
    hint = f"did you mean {near[0]}?" if near else "finetune train --cfg job lists every key"
    return f"{shown}: not a key of the config; {hint}"


def wrong_type(key: str, value: Any, cfg: DictConfig | None) -> str:
    """``key`` (dotted, ``a.b[0].c``) of ``cfg`` cannot hold ``value``: what it takes, e.g. its current value."""
    declared = declared_type(cfg, key) if cfg is not None else Any
    what = describe(declared)
    example = _example(cfg, key) if cfg is not None else None
    fix = f"e.g. {key}={example}" if example is not None else f"give {key} {what}"
    if dataclasses.is_dataclass(_unwrap(declared)[0]):
        fields = [f.name for f in dataclasses.fields(_unwrap(declared)[0])]
        fix = f"set its keys one by one, e.g. {key}.{fields[0]}=…"
    return f"{key}={_plain(value)}: {key} takes {what}; {fix}"


def missing_value(cfg: DictConfig) -> str | None:
    """The first required value nothing set (``???``), as one line; None when every value is set."""
    keys = sorted(OmegaConf.missing_keys(cfg))
    if not keys:
        return None
    key = keys[0]
    override = re.sub(r"\[(\d+)\]", r".\1", key)
    return f"{key}=???: a required value is not set; set it to {describe(declared_type(cfg, key))}: {override}=…"


def bad_reference(cfg: DictConfig, err: OmegaConfBaseException) -> str:
    """A ``${…}`` reference of ``cfg`` that does not resolve (``err``), as one line."""
    key = getattr(err, "full_key", None) or "a value"
    raw = _value_at_path(OmegaConf.to_container(cfg, resolve=False), _bracketed(key))
    return f"{key}={_plain(raw)}: {str(err).splitlines()[0]}; fix or remove the ${{…}} reference"


def declared_type(cfg: DictConfig, key: str) -> Any:
    """The type the schema declares for ``key`` (dotted, ``a.b[0].c``) of the composed ``cfg``."""
    node: Any = cfg
    declared: Any = OmegaConf.get_type(cfg)
    for part in _parts(key):
        declared = _unwrap(declared)[0]
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
    inner, nullable = _unwrap(declared)
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


def leaf_keys(cfg: DictConfig | dict, prefix: str = "") -> Iterator[str]:
    """Every dotted key of ``cfg`` (groups and their keys; lists are not descended)."""
    node = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    for key, value in node.items():
        name = f"{prefix}{key}"
        yield name
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{name}.")


def declares(cfg: DictConfig, key: str) -> bool:
    """True when the schema of the composed ``cfg`` declares ``key`` (a key under a mapping the schema
    leaves open, such as ``dataset.splits``, counts as declared)."""
    parent, _, name = _bracketed(key).rpartition(".")
    fields = _fields(cfg, parent)
    return fields is None or name in fields


def _fields(cfg: DictConfig, parent: str) -> list[str] | None:
    """The keys the schema declares under ``parent`` ("" for the top); None where it names none."""
    declared, _ = _unwrap(declared_type(cfg, parent)) if parent else (OmegaConf.get_type(cfg), False)
    if declared is Any or declared is dict:
        node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
        declared = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return [f.name for f in dataclasses.fields(declared)] if dataclasses.is_dataclass(declared) else None


def _candidates(cfg: DictConfig | None, key: str) -> list[str]:
    """The keys ``key`` may be a misspelling of: every key of ``cfg`` and those of ``key``'s parent (e.g. a
    list entry's)."""
    if cfg is None:
        return []
    parent = _bracketed(key).rpartition(".")[0]
    keys = [k for k in leaf_keys(cfg) if declares(cfg, k)]  # not a key a "+" added
    return [*keys, *(f"{parent}.{name}" for name in (_fields(cfg, parent) or []) if parent)]


def _bad_override(arg: str, cause: BaseException, base: DictConfig | None) -> str | None:
    """``arg`` (``key=value``) could not be merged: a value of the wrong type, or a mapping / list entry
    with a key the schema lacks."""
    key, _, raw = arg.lstrip("+~").partition("=")
    key = _bracketed(key.split("@", 1)[0])
    full = getattr(cause, "full_key", None) or key
    value: Any = raw
    if not full.startswith(key):  # inside a list or mapping given whole: its key is relative to the entry
        full, value = _locate(key, arg, base, full)
    elif full != key:
        value = _value_at(arg, full[len(key) :])
    if isinstance(cause, ConfigKeyError):
        return unknown_key(f"{full}={_plain(value)}" if value is not _ABSENT else full, full, base, _task(base, cause))
    if isinstance(cause, ValidationError):
        return wrong_type(full, value, base)
    return None


def _locate(key: str, arg: str, base: DictConfig | None, relative: str) -> tuple[str, Any]:
    """The full key and value of the entry of ``arg``'s list (or mapping) that ``relative`` (the key the
    error names, relative to the entry) belongs to: the first entry the schema refuses."""
    value = _parsed(arg)
    entries = enumerate(value) if isinstance(value, list) else [(None, value)]
    element = _element_schema(base, key)
    for index, entry in entries:
        prefix = key if index is None else f"{key}[{index}]"
        if element is not None:
            try:
                OmegaConf.merge(OmegaConf.structured(element), entry)
                continue
            except OmegaConfBaseException as err:
                relative = getattr(err, "full_key", None) or relative
        found = _value_at_path(entry, relative)
        if found is not _ABSENT or element is None:
            return f"{prefix}.{relative}", found
    return f"{key}.{relative}", _ABSENT


def _element_schema(base: DictConfig | None, key: str) -> type | None:
    """The dataclass of the entries of the list ``key`` (e.g. ``schedule.phases``), if it has one."""
    if base is None:
        return None
    declared, _ = _unwrap(declared_type(base, key))
    args = typing.get_args(declared) if typing.get_origin(declared) is list else ()
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def _base(overrides: Sequence[str], compose: Compose, groups: set[str]) -> DictConfig | None:
    """The config of the command line's group selections alone (None if even that does not compose)."""
    try:
        return compose([a for a in overrides if override_key(a) in groups or override_key(a).startswith("hydra/")])
    except Exception:  # the selections themselves clash: the message names no near key
        return None


def _task(base: DictConfig | None, cause: object) -> str | None:
    """The task of the run: the base config's, else the task schema the error names."""
    if base is not None:
        return str(base.task)
    text = str(cause)
    return next((name for name, schema in TASKS.items() if f"'{schema.__name__}'" in text), None)


def _declares(schema: type, key: str) -> bool:
    """True when the dataclass ``schema`` declares the dotted ``key``."""
    declared: Any = schema
    for part in key.split("."):
        declared, _ = _unwrap(declared)
        if not dataclasses.is_dataclass(declared) or part not in {f.name for f in dataclasses.fields(declared)}:
            return False
        declared = typing.get_type_hints(declared)[part]
    return True


def _shown(overrides: Sequence[str], key: str) -> str:
    """The override that sets ``key`` as the user typed it, else the key."""
    return next((a for a in reversed(overrides) if override_key(a) == key and "=" in a), key)


def override_key(arg: str) -> str:
    """The key (or config group) of a command-line override: ``+a.b@pkg=v`` -> ``a.b``."""
    return arg.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _bracketed(key: str) -> str:
    """A command-line key in OmegaConf's spelling: ``schedule.phases.0.lr`` -> ``schedule.phases[0].lr``."""
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key)


def _parts(key: str) -> list[str]:
    return re.findall(r"[^.\[\]]+", key)


def _child(node: Any, part: str) -> Any:
    try:
        if isinstance(node, ListConfig):
            return node._get_node(int(part))
        if isinstance(node, DictConfig):
            return node._get_node(part)
    except (IndexError, KeyError, ValueError, OmegaConfBaseException):
        pass
    return None


def _unwrap(declared: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    if typing.get_origin(declared) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(declared) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return declared, False


def _plural(args: tuple) -> str:
    return {int: "whole numbers", float: "numbers", str: "words"}.get(args[0], "values") if args else "values"


def _example(cfg: DictConfig, key: str) -> Any:
    """The value ``key`` holds in ``cfg``, for an example (None where it is null, a group or a list entry)."""
    if "[" in key:
        return None
    try:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:
        return None
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
        return _plain(value) if isinstance(value, list) and value else None
    return None if value is None or value == "???" else _plain(value)


def _plain(value: Any) -> str:
    """``value`` as it would be typed on the command line."""
    if value is _ABSENT:
        return "…"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_plain(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


def _parsed(arg: str) -> Any:
    """The value of the override ``arg`` as Hydra parses it (lists, mappings, numbers)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(arg).value()
    except Exception:  # not parseable here: the raw text
        return arg.split("=", 1)[1]


def _value_at(arg: str, relative: str) -> Any:
    return _value_at_path(_parsed(arg), relative)


def _value_at_path(value: Any, relative: str) -> Any:
    for part in _parts(relative):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _ABSENT
    return value
