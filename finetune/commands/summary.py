"""The ``summary`` command: the lecture's counting table of a configured model, of a finished run's
model, or of a published architecture.

Three things can be counted; exactly one per call:

* ``backbone=resnet18 [backbone.freeze=2] …`` (Hydra overrides of ``conf/``, the default): the
  fine-tune model that ``finetune`` would build (timm backbone + new head), frozen
  stages marked.
* ``run=<run dir>``: the model a finished run trained (its ``config.yaml`` and ``data.json``: classes,
  input channels, input size), with the frozen set of its last phase.
* ``model=<source>:<name>``: an architecture as its library or paper defines it, own classifier
  included, with random weights: ``torchvision:alexnet`` (torchvision's classification models),
  ``timm:vgg16`` (any timm model), ``paper:lenet5`` / ``paper:alexnet`` / ``paper:googlenet``
  (``finetune.models.papers``). The source prefix is required: ``vgg16`` names different networks
  in timm and torchvision. These are counted on PyTorch's meta device (shapes only, no memory, no
  arithmetic), so even VGG-16 at 224x224 takes milliseconds.
"""

from __future__ import annotations

import difflib
import io
import json
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.commands.args import compose_config, existing_path
from finetune.run.errors import FinetuneError

if TYPE_CHECKING:  # torch and the counting code are imported once the arguments are good
    from torch import nn

    from finetune.models.summary import LayerCount, Rows, StageCount

    Summary = tuple[str, list[LayerCount], list[StageCount]]

OPTIONS: dict[str, str | None] = {
    "input_size": None,
    "in_chans": None,
    "classes": None,
    "format": "table",
    "out": None,
    "per": None,
    "model": None,
    "run": None,
}
_FORMATS = ("table", "markdown", "csv")
_PERS = ("layer", "stage", "both")
_OUTPUT_KEYS = ("format", "out", "per")  # how to show the table, not what is counted
SOURCES = ("torchvision", "timm", "paper")


def main(argv: Sequence[str] | None = None) -> int:
    """finetune summary: count units, weights and connections per layer and per stage.

    finetune summary backbone=resnet18 [backbone.freeze=2] [input_size=224]
                     [in_chans=3] [classes=1000]
    finetune summary run=<run dir>
    finetune summary model=torchvision:alexnet | model=timm:vgg16
                     | model=paper:lenet5 [input_size=…] [classes=…]

    Output: [format=table|markdown|csv] [per=layer|stage|both] [out=FILE]. Any
    other key=value is a config override (as for training) and goes with
    backbone=… only."""
    from finetune.commands.args import run_command

    return run_command(summary_command, main.__doc__, argv)


def summary_command(argv: list[str]) -> None:
    """Parse, count the one thing asked for, print or write the tables."""
    own, overrides = split_args(argv)
    fmt = _choice("format", own["format"], _FORMATS)
    per = _choice("per", own["per"] or ("layer" if fmt == "csv" else "both"), _PERS)
    if fmt == "csv" and per == "both":
        raise FinetuneError("format=csv writes one table: choose per=layer or per=stage")
    input_size, in_chans, classes = (_positive_int(k, own[k]) for k in ("input_size", "in_chans", "classes"))
    if own["run"] is not None:
        changes = [f"{k}={own[k]}" for k in OPTIONS if k not in (*_OUTPUT_KEYS, "run") and own[k]]
        if changes or overrides:
            raise FinetuneError(
                f"run= summarises the model the run trained: drop {' '.join(changes + overrides)} "
                "(only format=, per= and out= go with run=)"
            )
        summary = summarize_run(own["run"])
    elif own["model"] is not None:
        if overrides:
            raise FinetuneError(
                f"model={own['model']} counts a published architecture, not a config: drop "
                f"{' '.join(overrides)} (backbone=… with overrides counts a fine-tune model)"
            )
        summary = summarize_named(own["model"], input_size, in_chans, classes)
    else:
        summary = summarize(overrides, input_size, in_chans or 3, classes or 1000)
    emit(fmt, per, *summary, own["out"])


def split_args(argv: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """Summary's own ``key=value`` options, and every other argument as a Hydra override."""
    own = dict(OPTIONS)
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise FinetuneError(f"argument {arg!r} is not key=value, e.g. backbone=resnet18 input_size=224")
        plain = key.lstrip("+~")
        if plain in OPTIONS and plain != key:
            raise FinetuneError(f"{arg}: {plain} is an option of summary, not a config key: write {plain}={value}")
        if key in OPTIONS:
            own[key] = value
        else:
            _refuse_other_sources(key, value)
            overrides.append(arg)
    return own, overrides


def _refuse_other_sources(key: str, value: str) -> None:
    """``backbone=torchvision:alexnet``: backbones are timm configs; point to ``model=``."""
    source = value.partition(":")[0]
    if key in ("backbone", "backbone.name") and source in SOURCES:
        raise FinetuneError(
            f"{key}={value}: {key} picks a timm backbone of a fine-tune model; count a whole "
            f"architecture with model={value}"
        )


def _positive_int(key: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise FinetuneError(f"{key}={value!r}: must be a positive whole number")
    return int(value)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise FinetuneError(f"{key}={value!r}: choose one of {', '.join(allowed)}")
    return value


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _count(model: nn.Module, shape: tuple[int, int, int], what: str) -> list[LayerCount]:
    """``count_layers`` with a model that cannot take the input size reported in one line."""
    from finetune.models.summary import count_layers

    try:
        return count_layers(model, shape)
    except NotImplementedError:
        raise
    except (RuntimeError, AssertionError) as err:  # timm asserts fixed input sizes
        raise FinetuneError(
            f"{what} cannot take a {_shape(shape)} input (choose another input_size=): {str(err).splitlines()[0]}"
        ) from None


def _uncounted(model: nn.Module, rows: list[LayerCount]) -> str:
    """A note on parameters no row holds (modules eval mode never calls, position embeddings …)."""
    from finetune.models.summary import totals

    left = sum(p.numel() for p in model.parameters()) - totals(rows)["weights_with_bias"]
    return f"; {left:,} parameters in no row (not used by the eval forward pass, or not a layer)" if left else ""


# --- backbone=… : the fine-tune model a config describes ---


def _compose(overrides: list[str]) -> Any:
    """The real config (``conf/``) with the user's overrides; Hydra's errors as one FinetuneError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise FinetuneError(str(err).split("\nConfig search path")[0]) from None


def summarize(
    overrides: Sequence[str], input_size: int | None = None, in_chans: int = 3, classes: int = 1000
) -> Summary:
    """Title, layer rows and stage rows of the configured model (no weights loaded) with its freezing."""
    import timm
    from omegaconf import open_dict

    from finetune.models.freezing import frozen_stages
    from finetune.models.summary import roll_up
    from finetune.models.weights import resolve_weights
    from finetune.tasks.registry import get_task

    cfg = _compose(list(overrides))
    task, weights = get_task(cfg.task), resolve_weights(cfg.backbone.name, pretrained=False)
    if input_size is None:  # the backbone's pretrained size, not the dataset's
        pretrained_cfg = timm.models.get_pretrained_cfg(weights.timm_name)
        input_size = pretrained_cfg.input_size[-1] if pretrained_cfg else 224
    with open_dict(cfg):
        cfg.dataset[task.input_size_key] = input_size  # fixed-size models (ViTs) are built for the counted size
    model = task.build_model(cfg, weights, in_chans, classes)
    model.set_frozen(frozen_stages(model.stage_map, cfg.backbone.freeze, cfg.backbone.name), cfg.backbone.bn)
    shape = (in_chans, input_size, input_size)
    rows = _count(model, shape, cfg.backbone.name)
    title = (
        f"{cfg.backbone.name} + {cfg.head.kind} head ({classes} classes), input {_shape(shape)}, "
        f"backbone.freeze={cfg.backbone.freeze}{_uncounted(model, rows)}"
    )
    return title, rows, roll_up(rows, model.stage_of)


# --- run=<run dir> : the model a finished run trained ---


def summarize_run(path: str) -> Summary:
    """The run's model (skeleton: counts need no trained weights), frozen as in its last phase."""
    run_dir = existing_path(path, "run", "run directory")
    if run_dir.is_file():  # a checkpoint inside the run
        from finetune.run.records import run_dir_of

        run_dir = run_dir_of(run_dir)
    for name in ("config.yaml", "data.json"):
        if not (run_dir / name).is_file():
            raise FinetuneError(
                f"run={path}: {run_dir / name} is missing; run= takes a finetune run directory "
                "(the folder with config.yaml and data.json)"
            )
    from finetune.models.freezing import frozen_stages
    from finetune.models.summary import roll_up
    from finetune.models.weights import resolve_weights
    from finetune.run.config import load_config
    from finetune.tasks.registry import get_task

    cfg = load_config(run_dir / "config.yaml")
    data = json.loads((run_dir / "data.json").read_text())
    in_chans, names = data["model_in_chans"], data["class_names"]
    skeleton = resolve_weights(cfg.backbone.name, pretrained=False)
    model = get_task(cfg.task).build_model(cfg, skeleton, in_chans, len(names))
    phases = cfg.schedule.get("phases") or [{}]
    last = phases[-1]
    freeze = last.get("freeze", cfg.backbone.freeze)
    model.set_frozen(frozen_stages(model.stage_map, freeze, cfg.backbone.name), cfg.backbone.bn)
    shape = (in_chans, *data["preprocessing"]["size"])
    rows = _count(model, shape, cfg.backbone.name)
    shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
    title = (
        f"run {run_dir.name}: {cfg.backbone.name} + {cfg.head.kind} head, {len(names)} classes ({shown}), "
        f"in_chans={in_chans}, input {_shape(shape)}, frozen as in its last phase "
        f"{last.get('name', 'phase')!r} (freeze={freeze}){_uncounted(model, rows)}"
    )
    return title, rows, roll_up(rows, model.stage_of)


# --- model=<source>:<name> : an architecture as published ---


def _torchvision(
    name: str, in_chans: int | None, classes: int | None, input_size: int | None
) -> tuple[Callable[[], nn.Module], int]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if name not in known:
        raise _unknown("torchvision", name, known, "torchvision.models.list_models(torchvision.models)")
    if in_chans not in (None, 3):
        raise FinetuneError(f"model=torchvision:{name} takes 3 input channels (in_chans={in_chans})")
    kwargs = {} if classes is None else {"num_classes": classes}
    size = torchvision.models.get_model_weights(name).DEFAULT.transforms.keywords.get("crop_size", 224)
    return lambda: torchvision.models.get_model(name, weights=None, **kwargs), size


def _timm(
    name: str, in_chans: int | None, classes: int | None, input_size: int | None
) -> tuple[Callable[[], nn.Module], int]:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), f"timm.list_models('{name[:3]}*')")
    kwargs = {k: v for k, v in (("in_chans", in_chans), ("num_classes", classes)) if v is not None}
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    if input_size and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = input_size  # ViTs are built for one input size
    return lambda: timm.create_model(name, pretrained=False, **kwargs), pretrained_cfg.input_size[-1]


def _paper(
    name: str, in_chans: int | None, classes: int | None, input_size: int | None
) -> tuple[Callable[[], nn.Module], int]:
    from finetune.models.papers import PAPERS

    if name not in PAPERS:
        raise _unknown("paper", name, list(PAPERS), "finetune.models.papers.PAPERS")
    paper = PAPERS[name]
    if in_chans not in (None, paper.input_shape[0]):
        raise FinetuneError(f"model=paper:{name} takes {paper.input_shape[0]} input channel(s) (in_chans={in_chans})")
    kwargs = {} if classes is None else {"num_classes": classes}
    return lambda: paper.build(**kwargs), paper.input_shape[-1]


_BUILDERS = {"torchvision": _torchvision, "timm": _timm, "paper": _paper}


def _unknown(source: str, name: str, known: Sequence[str], lister: str) -> FinetuneError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'model={source}:{c}' for c in close)}? " if close else ""
    listing = ", ".join(known) if len(known) <= 12 else f"{len(known)} names, see {lister}"
    return FinetuneError(
        f"model={source}:{name}: {source} has no classification model {name!r}; {hint}known: {listing}"
    )


def _sources_of(name: str) -> list[str]:
    """The sources that know ``name``, for a model= without a prefix."""
    found = []
    for source in SOURCES:
        try:
            _BUILDERS[source](name, None, None, None)
        except FinetuneError:
            continue
        found.append(f"model={source}:{name}")
    return found


def summarize_named(spec: str, input_size: int | None, in_chans: int | None, classes: int | None) -> Summary:
    """A published architecture, counted on the meta device (CPU where a model needs real tensors)."""
    source, sep, name = spec.partition(":")
    if not sep or source not in _BUILDERS:
        found = _sources_of(spec) if not sep else []
        hint = f"here: {' or '.join(found)}" if found else "e.g. model=torchvision:alexnet, model=timm:resnet18"
        raise FinetuneError(f"model={spec}: name the source as model=<{'|'.join(SOURCES)}>:<name>, {hint}")
    import torch

    from finetune.models.summary import roll_up

    build, default_size = _BUILDERS[source](name, in_chans, classes, input_size)
    size = input_size or default_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torchvision's GoogLeNet init-weights FutureWarning
        try:
            with torch.device("meta"):
                model = build()
            shape = (_in_channels(model, in_chans), size, size)
            rows = _count(model, shape, spec)
        except NotImplementedError:  # e.g. RegNet's constructor reads tensor values
            model = build()
            shape = (_in_channels(model, in_chans), size, size)
            rows = _count(model, shape, spec)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    title = (
        f"{spec} (random weights, own classifier), input {_shape(shape)}: {params:,} parameters, "
        f"{trainable:,} trainable{_uncounted(model, rows)}"
    )
    return title, rows, roll_up(rows, lambda layer: layer.split(".")[0])


def _in_channels(model: nn.Module, asked: int | None) -> int:
    """Input channels: as asked, else those of the first convolution or linear layer."""
    from torch import nn

    if asked is not None:
        return asked
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return getattr(first, "in_channels", None) or 3


# --- output ---


def _tables(per: str, rows: list[LayerCount], stages: list[StageCount]) -> list[tuple[str, Rows]]:
    named: list[tuple[str, Rows]] = [("layers", rows), ("stages", stages)]
    return [t for t in named if per == "both" or t[0] == f"{per}s"]


def _render_text(fmt: str, title: str, tables: list[tuple[str, Rows]], width: int | None) -> str:
    """Rich tables (plain text) or markdown sections for the chosen tables."""
    from rich.console import Console

    from finetune.models.summary import render_table, to_markdown

    if fmt == "markdown":
        return f"# {title}\n\n" + "\n".join(f"## {name.capitalize()}\n\n{to_markdown(t)}" for name, t in tables)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width or 200, color_system=None)
    for name, table in tables:
        console.print(render_table(table, f"{title}: {name}"))
    return buffer.getvalue()


def emit(fmt: str, per: str, title: str, rows: list[LayerCount], stages: list[StageCount], out: str | None) -> None:
    """Print the chosen tables, or write them atomically to ``out``."""
    from finetune.models.summary import write_csv
    from finetune.run.artifacts import atomic_path, write_text

    tables = _tables(per, rows, stages)
    if fmt == "csv":
        if out is not None:
            with atomic_path(out) as tmp:
                write_csv(tables[0][1], tmp)
            return
        with tempfile.TemporaryDirectory() as folder:
            write_csv(tables[0][1], Path(folder) / "summary.csv")
            sys.stdout.write((Path(folder) / "summary.csv").read_text())
        return
    width = None if out else max(shutil.get_terminal_size((200, 24)).columns, 160)
    text = _render_text(fmt, title, tables, width)
    if out is None:
        sys.stdout.write(text)
    else:
        write_text(out, text)


if __name__ == "__main__":
    sys.exit(main())
