"""``main`` of the tools that take training overrides (``inspect``, ``advise``, ``lr-find``): their own options and
``--help`` are answered before Hydra and the config checks are imported."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from finetune.commands.args import print_error, print_help, split_tool_args
from finetune.run.errors import FinetuneError

Parsed = TypeVar("Parsed")


def tool_main(
    argv: Sequence[str] | None,
    doc: str | None,
    options: Mapping[str, str | None],
    example: str,
    hydra_hint: str,
    parse: Callable[[dict[str, str | None]], Parsed],
    run: Callable[[Parsed, list[str]], int],
) -> int:
    """``main`` of a tool that takes training overrides (``inspect``, ``advise``, ``lr-find``): ``--help`` prints
    ``doc``; its own options (``split_tool_args``) read by ``parse`` and the overrides prechecked, each refusal one
    ``finetune: error:`` line (exit code 2) before any heavy work; then ``run(parsed, overrides)``."""
    args = list(argv or [])
    if {"-h", "--help"} & set(args):
        print_help(doc)
        return 0
    try:
        own, overrides = split_tool_args(args, options, example, hydra_hint)
        parsed = parse(own)
    except FinetuneError as err:
        return print_error(err)
    from finetune.commands.precheck import precheck  # Hydra and the config checks: after --help and the options
    from finetune.data.files import reading_training_data

    with reading_training_data():  # these tools read the training data: a dataset's listing says what it left out
        return precheck(overrides) or run(parsed, overrides)
