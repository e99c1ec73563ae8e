"""Check a training command line before anything heavy is imported: compose the config against its
schema (``finetune.run.schema``: unknown keys, value types, keys of another task or dataset kind, Lightning
Trainer arguments finetune sets itself, required values; ``finetune.commands.config_errors`` words each
as one line), refuse ``+`` keys the schema does not declare and ``_target_``, check the values, that the
data paths exist, and that the run directory is neither inside the data nor somewhere that cannot be
written.

Returns an exit code (2 with one ``finetune: error:`` line) or 0 to go on. A ``-m`` sweep is checked
on the overrides its jobs share, once per combination of the config groups it sweeps (each job's values
are checked again when it starts). A line that only prints (``--cfg``, ``--info``) is checked for its keys
alone; command lines this cannot judge alone (``--help``, ``resume=``, a ``-m`` line that only prints) are left
to Hydra and to ``train``, which check them again.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from finetune.commands.args import (
    compose_config,
    compose_unchecked,
    config_groups,
    override_value,
    print_error,
)
from finetune.commands.config_errors import bad_reference, config_access_error, declares, unknown_key
from finetune.run.config import check_data_paths, check_task_schema, data_folders
from finetune.run.errors import ConfigError, FinetuneError
from finetune.run.keys import missing_value, override_key
from finetune.run.schedule import Phase
from finetune.run.schema import FinetuneSchema
from finetune.training.tracking import check_mlflow_store
from finetune.training.validate import check_devices, validate

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

DEFAULT_RUNS = "runs"  # the folder conf/config.yaml's default hydra.run.dir / hydra.sweep.dir make runs in
MULTIRUN = ("-m", "--multirun")


# Hydra's flags that print something and run no job -> the values their argument takes (None: any; (): none).
_CFG = ("job", "hydra", "all")
_INFO = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
PRINTING: dict[str, tuple[str, ...] | None] = {
    "--cfg": _CFG,
    "-c": _CFG,
    "--package": None,
    "-p": None,
    "--resolve": (),
    "--info": _INFO,
    "-i": _INFO,
}
OPTIONAL_ARGUMENT = ("--info", "-i")


def info_choice_given(argv: Sequence[str]) -> list[str]:
    """``--info key=value …`` (or ``--info ~key``: an override) with ``--info``'s default (``all``) put in: Hydra
    would take the override for its optional argument and refuse it as a choice. A misspelt choice
    (``--info confg``) is left for Hydra to name its choices."""
    given = []
    for arg, following in zip(argv, [*argv[1:], None]):
        given.append(arg)
        if arg in OPTIONAL_ARGUMENT and following is not None and _takes_no_choice(following):
            given.append("all")
    return given


def _takes_no_choice(following: str) -> bool:
    """``following`` is an override (``key=value``, ``~key``), never an argument of ``--info``."""
    return "=" in following or following.startswith("~")


def precheck(argv: Sequence[str]) -> int:
    """0 when the command line composes and passes the config checks, else 2 (message printed). A line that
    only prints (``--cfg``, ``--info``) gets the checks of its keys alone (``check_keys``)."""
    multirun = bool(set(MULTIRUN) & set(argv))
    argv = [a for a in argv if a not in MULTIRUN]
    overrides = printed_overrides(argv)
    printing = overrides != argv
    if overrides is None or any(a.startswith("resume=") for a in argv) or (printing and multirun):
        return 0
    run_dir = override_value(overrides, "hydra.run.dir")
    # where Hydra writes is not what runs; where it finds configs (a user's recipes) is
    argv = [a for a in overrides if not override_key(a).startswith("hydra.") or override_key(a) == "hydra.searchpath"]
    try:
        if printing:
            check_keys(argv)
        elif multirun:
            check_sweep(argv)
        else:
            check_job(argv, run_dir)
    except FinetuneError as err:
        return print_error(err)
    except OmegaConfBaseException as err:  # a key the checks read that the composed config cannot give
        return print_error(config_access_error(err))
    return 0


def printed_overrides(argv: Sequence[str]) -> list[str] | None:
    """``argv`` without Hydra's flags that only print (``PRINTING``) and their arguments; None where it holds
    another flag (``--help``, ``--config-name`` …) or an argument Hydra refuses: Hydra words those itself."""
    overrides, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag, given, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag not in PRINTING:
            return None
        choices = PRINTING[flag]
        if choices == ():
            if given:
                return None
            continue
        if not given and rest and not rest[0].startswith("-"):
            value = rest.pop(0)
        elif not given and flag in OPTIONAL_ARGUMENT:
            continue
        elif not given:
            return None
        if choices is not None and value not in choices:
            return None
    return overrides


def composed_job(argv: Sequence[str]) -> tuple[set[str], DictConfig] | None:
    """The config groups one job's command line ``argv`` chooses and its config (the ``hydra`` node removed);
    None where Hydra refuses the line in its own words (e.g. the options of a group)."""
    try:
        cfg = compose_config(argv, with_hydra=True)
    except HydraException:
        return None
    groups = set(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return groups, cfg


def check_keys(argv: Sequence[str]) -> None:
    """A command line that prints the config (``--cfg``, ``--info``): its keys and values against the schema,
    ``+`` keys and ``_target_``; a required value may still be missing, and the data need not exist."""
    composed = composed_job(argv)
    if composed is not None:
        check_overrides(argv, *composed)


def check_job(argv: Sequence[str], run_dir: str | None, multirun: bool = False) -> None:
    """The checks of one job's command line ``argv``; a command line Hydra refuses in its own words (e.g. the
    options of a group) is left to Hydra."""
    composed = composed_job(argv)
    if composed is not None:
        check_composed_job(argv, *composed, run_dir, multirun)


def check_composed_job(
    argv: Sequence[str], groups: set[str], cfg: DictConfig, run_dir: str | None, multirun: bool = False
) -> None:
    """``check_job``'s checks of ``cfg`` (without its ``hydra`` node), composed of ``argv`` choosing ``groups``."""
    check_composed(cfg)
    check_overrides(argv, groups, cfg)
    check_config(cfg)
    check_mlflow_store(cfg.logger)
    if not cfg.plan:  # a plan runs nothing: it may describe a run for another machine
        check_devices(cfg.trainer)
    check_data_paths(cfg)
    if not cfg.plan and not multirun:  # a plan writes nothing; a sweep's jobs check their directories
        check_run_dir_outside_data(run_dir, cfg)


def check_sweep(argv: Sequence[str]) -> None:
    """A ``-m`` command line: the overrides its jobs share, once per combination of the config groups it
    sweeps (``dataset=imagefolder,medmnist``: a key is judged against each kind; swept keys such as ``a=1,2``
    are checked by each job when it starts), then the config Hydra composes once before any job."""
    shared, groups = plain_overrides(argv), swept_groups(argv)
    for combination in itertools.product(*groups) if groups is not None else ():
        check_job([*shared, *combination], None, multirun=True)
    if groups != []:  # a config group is swept
        check_sweep_config(shared)


def plain_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of a ``-m`` command line that every job shares (not ``a=1,2`` or ``choice(…)``)."""
    return [a for a in argv if _sweep(a) is None]


def swept_groups(argv: Sequence[str]) -> list[list[str]] | None:
    """The swept config groups of a ``-m`` command line, each as its overrides (``dataset=a,b`` ->
    ``[dataset=a, dataset=b]``); None where one cannot be listed (``glob(…)``: its jobs are not checked)."""
    groups, swept = config_groups(), []
    for arg in argv:
        override = _sweep(arg)
        if override is not None and override_key(arg) in groups:
            try:
                swept.append([f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()])
            except HydraException:
                return None
    return swept


def _sweep(arg: str) -> Override | None:
    """``arg`` parsed, when it is a sweep (``a=1,2``, ``choice(…)``, ``range(…)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_override(arg)
    except HydraException:  # compose reports it
        return None
    return override if override.is_sweep_override() else None


def check_sweep_config(shared: Sequence[str]) -> None:
    """Hydra composes a sweep's config once before its jobs, with each swept group at its default: a key that
    only the swept options have is refused there unless given as ``++key=value`` (which sets it in each job)."""
    try:
        compose_unchecked(shared)
    except HydraException as err:
        match = re.match(r"Could not override '([^']+)'", str(err))
        if match is None:
            return  # Hydra says it in its own words
        arg = next((a for a in reversed(shared) if override_key(a) == match.group(1)), match.group(1))
        raise FinetuneError(
            f"{arg}: a -m sweep's config is composed once before its jobs, with each swept group at its default, "
            f"which has no {match.group(1)}; write ++{arg.lstrip('+')} to set it in each job"
        ) from None


def check_composed(cfg: DictConfig) -> None:
    """The config holds its task's keys, every required value is set and every ``${…}`` reference resolves
    (the ``hydra`` node removed)."""
    check_task_schema(cfg)
    try:
        missing = missing_value(cfg)
        if missing:
            raise ConfigError(missing)
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(bad_reference(cfg, err)) from None


def check_config(cfg: FinetuneSchema) -> list[Phase]:
    """Every check that needs neither data nor weights: the config's task checks its own keys, the
    training the rest. Returns the schedule's phases."""
    from finetune.tasks.registry import get_task

    return validate(cfg, get_task(cfg.task))


def check_overrides(argv: Sequence[str], groups: set[str], cfg: DictConfig) -> None:
    """Nothing of ours instantiates a ``_target_`` (outside ``hydra.``), and a key added with ``+``/``++``
    must be one the schema declares (Hydra adds any key a ``+`` names)."""
    for key in _targets(cfg):
        arg = next((a for a in argv if override_key(a) == key), key)
        raise FinetuneError(
            f"{arg}: finetune instantiates no object from its config, so a _target_ (outside "
            "hydra.*) would be ignored; remove it"
        )
    for arg in argv:
        key = override_key(arg)
        if arg.startswith("+") and "=" in arg and key not in groups and not declares(cfg, key):
            raise FinetuneError(unknown_key(arg, key, cfg, str(cfg.task)))


def _targets(cfg: DictConfig | dict | list, prefix: str = "") -> Iterator[str]:
    """Dotted keys of every ``_target_`` in ``cfg`` (dicts inside lists included)."""
    node = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    for key, value in enumerate(node) if isinstance(node, list) else node.items():
        name = f"{prefix}{key}"
        if key == "_target_":
            yield name
        elif isinstance(value, (dict, list)):
            yield from _targets(value, f"{name}.")


def check_run_dir_outside_data(run_dir: str | None, cfg: DictConfig) -> None:
    """The run directory (``hydra.run.dir`` as given, up to its first interpolation; by default
    ``runs/`` here) must not lie inside a data folder of ``cfg``: a run never writes into the user's data."""
    shown = f"hydra.run.dir={run_dir}" if run_dir else f"the run directory {DEFAULT_RUNS}/"
    where = Path((run_dir or DEFAULT_RUNS).split("${", 1)[0] or ".").expanduser().resolve()
    for folder in data_folders(cfg):
        if where.is_relative_to(folder):
            how = (
                "pick a hydra.run.dir outside it"
                if run_dir
                else "start finetune from another folder or pick a hydra.run.dir outside it"
            )
            raise FinetuneError(
                f"{shown} is inside the data folder {folder}: the run would write its checkpoints "
                f"and logs into your data; {how}"
            )


def check_output_location(argv: Sequence[str]) -> None:
    """The directory a run will write (``hydra.run.dir``, ``hydra.sweep.dir`` with ``-m``, by default
    ``runs/`` here) can be made and written: else one line naming the folder in the way, before any work."""
    key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(argv) else "hydra.run.dir"
    value = override_value(argv, key)
    shown = value or f"{DEFAULT_RUNS}/"
    how = f"pass {key}=<a folder you can write>" + ("" if value else ", or start finetune from a folder you can write")
    path = Path((value or DEFAULT_RUNS).split("${", 1)[0] or ".").expanduser()
    folder = next(p for p in (path, *path.parents) if p == Path(p.anchor or ".") or p.exists())
    display = folder if folder != Path(".") else Path.cwd()
    if not folder.is_dir():
        raise FinetuneError(f"cannot write the run directory {shown}: {display} is a file, not a folder; {how}")
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        raise FinetuneError(
            f"cannot write the run directory {shown}: {display} is not writable"
            f"{' (a read-only file system)' if read_only else ''}; {how}"
        )
