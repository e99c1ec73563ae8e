"""The ``finetune`` console command (also ``python -m finetune``): one subcommand per tool.

``finetune <overrides>`` and ``finetune train <overrides>`` train (Hydra); ``predict``, ``export``,
``summary``, ``explain``, ``report`` take ``key=value`` arguments; ``plan`` prints what training
would do. A bad config is reported before torch or Lightning are imported.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence

from finetune.errors import FinetuneError

# name -> (module:function taking argv and returning an exit code, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("finetune.cli:train", "fine-tune a backbone (the default): finetune [train] dataset=... backbone=..."),
    "plan": ("finetune.cli:plan", "print what each phase would train, without loading weights or images"),
    "predict": ("finetune.export.predict:main", "predict images (or masks) with an export: export=... inputs=..."),
    "export": ("finetune.export.cli:main", "export a run: head, safetensors, onnx, torchscript"),
    "summary": ("finetune.report.summary:main", "count units, weights and connections per layer and stage"),
    "explain": ("finetune.report.explain:main", "Grad-CAM, activations and filters of a run on your images"),
    "report": ("finetune.report.html:main", "(re)write a run's report.html"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``finetune <command> ...``; anything else is a training command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = args[0] if args and args[0] in COMMANDS else "train"
    rest = args[1:] if args and args[0] in COMMANDS else args
    module, _, function = COMMANDS[name][0].partition(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


def usage() -> str:
    """``finetune --help``: the subcommands, one line each."""
    width = max(map(len, COMMANDS))
    lines = ["usage: finetune [command] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "finetune train --help lists the config groups (dataset, backbone, schedule, head, augment,",
              "trainer) and their options; finetune <command> --help explains a command."]
    return "\n".join(lines)


def train(argv: list[str]) -> int:
    """Check the config (no torch yet), then train under Hydra."""
    from finetune.engine.precheck import precheck

    code = precheck(argv)
    if code:
        return code
    from finetune.engine.hydra_app import run

    run(argv)
    return 0


def plan(argv: list[str]) -> int:
    """``finetune plan <overrides>`` = ``finetune train plan=true <overrides>``, composed with Hydra's
    compose API: nothing is loaded and no run directory is made."""
    if any(a.startswith("-") for a in argv):  # --help, --cfg …: Hydra's own flags
        return train([*argv, "plan=true"])
    from finetune.engine.precheck import precheck

    code = precheck([*argv, "plan=true"])
    if code:
        return code
    from finetune.engine.hydra_app import plan_only

    return plan_only(argv)


def run_command(body: Callable[[list[str]], None], doc: str | None, argv: Sequence[str] | None) -> int:
    """Run ``body(argv)``: ``--help`` prints ``doc``; a FinetuneError (or a file the OS refused)
    prints one ``finetune: error:`` line and gives exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(args):
        print(doc)
        return 0
    try:
        body(args)
    except (FinetuneError, OSError) as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        return 2
    return 0


def parse_args(argv: Sequence[str], defaults: Mapping[str, str | None], required: Sequence[str],
               command: str) -> dict[str, str | None]:
    """``key=value`` arguments over ``defaults``; FinetuneError for unknown keys or missing ones."""
    args = dict(defaults)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise FinetuneError(f"{command}: unexpected argument {item!r}; use key=value with keys "
                                f"{', '.join(defaults)}")
        args[key] = value
    missing = [k for k in required if not args.get(k)]
    if missing:
        raise FinetuneError(f"{command}: missing {', '.join(f'{k}=…' for k in missing)} (see --help)")
    return args


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
