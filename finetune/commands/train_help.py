"""``finetune train --help``: Hydra's help (the config groups, the composed config) with the recipes in between,
read from ``recipes/<group>/<name>.yaml`` (each file's first comment line after ``# @package`` says what it is)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from finetune.commands.args import fit
from finetune.resources import recipes_dir

HEADER = "finetune train [key=value ...]: fine-tune a backbone; pick options, add a recipe, override any key."
FOOTER = "finetune train --cfg job <overrides> prints the composed config; --hydra-help: Hydra's own flags."


def recipe_summaries() -> list[tuple[str, str]]:
    """``(+group=name, one line)`` for every recipe file, sorted by group and name."""
    return [(f"+{path.parent.name}={path.stem}", _summary(path.read_text())) for path in _recipe_files()]


def help_template() -> str:
    """Hydra's ``hydra.help.template`` with a ``== Recipes ==`` section, every line but the config's within
    ``HELP_WIDTH`` columns (``$CONFIG`` is Hydra's placeholder, filled in when it prints the help). Called by
    Hydra as it prints the help, so the config groups are those Hydra sees (``hydra.searchpath``'s too)."""
    summaries = recipe_summaries()
    width = max((len(name) for name, _ in summaries), default=0)
    text = "\n".join(
        [
            fit(HEADER),
            "",
            "== Configuration groups ==",
            "Compose your configuration from those groups (group=option)",
            "",
            fit("\n".join(_config_groups()), hang=2),
            "",
            "== Recipes ==",
            fit("Complete experiments on top of the defaults (+group=name; any key still overrides them)"),
            "",
            fit("\n".join(f"  {name:<{width}}  {summary}" for name, summary in summaries)),
            "",
            "== Config ==",
            "Override anything in the config (foo.bar=value)",
            "",
            "$CONFIG",
            fit(FOOTER),
        ]
    )
    return "\n".join(line.replace("$", "$$") if line != "$CONFIG" else line for line in text.splitlines())


def _config_groups() -> list[str]:
    """``group: option, …`` for each config group Hydra sees but its own (``hydra/…``), sorted, as Hydra's
    ``$APP_CONFIG_GROUPS`` lists them; read through Hydra's public ``ConfigLoader`` interface."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()

    def groups(parent: str) -> Iterator[str]:
        for name in loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            if group == "hydra":
                continue
            if loader.get_group_options(group, ObjectType.CONFIG):
                yield group
            if loader.get_group_options(group, ObjectType.GROUP):
                yield from groups(group)

    return [f"{group}: {', '.join(sorted(loader.get_group_options(group)))}" for group in sorted(groups(""))]


def _recipe_files() -> list[Path]:
    return sorted(recipes_dir().glob("*/*.yaml"))


def _summary(text: str) -> str:
    """The first comment line that is not Hydra's ``# @package`` directive ("" where there is none)."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if words and not words.startswith("@package"):
            return words
    return ""
