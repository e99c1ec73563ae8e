"""The ``finetune`` console command (also ``python -m finetune``): one subcommand per tool.

``finetune <overrides>`` and ``finetune train <overrides>`` train (Hydra); ``predict``, ``export``,
``summary``, ``explain``, ``report`` take ``key=value`` arguments; ``plan`` prints what training
would do. Each command's body is in ``finetune.commands``, imported only when it is asked for, so a
bad config is reported before torch or Lightning are imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from finetune.commands.args import print_stopped
from finetune.run.errors import RunInterrupted
from finetune.run.warning_filters import quiet_library_chatter

# name -> (module:function taking argv and returning an exit code, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "finetune.commands.train:command",
        "fine-tune a backbone (the default): finetune [train] dataset=... backbone=...",
    ),
    "plan": (
        "finetune.commands.train:plan_command",
        "print what each phase would train, without loading weights or images",
    ),
    "lr-find": (
        "finetune.commands.lr_find:main",
        "learning-rate range test on the phase that will train: finetune lr-find <overrides> [phase=…]",
    ),
    "advise": ("finetune.commands.advise:main", "linear probes by stage on your data -> freeze depth, schedule, lrs"),
    "predict": ("finetune.commands.predict:main", "predict images (or masks) with an export: export=... inputs=..."),
    "export": ("finetune.commands.export:main", "export a run: head, safetensors, onnx, pt2, timm folder"),
    "summary": ("finetune.commands.summary:main", "count units, weights and connections per layer and stage"),
    "explain": ("finetune.commands.explain:main", "Grad-CAM, activations and filters of a run on your images"),
    "report": ("finetune.commands.report:main", "(re)write a run's report.html"),
    "pack": (
        "finetune.commands.pack:main",
        "pack a dataset into LitData chunks for dataset=streaming: dataset=... out=<folder or s3://…>",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``finetune <command> ...``; anything else is a training command line."""
    quiet_library_chatter()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
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
        "finetune train --help lists the config groups (dataset, backbone, schedule, head, augment,",
        "trainer) and their options; finetune <command> --help explains a command.",
    ]
    return "\n".join(lines)
