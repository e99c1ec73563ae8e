"""The small ``key=value`` command lines: parsing, ``--help`` and one ``finetune: error:`` line."""

from __future__ import annotations

import difflib
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.resources import config_groups
from finetune.run.errors import ConfigError, FinetuneError, RunInterrupted, TrainingDiverged

if TYPE_CHECKING:
    from omegaconf import DictConfig

HELP_WIDTH = 80  # columns every --help fits in
_HANGING = re.compile(r"\s*(\* |\S+ {2,}(?=\S))")  # a list item, a table row: continued under its text


def run_command(body: Callable[[list[str]], None], doc: str | None, argv: Sequence[str] | None) -> int:
    """Run ``body(argv)``: ``--help`` prints ``doc``; a FinetuneError (or a file the OS refused)
    prints one ``finetune: error:`` line and gives exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(args):
        print_help(doc)
        return 0
    try:
        body(args)
    except (FinetuneError, OSError) as err:
        return print_error(err)
    except (TrainingDiverged, RunInterrupted) as err:  # a DDP worker's run stopped
        return print_stopped(err)
    return 0


def print_help(doc: str | None) -> None:
    """``--help``: ``doc`` within ``HELP_WIDTH`` columns (``fit``)."""
    print(fit(doc or ""))


def fit(text: str, hang: int = 0) -> str:
    """``text`` with each line longer than ``HELP_WIDTH`` refilled with the lines that continue it (the rest of its
    paragraph, list item or table row), under its text (``* `` items and ``key=   text`` rows hang); ``hang``: how
    far the continuation of any other line is indented beyond the line (e.g. 2 for ``group: a, b`` lines)."""
    lines, out = text.splitlines(), []
    while lines:
        line = lines.pop(0)
        if len(line) <= HELP_WIDTH:
            out.append(line)
            continue
        hanging = _HANGING.match(line)
        indent = len(hanging.group()) if hanging else len(line) - len(line.lstrip()) + hang
        while lines and lines[0].strip() and len(lines[0]) - len(lines[0].lstrip()) == indent:
            if _HANGING.match(lines[0]) and not hanging:  # the next item or row
                break
            line += " " + lines.pop(0).strip()
        out += textwrap.wrap(
            line, HELP_WIDTH, subsequent_indent=" " * indent, break_long_words=False, break_on_hyphens=False
        )
    return "\n".join(out)


def parse_args(
    argv: Sequence[str], defaults: Mapping[str, str | None], required: Sequence[str], command: str
) -> dict[str, str | None]:
    """``key=value`` arguments over ``defaults``; FinetuneError for unknown keys or missing ones."""
    args = dict(defaults)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise FinetuneError(unexpected_argument(command, item, list(defaults)))
        args[key] = value
    missing = [k for k in required if not args.get(k)]
    if missing:
        raise FinetuneError(f"{command}: missing {', '.join(f'{k}=…' for k in missing)} (see --help)")
    return args


def unexpected_argument(command: str, item: str, keys: Sequence[str]) -> str:
    """``finetune export rn=x``: the key it most likely misspells (``run=x``), where one is close, and every key."""
    key, sep, value = item.partition("=")
    near = difflib.get_close_matches(key, keys, n=1)
    if near:
        guess = f"{near[0]}={value if sep else '…'}"
        return f"{command}: unexpected argument {item!r}; did you mean {guess}? keys: {', '.join(keys)}"
    return f"{command}: unexpected argument {item!r}; use key=value with keys {', '.join(keys)}"


def existing_path(value: str, key: str, what: str) -> Path:
    """``key=value`` as a path that exists (checked before anything heavy is imported), else a FinetuneError
    saying there is no such ``what``."""
    path = Path(value).expanduser()
    if not path.exists():
        raise FinetuneError(f"{key}={value}: no such {what}; check the path ({key}= takes the {what} finetune wrote)")
    return path


def parse_flag(value: str | None, key: str) -> bool:
    """true/false (also 1/0, yes/no) → bool."""
    text = (value or "false").strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise FinetuneError(f"{key}={value!r}: use true or false")
    return text in ("true", "1", "yes")


def positive_int(value: str | None, key: str) -> int:
    """A whole number >= 1, or a FinetuneError naming the key."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise FinetuneError(f"{key}={value!r}: use a whole number >= 1")
    return number


def print_error(message: object) -> int:
    """The one ``finetune: error:`` line a user sees (no traceback); the exit code, 2."""
    print(f"finetune: error: {message}", file=sys.stderr)
    return 2


def print_stopped(stopped: TrainingDiverged | RunInterrupted) -> int:
    """The one line of a run that stopped early (``finetune: error: training diverged …`` or ``finetune:
    interrupted …``; ranks other than 0 have none); its exit code (3, or 130 / 143)."""
    if stopped.message:
        prefix = "error: " if isinstance(stopped, TrainingDiverged) else ""
        print(f"finetune: {prefix}{stopped.message}", file=sys.stderr)
    return stopped.exit_code


def compose_config(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The training config of ``overrides``, composed from ``conf/`` as ``finetune`` composes it
    (Hydra's compose API: no run directory, no logging set-up) and typed by the schema
    (``finetune.run.schema``); ``with_hydra``: with the ``hydra`` node (e.g. ``hydra.runtime.choices``, the
    config groups chosen). What the schema refuses (an unknown key, a value of the wrong type, a key of
    another task, an unknown option of a group) raises one ConfigError line; Hydra's other errors pass
    through."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from finetune.commands.config_errors import explain

    try:
        return compose_unchecked(overrides, with_hydra)
    except (HydraException, OmegaConfBaseException) as err:
        message = explain(err, list(overrides), compose_unchecked, config_groups())
        if message is None:
            raise
        raise ConfigError(message) from None


def compose_unchecked(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """``compose_config`` without the translation of its errors: Hydra's and OmegaConf's own."""
    from hydra import compose, initialize_config_dir

    from finetune.resources import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def override_value(argv: Sequence[str], key: str) -> str | None:
    """The value of the last ``key=…`` (also ``+key=``/``++key=``) on the command line."""
    values = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(f"{key}=")]
    return values[-1] if values else None


def split_tool_args(
    argv: Sequence[str], defaults: Mapping[str, str | None], example: str, hydra_hint: str
) -> tuple[dict[str, str | None], list[str]]:
    """A tool that takes training overrides (``lr-find``, ``advise``): its own ``key=value`` options
    (``defaults``) and every other argument as a training override; ``hydra.*`` is refused with
    ``hydra_hint`` (the tool chooses its directory); a misspelt option (``phse=1``) is refused naming the option."""
    from finetune.commands.config_errors import tool_option

    own, overrides = dict(defaults), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise FinetuneError(f"argument {arg!r} is not key=value, e.g. {example}")
        if key.startswith("hydra."):
            raise FinetuneError(f"{arg}: {hydra_hint}")
        if key in defaults:
            own[key] = value
        elif hint := tool_option(arg, list(defaults)):
            raise FinetuneError(hint)
        else:
            overrides.append(arg)
    return own, overrides


def tool_run_dir(tool: str, cfg: DictConfig) -> str:
    """A new, uniquely named ``runs/<time>_<tool>_<dataset>_<backbone>`` (made now, as a training run's)."""
    import time

    from finetune.run.rundir import unique_run_dir

    dataset = cfg.dataset.get("name") or cfg.dataset.kind
    return unique_run_dir(f"runs/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{tool}_{dataset}_{cfg.backbone.name}")
