"""The ``finetune`` console command (also ``python -m finetune``): one subcommand per tool.

``finetune <overrides>`` and ``finetune train <overrides>`` train (Hydra); ``predict``, ``export``,
``summary``, ``explain``, ``report`` take ``key=value`` arguments; ``plan`` prints what training
would do. Each command's body is in ``finetune.commands``, imported only when it is asked for, so a
bad config is reported before torch or Lightning are imported.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Sequence

from finetune.commands.args import print_error, print_stopped
from finetune.run.errors import RunInterrupted
from finetune.run.warning_filters import quiet_library_chatter

# name -> (module:function taking argv and returning an exit code, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("finetune.commands.train:command", "fine-tune a backbone (the default): dataset=... backbone=..."),
    "plan": ("finetune.commands.train:plan_command", "what each phase would train, loading no weights or images"),
    "lr-find": ("finetune.commands.lr_find:main", "learning-rate range test of a phase: <overrides> [phase=…]"),
    "advise": ("finetune.commands.advise:main", "linear probes by stage on your data -> freeze depth, lrs"),
    "inspect": ("finetune.commands.inspect:main", "the data before the model: balance, duplicates, leaks, labels"),
    "predict": ("finetune.commands.predict:main", "predict images (or masks) with an export: export=... inputs=..."),
    "export": ("finetune.commands.export:main", "export a run: head, safetensors, onnx, pt2, timm folder"),
    "backbones": (
        "finetune.commands.backbones:main",
        "pretrained timm models [filter]: input size, offline weights",
    ),
    "summary": ("finetune.commands.summary:main", "count units, weights and connections per layer and stage"),
    "explain": ("finetune.commands.explain:main", "Grad-CAM, activations and filters of a run on your images"),
    "report": ("finetune.commands.report:main", "(re)write a run's report.html"),
    "evaluate": (
        "finetune.commands.evaluate:main",
        "robustness on corrupted test images: run=... corruptions=...",
    ),
    "pack": (
        "finetune.commands.pack:main",
        "LitData chunks for dataset=streaming: dataset=... out=<dir|s3://…>",
    ),
}
LIBRARIES = ("torch", "torchvision", "timm", "lightning")  # the versions ``finetune --version`` names
_WORD = re.compile(r"[A-Za-z][\w-]*")  # a bare word: neither key=value nor a flag nor an override (+key, ~key)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``finetune <command> ...``; anything else is a training command line. Output into a pipe
    closed early (``finetune --help | head -1``) ends quietly with 141, as a shell's SIGPIPE would."""
    try:
        code = dispatch(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit writes nowhere
        return 141


def dispatch(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (``finetune --help``, ``--version``, a subcommand or training)."""
    quiet_library_chatter()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args and args[0] in ("-V", "--version"):
        print(versions())
        return 0
    if args and args[0] not in COMMANDS and _WORD.fullmatch(args[0]):
        return print_error(unknown_command(args[0]))
    name = args[0] if args and args[0] in COMMANDS else "train"
    rest = args[1:] if args and args[0] in COMMANDS else args
    module, _, function = COMMANDS[name][0].partition(":")
    try:
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    except RunInterrupted as interrupted:  # SIGINT / SIGTERM / SIGUSR1 during a run: one line, 130 or 143
        return print_stopped(interrupted)


def usage() -> str:
    """``finetune --help``: the subcommands, one line each."""
    width = max(map(len, COMMANDS))
    lines = ["usage: finetune [command] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "finetune train --help lists the config groups (dataset, backbone, schedule, head",
        "…), their options and the recipes (+classification=digits, +medical=blood, …);",
        "finetune <command> --help explains a command; finetune --version: the versions.",
    ]
    return "\n".join(lines)


def unknown_command(word: str) -> str:
    """``finetune exprot``: the nearest command, where one is close, and every command."""
    near = difflib.get_close_matches(word, COMMANDS, n=1)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"unknown command {word!r}; {hint}commands: {', '.join(COMMANDS)} (or key=value overrides to train)"


def versions() -> str:
    """``finetune --version``: finetune's version, then the libraries' (read from their metadata, not imported)."""
    from finetune.version import __version__

    lines = [f"finetune {__version__}"]
    for name in LIBRARIES:
        try:
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name} (not installed)")
    return "\n".join(lines)
