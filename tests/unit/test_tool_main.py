"""``tool_main``: the one ``main`` of the tools that take training overrides (inspect, advise, lr-find)."""

from __future__ import annotations

import pytest

from finetune.commands.args import positive_int
from finetune.commands.tool import tool_main

OPTIONS = {"out": None, "steps": "3"}


def call(*argv: str) -> tuple[int, list]:
    """tool_main on ``argv``; its exit code and what ``run`` received (nothing: it did not run)."""
    received = []

    def run(parsed, overrides):
        received.append((parsed, overrides))
        return 7

    code = tool_main(
        list(argv),
        "DOC",
        OPTIONS,
        "dataset=digits",
        "choose it with out=",
        lambda own: positive_int(own["steps"], "steps"),
        run,
    )
    return code, received


def test_help_prints_the_doc_and_runs_nothing(capsys):
    assert call("--help", "steps=x") == (0, [])
    assert capsys.readouterr().out == "DOC\n"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["stepz=4"], "steps"),  # a misspelt option: named
        (["hydra.run.dir=x"], "choose it with out="),
        (["dataset"], "not key=value, e.g. dataset=digits"),
        (["steps=0"], "steps='0': use a whole number >= 1"),  # parse refused it
        (["schedule.lr=abc"], "schedule.lr"),  # the precheck refused the overrides
    ],
)
def test_a_refusal_is_one_error_line_and_nothing_runs(argv, message, capsys):
    assert call(*argv) == (2, [])
    err = capsys.readouterr().err
    assert err.startswith("finetune: error: ") and err.count("\n") == 1 and message in err, err


def test_run_gets_the_parsed_options_and_the_training_overrides():
    assert call("steps=5", "dataset=digits", "out=x") == (7, [(5, ["dataset=digits"])])
