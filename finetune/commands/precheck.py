"""Check a training command line before anything heavy is imported: compose the config with
Hydra's compose API, name a misspelt key with "did you mean", and run the config checks.

Returns an exit code (2 with one ``finetune: error:`` line) or 0 to go on. Command lines this
cannot judge alone (``-m`` sweeps, ``--cfg``, ``--help``, ``resume=``) are left
to Hydra and to ``train``, which check them again.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from finetune.engine.schedule import Phase
from finetune.commands.args import compose_config, print_error
from finetune.errors import FinetuneError

_MISSING = object()


def precheck(argv: Sequence[str]) -> int:
    """0 when the command line composes and passes the config checks, else 2 (message printed)."""
    if any(a.startswith(("-", "resume=")) for a in argv):
        return 0
    argv = [a for a in argv if not a.startswith("hydra.")]  # where Hydra writes, not what runs
    try:
        cfg = compose_config(argv)
    except HydraException:
        message = misspelt_key(argv)
        if message is None:
            return 0  # Hydra reports it with its own words (e.g. the options of a group)
        return print_error(message)
    try:
        check_config(cfg)
    except FinetuneError as err:
        return print_error(err)
    return 0


def check_config(cfg: DictConfig) -> list[Phase]:
    """Every check that needs neither data nor weights: the config's task checks its own keys, the
    engine the rest. Returns the schedule's phases."""
    from finetune.engine.config import validate
    from finetune.tasks.registry import get_task

    return validate(cfg, get_task(cfg.task))


def misspelt_key(argv: Sequence[str]) -> str | None:
    """For the first ``key=value`` whose key the composed config lacks: what to type instead."""
    groups = [a for a in argv if "=" in a and "." not in a.split("=", 1)[0]]
    try:
        base = compose_config(groups)
    except HydraException:
        return None
    keys = list(_leaf_keys(base))
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg or key.startswith(("+", "~")) or key in groups:
            continue
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "finetune train --cfg job lists every key"
            return f"{key} is not a key of this config ({arg!r}); {hint}"
    return None


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _leaf_keys(value, f"{name}.")
        else:
            yield name
