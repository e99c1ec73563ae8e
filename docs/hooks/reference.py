"""mkdocs hook: the pages that are generated from the code each time the site is built, never kept by hand.

- ``reference/commands.md``: every command of ``finetune.cli.COMMANDS``, its options (the command module's
  ``OPTIONS``) and its own ``--help`` text;
- ``reference/config.md``: every config group, option and key with its type (the typed schema,
  ``finetune.run.schema``, as Hydra composes it), its value and the comment beside it in ``conf/**.yaml``;
  and the recipes with the first line of their comment;
- ``results/benchmarks.md``: the measured tables of ``benchmarks/results/*.json`` (``benchmarks.readme``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level folder of the checkout, not a package of finetune
    sys.path.insert(0, str(ROOT))

GENERATED = "Generated from the code when the site is built (`docs/hooks/reference.py`): it cannot drift."


def on_files(files, config):
    """Add the generated pages (and the profile the benchmarks page links to) to the site."""
    from mkdocs.structure.files import File

    results = ROOT / "benchmarks" / "results"
    pages = {
        "reference/commands.md": commands_page(),
        "reference/config.md": config_page(),
        "results/benchmarks.md": benchmarks_page(results),
        "results/overhead_profile.txt": (results / "overhead_profile.txt").read_text(),
    }
    for path, text in pages.items():
        files.append(File.generated(config, path, content=text))
    return files


# --- commands -----------------------------------------------------------------------------------------------


def command_help(name: str) -> str:
    """What ``finetune <name> --help`` prints (run in this process; Hydra's help ends before its config dump)."""
    from hydra.core.global_hydra import GlobalHydra

    from finetune.cli import COMMANDS

    module, _, function = COMMANDS[name][0].partition(":")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        getattr(importlib.import_module(module), function)(["--help"])
    GlobalHydra.instance().clear()
    return inspect.cleandoc(out.getvalue().split("== Config ==")[0])


def command_options(name: str) -> dict[str, str | None]:
    """The command's own ``key=value`` options and their defaults (its module's ``OPTIONS``; none for train)."""
    from finetune.cli import COMMANDS

    return dict(getattr(importlib.import_module(COMMANDS[name][0].partition(":")[0]), "OPTIONS", {}))


def commands_page() -> str:
    from finetune.cli import COMMANDS, usage

    lines = ["# Commands", "", GENERATED, "", "```text", usage(), "```", ""]
    for name, (_, text) in COMMANDS.items():
        sentence = text[0].upper() + text[1:] + ("" if text.endswith((".", "…")) else ".")
        sentence = sentence.replace("<", "&lt;")  # `<overrides>` is text, not an HTML tag
        lines += [f"## `finetune {name}`", "", sentence, ""]
        options = command_options(name)
        if options:
            lines += ["| option | default |", "|---|---|"]
            lines += [f"| `{key}=` | {'–' if value is None else f'`{value}`'} |" for key, value in options.items()]
            lines.append("")
        lines += [f"`finetune {name} --help`:", "", "```text", command_help(name), "```", ""]
    return "\n".join(lines)


# --- config -------------------------------------------------------------------------------------------------


def yaml_comments(path: Path) -> tuple[list[str], dict[str, str]]:
    """A YAML file's leading comment lines (its description) and the comment beside each key (dotted path),
    continuation lines included; list items and ``defaults``/``hydra`` are left out."""
    header, comments, stack = [], {}, []
    last, last_indent, skip_below = None, -1, None
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        text, indent = line.strip(), len(line) - len(line.lstrip())
        if not text:
            continue
        if text.startswith("#"):
            words = text.lstrip("#").strip()
            if last is None and number == len(header) and not words.startswith("@package"):
                header.append(words)
            elif last is None and number == len(header):
                header.append("")
            elif last and indent > last_indent and words:
                comments[last] = f"{comments.get(last, '')} {words}".strip()
            continue
        if skip_below is not None and indent > skip_below:
            continue
        skip_below = None
        match = re.match(r"([\w.-]+):\s*(.*)$", text)
        if text.startswith("-") or not match:
            last, skip_below = None, indent
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match[1]))
        key = ".".join(k for _, k in stack)
        if key.split(".")[0] in ("defaults", "hydra"):
            last, skip_below = "", indent
            continue
        parts = re.split(r"(?:^|\s)#\s?", match[2], maxsplit=1)
        if len(parts) == 2 and parts[1].strip():
            comments[key] = parts[1].strip()
        last, last_indent = key, indent
    return [h for h in header if h], comments


def type_name(node: Any) -> str:
    """The schema's type of a composed config node (``str``, ``int | null``, ``list[int]``, ``any``)."""
    ref = node._metadata.ref_type
    name = getattr(ref, "__name__", None) if isinstance(ref, type) else None
    name = name or str(ref).replace("typing.", "").replace("List", "list").replace("Dict", "dict")
    name = "any" if name == "Any" else name
    return f"{name} | null" if node._is_optional() and name != "any" else name


def show(value: Any) -> str:
    """A value as it is written on the command line (``null``, ``true``, ``[1, 4]``, ``${schedule.lr}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip().replace("|", "\\|")


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every key below a composed DictConfig with its node (lists are one key)."""
    from omegaconf import DictConfig

    out = []
    for key in node.keys():
        child = node._get_node(key)
        path = f"{prefix}{key}"
        out += leaves(child, f"{path}.") if isinstance(child, DictConfig) else [(path, child)]
    return out


def key_rows(cfg: Any, paths: list[str], comments: dict[str, str], base: str = "") -> list[str]:
    """Table rows (key, type, value, comment) for ``paths`` below ``base`` of the composed config."""
    from omegaconf import ListConfig, OmegaConf

    node = OmegaConf.select(cfg, base) if base else cfg
    rows = []
    for path, child in leaves(node):
        if path not in paths:
            continue
        value = OmegaConf.to_container(child, resolve=False) if isinstance(child, ListConfig) else child._value()
        name = f"{base}.{path}" if base else path
        comment = comments.get(path, "").replace("|", "\\|")
        kind = type_name(child).replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | `{show(value)}` | {comment} |")
    return rows


TABLE = ["| key | type | value | comment |", "|---|---|---|---|"]


def config_page() -> str:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import finetune.run.schema  # noqa: F401  (registers the schema Hydra checks every composition against)
    from finetune.resources import conf_dir, recipes_dir

    conf, groups = conf_dir(), sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")
    lines = ["# Configuration", "", GENERATED, ""]
    lines += [
        "Every run is composed by Hydra from `conf/config.yaml` and one option of each group "
        "(`finetune <group>=<option>`); any key can then be set (`finetune dataset.image_size=128`). Types come "
        "from the typed schema (`finetune/run/schema.py`): a value of another type is refused before any work.",
        "",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        default = compose("config", return_hydra_config=True)
        choices = dict(default.hydra.runtime.choices)
        lines += top_level_section(conf, compose)
        for group in groups:
            lines += group_section(conf, group, choices[group], compose)
        lines += sweeper_section(conf, compose)
    lines += recipes_section(recipes_dir())
    return "\n".join(lines)


def top_level_section(conf: Path, compose) -> list[str]:
    """The keys outside every group: ``conf/config.yaml`` and each task's own (``conf/task/<task>.yaml``)."""
    lines = ["## Top-level keys", "", "`conf/config.yaml` (every task):", "", *TABLE]
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    tasks = sorted((conf / "task").glob("*.yaml"))
    keys = [{p for p, _ in leaves(compose("config", [f"task={t.stem}"]))} for t in tasks]
    cfg = compose("config")
    _, comments = yaml_comments(conf / "config.yaml")
    shared = [p for p, _ in leaves(cfg) if p.split(".")[0] not in groups | {"task"} and all(p in k for k in keys)]
    lines += key_rows(cfg, shared, comments)
    for path in tasks:
        task_cfg = compose("config", [f"task={path.stem}"])
        _, comments = yaml_comments(path)
        own = [p for p, _ in leaves(task_cfg) if p.split(".")[0] not in groups and p not in shared]
        lines += ["", f"`task={path.stem}` (`conf/task/{path.name}`) adds:", "", *TABLE]
        lines += key_rows(task_cfg, own, comments)
    return [*lines, ""]


def group_section(conf: Path, group: str, default: str, compose) -> list[str]:
    """A group: its options (the comment at the top of each file), then the keys of the default option, then
    the keys of each other option: all of them where its schema differs, else those whose value differs."""
    options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
    lines = [f"## `{group}`", "", "| option | description |", "|---|---|"]
    for option in options:
        description = " ".join(yaml_comments(conf / group / f"{option}.yaml")[0])
        lines.append(f"| `{group}={option}`{' (default)' if option == default else ''} | {description} |")
    lines.append("")
    if group == "task":
        return [*lines, "Each task's own keys: see [Top-level keys](#top-level-keys).", ""]
    base = compose("config", [f"{group}={default}"])
    base_values = {p: repr(n._value()) for p, n in leaves(base[group])}
    base_comments = yaml_comments(conf / group / f"{default}.yaml")[1]
    for option in [default, *(o for o in options if o != default)]:
        try:
            cfg = compose("config", [f"{group}={option}"])
        except Exception:  # a segmentation-only option (a decoder, a mask dataset) composes with its task
            cfg = compose("config", [f"{group}={option}", "task=segmentation"])
        comments = {**base_comments, **yaml_comments(conf / group / f"{option}.yaml")[1]}
        paths = [p for p, _ in leaves(cfg[group])]
        same_schema = type(cfg[group]._metadata.object_type) is type and (
            cfg[group]._metadata.object_type is base[group]._metadata.object_type
        )
        if option != default and same_schema:
            paths = [p for p, n in leaves(cfg[group]) if base_values.get(p) != repr(n._value())]
            title = f"### `{group}={option}`: what differs from `{group}={default}`"
        else:
            title = f"### `{group}={option}`"
        lines += [title, ""]
        lines += [*TABLE, *key_rows(cfg, paths, comments, group), ""] if paths else ["Nothing else differs.", ""]
    return lines


def sweeper_section(conf: Path, compose) -> list[str]:
    """``hydra/sweeper=search``: the keys of finetune's Optuna sweeper (``hydra.sweeper.*``)."""
    path = conf / "hydra" / "sweeper" / "search.yaml"
    cfg = compose("config", ["hydra/sweeper=search"], return_hydra_config=True)
    description, comments = yaml_comments(path)
    paths = [p for p, _ in leaves(cfg.hydra.sweeper)]
    return [
        "## `hydra/sweeper=search`",
        "",
        f"{description[0].rstrip('.')} (see [Sweeps and search](../search.md)).",
        "",
        *TABLE,
        *key_rows(cfg, paths, comments, "hydra.sweeper"),
        "",
    ]


def recipes_section(recipes: Path) -> list[str]:
    """Every recipe (``+<group>=<name>``) with the first line of its comment."""
    lines = ["## Recipes", "", "`recipes/<group>/<name>.yaml`, selected with `+<group>=<name>`:", ""]
    lines += ["| recipe | description |", "|---|---|"]
    for path in sorted(recipes.glob("*/*.yaml")):
        lines.append(f"| `+{path.parent.name}={path.stem}` | {(yaml_comments(path)[0] or [''])[0]} |")
    return [*lines, ""]


# --- results ------------------------------------------------------------------------------------------------


def benchmarks_page(results: Path) -> str:
    """``benchmarks/results/README.md``'s tables, rendered from the JSON files by ``benchmarks.readme``."""
    from benchmarks.peers.tables import SECTIONS
    from benchmarks.readme import render

    text = render(results, SECTIONS)
    title, _, body = text.partition("\n")
    note = "Rendered from `benchmarks/results/*.json` by `benchmarks/readme.py` when the site is built."
    return f"{title}\n\n{note}\n{body}"
