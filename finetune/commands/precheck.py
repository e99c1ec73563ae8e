"""Check a training command line before anything heavy is imported: compose the config with
Hydra's compose API, refuse keys it does not declare (with "did you mean") and ``_target_``, check
every value's type and the config, that the data paths exist, and that the run directory is neither
inside the data nor somewhere that cannot be written.

Returns an exit code (2 with one ``finetune: error:`` line) or 0 to go on. Command lines this
cannot judge alone (``-m`` sweeps, ``--cfg``, ``--help``, ``resume=``) are left
to Hydra and to ``train``, which check them again.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from finetune.commands.args import compose_config, override_value, print_error
from finetune.run.config import check_data_paths, check_types, data_folders
from finetune.run.errors import FinetuneError
from finetune.run.schedule import Phase
from finetune.training.validate import validate

_MISSING = object()
DEFAULT_RUNS = "runs"  # the folder conf/config.yaml's default hydra.run.dir / hydra.sweep.dir make runs in


def precheck(argv: Sequence[str]) -> int:
    """0 when the command line composes and passes the config checks, else 2 (message printed)."""
    if any(a.startswith(("-", "resume=")) for a in argv):
        return 0
    run_dir = override_value(argv, "hydra.run.dir")
    argv = [a for a in argv if not _key(a).startswith("hydra.")]  # where Hydra writes, not what runs
    try:
        cfg = compose_config(argv, with_hydra=True)
    except HydraException:
        message = misspelt_key(argv)
        if message is None:
            return 0  # Hydra reports it with its own words (e.g. the options of a group)
        return print_error(message)
    groups = set(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        declared = compose_config([a for a in argv if _key(a) in groups])  # the chosen groups' defaults
        check_overrides(argv, groups, declared, cfg)
        check_types(cfg, declared)
        check_config(cfg)
        check_data_paths(cfg)
        if not cfg.plan:  # a plan writes nothing
            check_run_dir_outside_data(run_dir, cfg)
    except FinetuneError as err:
        return print_error(err)
    return 0


def check_config(cfg: DictConfig) -> list[Phase]:
    """Every check that needs neither data nor weights: the config's task checks its own keys, the
    training the rest. Returns the schedule's phases."""
    from finetune.tasks.registry import get_task

    return validate(cfg, get_task(cfg.task))


def check_overrides(argv: Sequence[str], groups: set[str], declared: DictConfig, cfg: DictConfig) -> None:
    """Nothing of ours instantiates a ``_target_`` (outside ``hydra.``), and a key added with ``+``/``++``
    must be one the chosen groups declare (entries of a list, such as a phase's own ``lr``, are
    checked by the list's reader)."""
    for key in _targets(cfg):
        arg = next((a for a in argv if _key(a) == key), key)
        raise FinetuneError(
            f"{arg}: finetune instantiates no object from its config, so a _target_ (outside "
            "hydra.*) would be ignored; remove it"
        )
    for arg in argv:
        key = _key(arg)
        if arg.startswith("+") and "=" in arg and key not in groups and not _declared(declared, key):
            raise FinetuneError(unknown_key(key, arg, declared))


def _key(arg: str) -> str:
    """The key (or config group) of a command-line override: ``+a.b@pkg=v`` -> ``a.b``."""
    return arg.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _targets(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    """Dotted keys of every ``_target_`` in ``cfg`` (dicts inside lists included)."""
    items = enumerate(cfg) if OmegaConf.is_list(cfg) else cfg.items_ex(resolve=False)
    for key, value in items:
        name = f"{prefix}{key}"
        if key == "_target_":
            yield name
        elif OmegaConf.is_config(value):
            yield from _targets(value, f"{name}.")


def _declared(declared: DictConfig, key: str) -> bool:
    """True when ``key`` is in ``declared`` or lies inside one of its lists."""
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        node = OmegaConf.select(declared, ".".join(parts[:end]), default=_MISSING)
        if node is _MISSING:
            return False
        if OmegaConf.is_list(node):
            return True
    return True


def unknown_key(key: str, arg: str, declared: DictConfig) -> str:
    """What to say about ``arg``, whose ``key`` the config does not have: the nearest key, if any."""
    close = difflib.get_close_matches(key, list(_leaf_keys(declared)), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "finetune train --cfg job lists every key"
    return f"{key} is not a key of this config ({arg!r}); {hint}"


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


def misspelt_key(argv: Sequence[str]) -> str | None:
    """For the first ``key=value`` whose key the composed config lacks: what to type instead."""
    groups = [a for a in argv if "=" in a and "." not in a.split("=", 1)[0]]
    try:
        base = compose_config(groups)
    except HydraException:
        return None
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg or key.startswith(("+", "~")) or key in groups:
            continue
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            return unknown_key(key, arg, base)
    return None


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _leaf_keys(value, f"{name}.")
        else:
            yield name
