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
import functools
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from finetune.resources import config_groups
from finetune.run.keys import bracketed, declared_type, describe, dotted, override_key, parts, unwrap
from finetune.run.schema import INSTEAD, KINDS, LIGHTNING_ELSEWHERE, TASKS

Compose = Callable[[Sequence[str]], DictConfig]
_ABSENT = object()
HYDRA_PATHS = ("hydra/", "hydra.searchpath")  # overrides that choose where configs come from, not what they hold
# Options that no longer exist: the missing config file -> what to write instead.
MIGRATED = {
    "hydra/sweeper/optuna": (
        "hydra/sweeper=optuna: hydra-optuna-sweeper (an in-memory study on optuna<3) was replaced by finetune's "
        "own Optuna sweeper; write hydra/sweeper=search (in a recipe: `- override /hydra/sweeper: search`): the "
        "same keys (direction, n_trials, sampler, params, max_failure_rate) plus storage, pruner and workers, "
        "see conf/hydra/sweeper/search.yaml"
    ),
}
_FILE_ERROR = re.compile(r"In '([^']+)': (\w+) raised while composing config:\n(.*)", re.S)


def explain(err: Exception, overrides: Sequence[str], compose: Compose, groups: set[str]) -> str | None:
    """The one line for ``err``, raised composing ``overrides`` (``compose`` composes without checks;
    ``groups``: the config groups, whose selections compose the base the message compares with); None
    when Hydra's own message says it better."""
    text = str(err)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file in MIGRATED:
        return MIGRATED[err.missing_cfg_file]
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return unknown_option(err.missing_cfg_file, err.options)
    compose = _once(compose)  # the base and the line without the failing override are often the same line
    base = _base(overrides, compose, groups)
    cause = err.__cause__ if err.__cause__ is not None else err
    if match := re.match(r"Could not override '([^']+)'|Error merging override (.+)", text):
        arg = match.group(2) or _shown(overrides, match.group(1))
        beyond = _index_beyond(arg, _without(arg, overrides, compose, base))
        if beyond:
            return beyond
    if match := re.match(r"Could not override '([^']+)'", text):
        key = match.group(1)
        arg = _shown(overrides, key)
        if "=" in arg and not bracketed(key).startswith(getattr(cause, "full_key", None) or key):
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
            task, written = _task(base, detail), _file_task(where, overrides)
            if written in TASKS and written != task and _declares(TASKS[written], key.group(1)):
                return (
                    f"{shown}: {key.group(1)} is a key of task={written}, and the recipe sets task: {written} as a "
                    "value, which does not select the task's config group (this config holds the keys of "
                    f"task={task}); write `- override /task: {written}` in its defaults instead, or pass "
                    f"task={written} on the command line"
                )
            return unknown_key(shown, key.group(1), base, task)
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
    kind = OmegaConf.select(cfg, f"{group}.kind", default=None) if cfg is not None and group in KINDS else None
    owner = _owner(key, task, kind)
    if owner and owner[0] == "task":
        instead = INSTEAD.get(task or "", {})
        hint = instead.get(key) or instead.get(group)
        return (
            f"{shown}: {key} is a key of task={owner[1][0]}, and this run is task={task}; remove it, or choose "
            f"task={owner[1][0]}" + (f" ({hint})" if hint else "")
        )
    if owner and kind:
        return (
            f"{shown}: {key} is a key of {group}={'|'.join(owner[1])}, and this run's {group} is {kind}; "
            f"remove it, or choose {group}={owner[1][0]}"
        )
    near = nearest_key(key, cfg)
    hint = f"did you mean {near}?{_owner_note(near, cfg, task)}" if near else "finetune train --cfg job lists every key"
    return f"{shown}: not a key of the config; {hint}"


def tool_option(arg: str, options: Sequence[str]) -> str | None:
    """``finetune lr-find phse=1``: the one line for an argument of a tool that takes training overrides which
    is neither one of the tool's ``options`` nor a key of the config, where the nearest of both is an option
    (``phase``); None otherwise (a key of the config, or nearer one: the config's checks word it)."""
    key, _, value = arg.partition("=")
    name = key.lstrip("+~")
    top = _top_level_keys()
    if name in top or "." in name or "/" in name:
        return None
    near = difflib.get_close_matches(name, [*options, *sorted(top)], n=1)
    if not near or near[0] not in options:
        return None
    return (
        f"{arg}: not an option of this command nor a key of the config; did you mean {near[0]}={value}? "
        f"the command's options: {', '.join(options)}"
    )


def nearest_key(key: str, cfg: DictConfig | None) -> str | None:
    """The key ``key`` most likely misspells, matched name by name: the first among the top-level keys, each next
    one among the keys of the node chosen so far (``datset.root`` -> ``dataset.root``; a list index is kept). The
    keys are the composed ``cfg``'s and those every task and kind declares; None where a name matches nothing."""
    known = [parts(k) for k in _known_keys(cfg)]
    chosen: list[str] = []  # the schema's names, "*" for a list index
    shown: list[str] = []
    for name in parts(key):
        level = {k[len(chosen)] for k in known if len(k) > len(chosen) and k[: len(chosen)] == chosen}
        if name.isdigit() and "*" in level:
            chosen.append("*")
            shown.append(name)
            continue
        near = [name] if name in level else difflib.get_close_matches(name, sorted(level - {"*"}), n=1, cutoff=0.6)
        if not near:
            return None
        chosen.append(near[0])
        shown.append(near[0])
    found = ".".join(shown)
    found = bracketed(found) if "[" in key else found  # in the spelling the user typed: schedule.phases.0.lr
    return None if found == key else found


@functools.cache
def _top_level_keys() -> frozenset[str]:
    """The config's top-level keys and groups (the same for every argument of a process: worked out once)."""
    return frozenset(k for k in _known_keys(None) if "." not in k)


def _known_keys(cfg: DictConfig | None) -> set[str]:
    """Every dotted key the config may hold: ``cfg``'s (those ``+`` added excepted), every task schema's, every
    kind's of a group of kinds (``dataset.root``) and the config groups (``+classification=…``, a recipe's); ``*``
    stands for a list index (``schedule.phases.*.lr``)."""
    keys = {k for schema in TASKS.values() for k in _schema_keys(schema)} | (config_groups() - {"hydra"})
    for group, kinds in KINDS.items():
        keys |= {f"{group}.{k}" for schema in kinds.values() for k in _schema_keys(schema)}
    if cfg is not None:
        keys |= {dotted(k) for k in leaf_keys(cfg) if declares(cfg, k)}
    return keys


def _schema_keys(schema: type, prefix: str = "") -> Iterator[str]:
    """The dotted keys the dataclass ``schema`` declares, through nested schemas and lists of them."""
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        name = f"{prefix}{field.name}"
        yield name
        inner, _ = unwrap(hints[field.name])
        args = typing.get_args(inner) if typing.get_origin(inner) is list else ()
        if dataclasses.is_dataclass(inner):
            yield from _schema_keys(inner, f"{name}.")
        elif args and dataclasses.is_dataclass(args[0]):
            yield from _schema_keys(args[0], f"{name}.*.")


def _owner_note(key: str, cfg: DictConfig | None, task: str | None) -> str:
    """`` (a key of task=segmentation)`` / `` (a key of dataset=imagefolder|csv)`` where the suggested ``key`` is
    not one of this run's config but of another task's or kind's; else ""."""
    if cfg is None or "[" in key or any(p.isdigit() for p in parts(key)):
        return ""
    if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT and declares(cfg, key):
        return ""
    owner = _owner(key, task)
    return f" (a key of {owner[0]}={'|'.join(owner[1])})" if owner else ""


def _owner(key: str, task: str | None, kind: str | None = None) -> tuple[str, list[str]] | None:
    """Who declares ``key`` where this run (``task``; ``kind``: its kind of the key's group) does not: another
    task (``("task", ["segmentation"])``), else other kinds of its group (``("dataset", ["imagefolder", "csv"])``)."""
    own = TASKS.get(task or "")
    owner = next((t for t, schema in TASKS.items() if t != task and _declares(schema, key)), None)
    if owner and not (own and _declares(own, key)):
        return "task", [owner]
    group, _, name = key.partition(".")
    kinds = [k for k, schema in KINDS.get(group, {}).items() if k != kind and _declares(schema, name)]
    return (group, kinds) if kinds else None


def config_access_error(err: OmegaConfBaseException) -> str:
    """An OmegaConf error met reading a composed config (after its checks), as one line naming the key."""
    key = getattr(err, "full_key", None) or "the config"
    return f"{key}: {str(err).splitlines()[0]}; fix that key (finetune train --cfg job prints the composed config)"


def wrong_type(key: str, value: Any, cfg: DictConfig | None) -> str:
    """``key`` (dotted, ``a.b[0].c``) of ``cfg`` cannot hold ``value``: what it takes, e.g. its current value."""
    declared = declared_type(cfg, key) if cfg is not None else Any
    what = describe(declared)
    example = _example(cfg, key) if cfg is not None else None
    fix = f"e.g. {key}={example}" if example is not None else f"give {key} {what}"
    if dataclasses.is_dataclass(unwrap(declared)[0]):
        fields = [f.name for f in dataclasses.fields(unwrap(declared)[0])]
        fix = f"set its keys one by one, e.g. {key}.{fields[0]}=…"
    return f"{key}={_plain(value)}: {key} takes {what}; {fix}"


def bad_reference(cfg: DictConfig, err: OmegaConfBaseException) -> str:
    """A ``${…}`` reference of ``cfg`` that does not resolve (``err``), as one line."""
    key = getattr(err, "full_key", None) or "a value"
    raw = _value_at_path(OmegaConf.to_container(cfg, resolve=False), bracketed(key))
    return f"{key}={_plain(raw)}: {str(err).splitlines()[0]}; fix or remove the ${{…}} reference"


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
    parent, _, name = bracketed(key).rpartition(".")
    fields = _fields(cfg, parent)
    return fields is None or name in fields


def _fields(cfg: DictConfig, parent: str) -> list[str] | None:
    """The keys the schema declares under ``parent`` ("" for the top); None where it names none."""
    declared, _ = unwrap(declared_type(cfg, parent)) if parent else (OmegaConf.get_type(cfg), False)
    if declared is Any or declared is dict:
        node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
        declared = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return [f.name for f in dataclasses.fields(declared)] if dataclasses.is_dataclass(declared) else None


def _bad_override(arg: str, cause: BaseException, base: DictConfig | None) -> str | None:
    """``arg`` (``key=value``) could not be merged: a value of the wrong type, or a mapping / list entry
    with a key the schema lacks."""
    key, _, raw = arg.lstrip("+~").partition("=")
    key = bracketed(key.split("@", 1)[0])
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


def _index_beyond(arg: str, cfg: DictConfig | None) -> str | None:
    """``arg`` (``schedule.phases.5.lr=0.1``) names an entry past the end of a list of ``cfg``: how long the
    list is, as one line; None otherwise."""
    if cfg is None:
        return None
    names = parts(override_key(arg))
    for i, part in enumerate(names):
        listed = ".".join(names[:i])
        node = OmegaConf.select(cfg, bracketed(listed), default=None, throw_on_resolution_failure=False) if i else None
        if isinstance(node, ListConfig) and part.isdigit() and int(part) >= len(node):
            count = len(node)
            element = _element_schema(cfg, bracketed(listed))
            noun = f"{element.__name__.removesuffix('Schema').lower()}(s)" if element else "value(s)"
            span = f" (0..{count - 1}); use one of those indices, or" if count else ";"
            return f"{arg}: {listed} has {count} {noun}{span} give the whole list: {listed}=[…]"
    return None


def _once(compose: Compose) -> Compose:
    """``compose`` that composes each command line once (a line that fails is tried again)."""
    composed: dict[tuple[str, ...], DictConfig] = {}

    def once(overrides: Sequence[str]) -> DictConfig:
        key = tuple(overrides)
        if key not in composed:
            composed[key] = compose(list(overrides))
        return composed[key]

    return once


def _without(arg: str, overrides: Sequence[str], compose: Compose, base: DictConfig | None) -> DictConfig | None:
    """The config of ``overrides`` but ``arg`` (e.g. with the ``schedule.phases=[…]`` before it); ``base`` where
    that does not compose either."""
    try:
        return compose([a for a in overrides if a != arg])
    except Exception:  # another override fails too: the group selections alone
        return base


def _file_task(where: str, overrides: Sequence[str]) -> str | None:
    """The ``task`` a config file (``where``: ``group/name`` on Hydra's search path: ``conf/``, ``recipes/`` and
    any ``hydra.searchpath`` of ``overrides``) sets as a value, if it sets one."""
    from finetune.resources import conf_dir, recipes_dir

    roots = [conf_dir(), recipes_dir()]
    for arg in overrides:
        if override_key(arg) == "hydra.searchpath":
            entries = _parsed(arg)
            for entry in entries if isinstance(entries, list) else [entries]:
                scheme, _, path = str(entry).rpartition("://")
                roots.append(Path(str(files(path))) if scheme == "pkg" else Path(path))
    path = next((root / f"{where}.yaml" for root in roots if (root / f"{where}.yaml").is_file()), None)
    task = OmegaConf.load(path).get("task") if path is not None else None
    return task if isinstance(task, str) else None


def _element_schema(base: DictConfig | None, key: str) -> type | None:
    """The dataclass of the entries of the list ``key`` (e.g. ``schedule.phases``), if it has one."""
    if base is None:
        return None
    declared, _ = unwrap(declared_type(base, key))
    args = typing.get_args(declared) if typing.get_origin(declared) is list else ()
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def _base(overrides: Sequence[str], compose: Compose, groups: set[str]) -> DictConfig | None:
    """The config of the command line's group selections alone (None if even that does not compose)."""
    try:
        return compose([a for a in overrides if override_key(a) in groups or override_key(a).startswith(HYDRA_PATHS)])
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
        declared, _ = unwrap(declared)
        if not dataclasses.is_dataclass(declared) or part not in {f.name for f in dataclasses.fields(declared)}:
            return False
        declared = typing.get_type_hints(declared)[part]
    return True


def _shown(overrides: Sequence[str], key: str) -> str:
    """The override that sets ``key`` as the user typed it, else the key."""
    return next((a for a in reversed(overrides) if override_key(a) == key and "=" in a), key)


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
    for part in parts(relative):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _ABSENT
    return value
