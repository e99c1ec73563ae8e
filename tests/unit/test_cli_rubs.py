"""The command's last rubs (#29): did-you-mean on ``--cfg`` / ``--info`` command lines, every help within 80
columns, and tool arguments refused before torch is imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli import COMMANDS, usage
from finetune.commands.args import fit
from finetune.commands.precheck import info_choice_given, precheck


@pytest.mark.parametrize(
    "argv",
    [
        ["--cfg=job", "datset.root=x"],
        ["datset.root=x", "-c", "hydra", "--resolve"],
        ["--info", "config", "datset.root=x"],
        ["--cfg", "job", "--package", "dataset", "datset.root=x", "plan=true"],
    ],
)
def test_a_printing_command_line_gets_did_you_mean(argv, capsys):
    assert precheck(argv) == 2
    err = capsys.readouterr().err
    line = "finetune: error: datset.root=x: not a key of the config; did you mean dataset.root? (a key of dataset="
    assert err.startswith(line) and err.count("\n") == 1, err


@pytest.mark.parametrize("flag", ["--info", "-i"])
def test_info_followed_by_an_override_prints_all_and_keeps_the_override(flag, capsys):
    """Hydra would take ``datset.root=x`` for --info's optional argument and refuse it as a choice; the command
    gives --info its default (all), so the override is checked as one."""
    from finetune.commands.train import command

    assert command([flag, "datset.root=x"]) == 2
    assert "did you mean dataset.root?" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--info", "-i"])
def test_info_followed_by_a_deletion_prints_all_and_keeps_the_deletion(flag, capsys):
    """An override without "=" (``~key`` deletes a key) is no choice of --info either."""
    from finetune.commands.train import command

    assert command([flag, "~seed", "datset.root=x"]) == 2
    assert "did you mean dataset.root?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "given"),
    [
        (["--info", "x=1"], ["--info", "all", "x=1"]),
        (["-i", "~seed", "x=1"], ["-i", "all", "~seed", "x=1"]),
        (["x=1", "--info", "+a.b=2"], ["x=1", "--info", "all", "+a.b=2"]),
        (["--info", "config", "x=1"], None),
        (["-i", "searchpath"], None),
        (["x=1", "--info"], None),
        (["--info=all", "x=1"], None),
        (["--info", "--cfg", "job"], None),
        (["--cfg", "job", "x=1"], None),
        (["--info", "confg", "x=1"], None),  # a misspelt choice: Hydra names the choices
    ],
)
def test_info_choice_given_puts_all_in_only_before_an_override(argv, given):
    """None: the command line is left as it is."""
    assert info_choice_given(argv) == (argv if given is None else given)


@pytest.mark.parametrize(
    "argv",
    [
        ["--cfg", "job", "dataset=imagefolder"],  # dataset.root is required to train, not to print the config
        ["--cfg", "job", "dataset=imagefolder", "dataset.root=/no/such/folder"],
        ["--cfg", "jobs", "datset.root=x"],  # not a choice of --cfg: Hydra says so
        ["--help", "datset.root=x"],
        ["--hydra-help", "datset.root=x"],
        ["--config-name", "other", "datset.root=x"],
        ["-m", "--cfg", "job", "datset.root=x"],
    ],
)
def test_lines_the_precheck_leaves_to_hydra(argv, capsys):
    assert precheck(argv) == 0, capsys.readouterr().err


COMMANDS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "commands.md"


def help_blocks(page: str) -> dict[str | None, str]:
    """The help texts of ``docs/reference/commands.md`` (which tests/unit/test_docs_drift.py proves is what the
    code prints now): ``finetune --help`` (None) and each command's ``--help``, up to the train config's dump."""
    blocks = {None: re.search(r"^```text\n(.*?)^```", page, re.M | re.S)[1]}
    for match in re.finditer(r"^`finetune (\S+) --help`:\n\n```text\n(.*?)^```", page, re.M | re.S):
        blocks[match[1]] = match[2]
    return blocks


def test_every_help_fits_80_columns():
    blocks = help_blocks(COMMANDS_PAGE.read_text())
    assert list(blocks) == [None, *COMMANDS] and blocks[None] == usage() + "\n"
    for name, text in blocks.items():
        assert len(text.splitlines()) >= 2, name
        long = [line for line in text.splitlines() if len(line) > 80]
        assert not long, (name, long)


def test_the_train_help_config_dump_fits_80_columns():
    """What ``finetune train --help`` prints below ``== Config ==`` (the page leaves it out): the composed config
    as Hydra dumps it, and the help's last lines."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from finetune.commands.args import compose_unchecked
    from finetune.commands.train_help import help_template
    from finetune.resources import conf_dir

    dump = OmegaConf.to_yaml(compose_unchecked([]))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        template = help_template()
    lines = [*dump.splitlines(), *template.partition("$CONFIG")[2].splitlines()]
    assert len(lines) > 50 and not [line for line in lines if len(line) > 80]


def test_fit_hangs_a_long_line_and_keeps_the_next_one():
    line = "group: " + ", ".join(f"option{i}" for i in range(12))
    assert fit(f"{line}\nother: a, b", hang=2).splitlines() == [
        "group: option0, option1, option2, option3, option4, option5, option6, option7,",
        "  option8, option9, option10, option11",
        "other: a, b",
    ]


TOOL_REFUSALS = {
    "export run": (["export", "run=missing"], "run=missing: no such run directory or checkpoint"),
    "report run": (["report", "run=missing"], "run=missing: no such run directory or checkpoint"),
    "explain run": (["explain", "run=missing", "inputs=."], "run=missing: no such run directory or checkpoint"),
    "summary run": (["summary", "run=missing"], "run=missing: no such run directory"),
    "predict export": (["predict", "export=missing", "inputs=."], "export=missing: no such export file or folder"),
    "format": (["export", "run=.", "format=onx"], "format='onx' is not known: choose one of head, safetensors, onnx"),
}
PROBE = """
import contextlib, io, json, sys
from finetune.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"code": code, "stderr": err.getvalue(), "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def tool_refusals(tmp_path_factory) -> dict[str, dict]:
    """Each case of ``TOOL_REFUSALS`` run in one fresh process, in turn (cwd: a folder with one image)."""
    cwd = tmp_path_factory.mktemp("tools")
    argvs = json.dumps([argv for argv, _ in TOOL_REFUSALS.values()])
    out = subprocess.run([sys.executable, "-c", PROBE, argvs], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(zip(TOOL_REFUSALS, json.loads(out.stdout.splitlines()[-1])))


@pytest.mark.parametrize("case", list(TOOL_REFUSALS))
def test_tool_arguments_are_refused_before_torch(tool_refusals, case):
    result, line = tool_refusals[case], TOOL_REFUSALS[case][1]
    assert result["code"] == 2 and result["stderr"].startswith(f"finetune: error: {line}"), result
    assert result["stderr"].count("\n") == 1
    assert not result["torch"]


def test_the_project_console_is_80_columns_into_a_pipe():
    """``fit_width`` itself (COLUMNS, notebooks): tests/unit/test_console_width.py; here, that the console everything
    prints through is fitted when it is made."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code = "from finetune.run.console import console; print(console.width)"
    out = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60
    )
    assert out.stdout.strip() == "80", out.stderr
