"""``finetune train --help``: Hydra's help (the config groups, the composed config) with the recipes in between,
read from ``recipes/<group>/<name>.yaml`` (each file's first comment line after ``# @package`` says what it is)."""

from __future__ import annotations

from pathlib import Path

from finetune.resources import recipes_dir

HEADER = "finetune train [key=value ...]: fine-tune a backbone; pick options, add a recipe, override any key."
FOOTER = "finetune train --cfg job <overrides> prints the composed config; --hydra-help: Hydra's own flags."


def recipe_summaries() -> list[tuple[str, str]]:
    """``(+group=name, one line)`` for every recipe file, sorted by group and name."""
    return [(f"+{path.parent.name}={path.stem}", _summary(path.read_text())) for path in _recipe_files()]


def help_template() -> str:
    """Hydra's ``hydra.help.template`` with a ``== Recipes ==`` section (``$APP_CONFIG_GROUPS`` and ``$CONFIG``
    are Hydra's placeholders, filled in when it prints the help)."""
    summaries = recipe_summaries()
    width = max((len(name) for name, _ in summaries), default=0)
    recipes = "\n".join(f"  {name:<{width}}  {text}".replace("$", "$$") for name, text in summaries)
    return "\n".join(
        [
            HEADER,
            "",
            "== Configuration groups ==",
            "Compose your configuration from those groups (group=option)",
            "",
            "$APP_CONFIG_GROUPS",
            "",
            "== Recipes ==",
            "Complete experiments on top of the defaults (+group=name; any key still overrides them)",
            "",
            recipes,
            "",
            "== Config ==",
            "Override anything in the config (foo.bar=value)",
            "",
            "$CONFIG",
            FOOTER,
        ]
    )


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
