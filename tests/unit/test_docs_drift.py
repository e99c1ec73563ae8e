"""The documentation cannot drift from the code: every ``finetune …`` line of the fenced bash blocks in README.md,
docs/**/*.md and recipes/**/README.md names a command that exists and composes (training command lines through
Hydra's compose API, as ``finetune --cfg job`` composes them; the ``key=value`` options of the other commands
against the command's ``OPTIONS``), and every Python block marked runnable (```` ```python title="runnable" ````)
runs. Lines that cannot compose offline are skipped only through ``ALLOWED``, each with its reason."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from finetune.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "recipes").rglob("README.md"))]
FENCE = re.compile(r"^([ \t]*)```(\w*)([^\n]*)\n(.*?)^[ \t]*```", re.M | re.S)
STARTS = (("finetune",), (".venv/bin/finetune",), ("python", "-m", "finetune"), ("python3", "-m", "finetune"))
SHELL_END = {">", ">>", "|", "&&", "||", ";", "&", "2>&1"}
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
# commands whose other arguments are training overrides (composed with Hydra); the rest take key=value only
TRAINING_ARGS = {"train", "plan", "lr-find", "advise", "inspect", "pack", "summary"}

# "<file>:<line text>" -> why it cannot be checked offline
ALLOWED = {
    'docs/guides/scale.md:if [ -d "$RUN" ]; then srun python -m finetune resume=$RUN; else srun python -m finetune '
    "<overrides> hydra.run.dir=$RUN; fi": "a shell template: <overrides> stands for the user's own",
}


@dataclass(frozen=True)
class Line:
    page: str  # relative to the repository
    number: int
    text: str  # the command line as written (continuations joined)
    args: tuple[str, ...]  # after `finetune`, up to the end of the command (a redirect, a pipe, a comment)


def fenced_blocks(text: str) -> list[tuple[int, str, str, str]]:
    """``(first line number, language, info after it, body)`` of every fenced block, indentation removed."""
    blocks = []
    for match in FENCE.finditer(text):
        indent = len(match[1])
        body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in match[4].splitlines())
        blocks.append((text.count("\n", 0, match.start(4)) + 1, match[2], match[3], body))
    return blocks


def shell_lines(first: int, body: str) -> list[tuple[int, str]]:
    """A shell block's lines, each with the number of its first line, backslash continuations joined."""
    lines, start, buffer = [], None, ""
    for i, raw in enumerate(body.splitlines()):
        start = first + i if start is None else start
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        lines.append((start, buffer + raw))
        start, buffer = None, ""
    return lines


def command_args(text: str) -> tuple[str, ...] | None:
    """The arguments of a shell line that runs finetune (after environment assignments), or None."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    for start in STARTS:
        if tuple(words[: len(start)]) == start:
            rest = words[len(start) :]
            end = next((i for i, w in enumerate(rest) if w in SHELL_END), len(rest))
            return tuple(rest[:end])
    return None


def documented_lines() -> list[Line]:
    lines = []
    for page in PAGES:
        relative = page.relative_to(REPO).as_posix()
        for first, language, _, body in fenced_blocks(page.read_text()):
            if language not in ("bash", "sh", "shell", "console"):
                continue
            variables: dict[str, str] = {}  # R=dataset.root=… earlier in the block, used as $R
            for number, text in shell_lines(first, body):
                text = text.strip().removeprefix("$ ")
                assignment = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)", text)
                if assignment:
                    variables[assignment[1]] = assignment[2]
                if text.startswith("#") or "finetune" not in text:
                    continue
                expanded = text
                for name, value in variables.items():
                    expanded = re.sub(rf"\${{?{name}\b}}?", value, expanded)
                args = command_args(expanded)
                if args is not None or f"{relative}:{text}" in ALLOWED:
                    lines.append(Line(relative, number, text, args or ()))
    return lines


def runnable_blocks() -> list[tuple[str, int, str]]:
    return [
        (page.relative_to(REPO).as_posix(), first, body)
        for page in PAGES
        for first, language, info, body in fenced_blocks(page.read_text())
        if language == "python" and re.search(r'title="runnable"', info)
    ]


LINES = documented_lines()


def command_of(args: tuple[str, ...]) -> tuple[str, list[str]]:
    """``finetune <command> …`` → the command and its arguments (none named: train)."""
    if args and args[0] in COMMANDS:
        return args[0], list(args[1:])
    return "train", list(args)


def options_of(command: str) -> dict[str, str | None] | None:
    """The command's own key=value options (its module's ``OPTIONS``), or None when it declares none."""
    module = importlib.import_module(COMMANDS[command][0].partition(":")[0])
    return getattr(module, "OPTIONS", None)


def without_flags(args: list[str]) -> tuple[list[str], set[str]]:
    """Hydra's flags (``--cfg job``, ``--resolve``, ``-m``) removed: the overrides, and the flags seen."""
    overrides, flags, skip = [], set(), False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            flags.add(arg)
            skip = arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return overrides, flags


def one_job(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep (``a,b``, ``choice(…)``, ``range(…)``) reduced to its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    out = []
    for override, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        if isinstance(parsed.value(), IntervalSweep):  # a search's interval(lo, hi): its lower end
            out.append(f"{parsed.get_key_element()}={parsed.value().start}")
        elif parsed.is_sweep_override():
            out.append(f"{parsed.get_key_element()}={next(iter(parsed.sweep_string_iterator()))}")
        else:
            out.append(override)
    return out


@pytest.fixture(scope="module")
def compose():
    """Hydra's compose API on finetune's config: each line in an initialisation of its own (GlobalHydra cleared
    first), whatever Hydra state another test of this worker left."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import finetune.run.schema  # noqa: F401  (the schema every composition is checked against)
    from finetune.resources import conf_dir

    def composed(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            return hydra_compose("config", overrides=overrides, return_hydra_config=True)

    return composed


def test_a_line_composes_whatever_hydra_state_another_test_left(compose, tmp_path):
    """Another test module of this worker may leave GlobalHydra initialised (e.g. on another config folder)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    initialize_config_dir(config_dir=str(tmp_path), version_base=None)  # initialised, and never left
    try:
        assert compose(["dataset=digits"]).hydra.runtime.choices.dataset == "digits"
    finally:
        GlobalHydra.instance().clear()


def test_the_docs_hold_the_command_lines_this_test_checks():
    pages = {line.page for line in LINES}
    assert len(LINES) >= 60, len(LINES)
    assert {"README.md", "docs/getting-started.md", "recipes/medical/README.md", "docs/search.md"} <= pages, pages
    assert RUNNABLE, "no Python block is marked runnable"
    stale = set(ALLOWED) - {f"{line.page}:{line.text}" for line in LINES}
    assert not stale, f"ALLOWED names lines no page holds any more: {stale}"


def problem(line: Line, compose) -> str | None:
    """What is wrong with a documented command line (None: it names a command, its options and a config that
    exist)."""
    where = f"{line.page}:{line.number}: {line.text}"
    command, args = command_of(line.args)
    overrides, flags = without_flags(args)
    if flags & {"--help", "-h", "--version"}:
        return None  # the command exists; the reference page prints its help
    options = options_of(command) or {}
    if unknown := [a for a in overrides if "=" not in a.lstrip("+~")]:
        return f"{where}: not key=value: {unknown}"
    own = [a for a in overrides if a.partition("=")[0] in options]
    rest = [a for a in overrides if a not in own]
    if command not in TRAINING_ARGS:
        return f"{where}: finetune {command} has no option {rest}" if rest and options else None
    try:
        compose(one_job(rest))
    except Exception as err:  # Hydra's and OmegaConf's errors: the line does not compose
        return f"{where}: does not compose: {type(err).__name__}: {err}"
    return None


@pytest.mark.parametrize("line", LINES, ids=[f"{line.page}:{line.number}" for line in LINES])
def test_a_documented_command_line_composes(line: Line, compose):
    if f"{line.page}:{line.text}" in ALLOWED:
        pytest.skip(ALLOWED[f"{line.page}:{line.text}"])
    assert problem(line, compose) is None


@pytest.mark.parametrize(
    "text,wrong",
    [
        ("finetune export rn=runs/x format=onnx", "has no option ['rn=runs/x']"),
        ("finetune datset=digits", "does not compose: ConfigCompositionException"),
        ("finetune backbone=resnet19", "does not compose: MissingConfigException"),
        ("finetune lr-find +classification=digits schedule.lr=abc", "does not compose: ConfigCompositionException"),
        ("finetune -m schedule.lr=abc,1e-3", "does not compose"),
        ("finetune summary backbone=resnet18 input_siz=224", "does not compose"),
        ("finetune predict export=x inputs=y topk 3", "not key=value: ['topk', '3']"),
    ],
)
def test_the_check_finds_a_misspelt_option_key_or_group_option(text: str, wrong: str, compose):
    found = problem(Line("page.md", 1, text, command_args(text)), compose)
    assert found and wrong in found, found


def test_the_documented_lines_keep_their_options_and_overrides_apart():
    """``lr-find``'s own ``phase=`` is not composed, ``out=`` of pack neither; a training line is all overrides."""
    assert command_of(command_args("finetune lr-find +classification=digits phase=0") or ()) == (
        "lr-find",
        ["+classification=digits", "phase=0"],
    )
    assert "phase" in options_of("lr-find") and "out" in options_of("pack") and options_of("train") is None
    assert one_job(["backbone=a,b", "schedule.lr=tag(log, interval(1e-5, 1e-1))"]) == [
        "backbone=a",
        "schedule.lr=1e-05",
    ]


RUNNABLE = runnable_blocks()

# Runs the blocks (the folders in argv, each holding its block.py): imports the libraries the blocks' finetune calls
# import (~7 s, paid once, where an interpreter per block paid it per block), then runs each block in a forked child
# of its own, in the empty folder ``cwd``, as ``python -c`` would from there (a fresh __main__, an exception's
# traceback on stderr and exit 1); its output and exit code are left in the folder. finetune itself is not imported
# before the fork: each block imports it, in its own child.
BLOCKS_DRIVER = """
import os, sys
import albumentations, hydra.compose, lightning, sklearn.datasets, timm, torch, torchmetrics  # noqa: F401

for folder in sys.argv[1:]:
    if os.fork() == 0:
        output = os.open(os.path.join(folder, "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(output, 1)
        os.dup2(output, 2)
        with open(os.path.join(folder, "block.py")) as f:
            code = f.read()
        os.chdir(os.path.join(folder, "cwd"))
        sys.argv = ["-c"]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
        sys.exit(0)
    _, status = os.wait()
    with open(os.path.join(folder, "exit_code"), "w") as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
"""


@pytest.fixture(scope="module")
def block_folders(tmp_path_factory) -> dict[str, Path]:
    """Every runnable block run by BLOCKS_DRIVER (one interpreter start for all): ``page:first`` -> its folder; the
    driver's own output (an import that failed) in ``driver.txt`` beside them."""
    base = tmp_path_factory.mktemp("blocks")
    folders = {f"{page}:{first}": base / str(i) for i, (page, first, _) in enumerate(RUNNABLE)}
    for (_, _, code), folder in zip(RUNNABLE, folders.values()):
        (folder / "cwd").mkdir(parents=True)
        (folder / "block.py").write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(base / "driver.txt", "w") as log:
        command = [sys.executable, "-c", BLOCKS_DRIVER, *map(str, folders.values())]
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        driver.wait(timeout=300 * len(folders))
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the block it runs
            driver.wait()
    return folders


@pytest.mark.parametrize("page,first", [(p, f) for p, f, _ in RUNNABLE], ids=[f"{p}:{f}" for p, f, _ in RUNNABLE])
def test_a_runnable_python_block_runs(page: str, first: int, block_folders):
    folder = block_folders[f"{page}:{first}"]
    if not (folder / "exit_code").is_file():
        pytest.fail(f"{page}:{first}: the block did not finish:\n{(folder.parent / 'driver.txt').read_text()[-3000:]}")
    exit_code, output = (folder / "exit_code").read_text(), (folder / "output.txt").read_text()
    assert exit_code == "0", f"{page}:{first}: the runnable block failed ({exit_code}):\n{output[-3000:]}"


# --- the generated pages (docs/reference/commands.md, …) are committed and equal what the code generates ----------


def reference_module():
    """``docs/gen_pages.py``, the generator of the pages (a script next to the docs, not a package)."""
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "docs" / "gen_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE = reference_module()


@pytest.mark.parametrize("path", sorted(REFERENCE.PAGES))
def test_a_generated_page_is_committed_as_the_code_generates_it(path: str, monkeypatch):
    """Rendered at another terminal width than ``make docs-pages`` had: the text must not depend on it."""
    monkeypatch.setenv("COLUMNS", "200")
    committed = REPO / "docs" / path
    assert committed.is_file(), f"docs/{path} is missing: run `make docs-pages`"
    text = committed.read_text()
    assert text.splitlines()[0] == REFERENCE.header(path), f"docs/{path}: its first line must say it is generated"
    assert text == REFERENCE.PAGES[path](), f"docs/{path} is stale: run `make docs-pages` and commit it"


def test_the_generated_pages_hold_no_path_of_this_machine():
    texts = [(REPO / "docs" / path).read_text() for path in REFERENCE.PAGES if path.endswith(".md")]
    assert not [t for t in texts if str(REPO) in t or os.path.expanduser("~") in t]


# --- every relative link of README.md and docs/**/*.md names a file of the repository --------------------------

LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(text: str) -> list[str]:
    """The targets of the markdown links ``[text](target)`` outside code (fenced blocks, inline code), less the
    external ones (``https:``, ``mailto:``) and the anchors within the page."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    targets = [match[1] for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[a-zA-Z][\w+.-]*:|#", t)]


def test_the_link_check_finds_relative_links_outside_code():
    text = '[a](docs/x.md#y) [b](https://e.org) [c](#z) `[d](no.md)`\n```md\n[e](no.md)\n```\n![f](img.png "t")\n'
    assert relative_links(text) == ["docs/x.md#y", "img.png"]


def is_file_of_the_repository(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO) and path.exists()


def test_every_relative_link_names_a_file_of_the_repository():
    broken = [
        f"{page.relative_to(REPO)}: ({target})"
        for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
        for target in relative_links(page.read_text())
        if not is_file_of_the_repository(page.parent / target.partition("#")[0])
    ]
    assert not broken, f"links to files the repository does not hold (GitHub shows a 404): {broken}"
