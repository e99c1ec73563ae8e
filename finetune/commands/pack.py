"""``finetune pack dataset=<kind> [dataset.*=…] out=<folder or
s3://bucket/prefix>``: a dataset packed into LitData chunks for
``dataset=streaming dataset.uri=<out>``.

``out`` is checked first, before any image is read: a complete pack there, a
local folder or an S3 prefix that holds anything but an unfinished pack of ours,
or a store other than a folder or ``s3://`` is refused. The dataset is scanned
and checked as training would (bad images are refused with the same lines, or
skipped with ``dataset.on_error=skip``); val/test splits carved from train are
fixed at pack time. Each sample keeps its image's encoded bytes (in-memory
arrays: raw uint8 arrays), its target and its split; the index
``finetune-pack.json`` (classes, counts, targets, channels, image sizes) is
written last, once each split holds all its samples. A local pack is written
beside ``out`` and renamed into place. Segmentation kinds (``seg_folder``,
``drive``) pack their image/mask pairs (``finetune.data.seg_pack``); training on
such a pack is not supported yet.
"""

from __future__ import annotations

from collections.abc import Sequence

from finetune.commands.args import compose_config, run_command
from finetune.run.errors import ConfigError

# pack's own key=value option (every other argument is a dataset override): where the pack is written (required)
OPTIONS: dict[str, str | None] = {"out": None}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(pack_command, __doc__, argv)


def pack_command(argv: list[str]) -> None:
    """Check the command line and the config (no torch), then pack."""
    outs = [a.partition("=")[2] for a in argv if a.partition("=")[0] in OPTIONS]
    overrides = [a for a in argv if a.partition("=")[0] not in OPTIONS]
    if not outs or not outs[-1]:
        raise ConfigError("pack: missing out=<folder or s3://bucket/prefix> (where the pack is written)")
    out = outs[-1]
    from finetune.data import DATASETS, packable_kinds
    from finetune.data.streaming import check_out

    kinds = [a.partition("=")[2] for a in overrides if a.startswith("dataset=")]
    if not kinds:
        raise ConfigError(f"pack: missing dataset=<kind> ({', '.join(packable_kinds())})")
    kind = kinds[-1]
    if not DATASETS.get(kind).packable:  # an unknown kind: the registry's line with its choices
        raise ConfigError(
            f"pack: dataset={kind} cannot be packed ({'a pack already' if kind == 'streaming' else 'not yet'}); "
            f"packable kinds: {', '.join(packable_kinds())}"
        )
    check_out(out)  # the store, a complete pack, anything else there: before any image is read
    cfg = compose_config(overrides)
    _pack(cfg, out)


def _pack(cfg, out: str) -> None:
    from finetune.data import DATASETS
    from finetune.data.configs import CsvConfig, dataset_config
    from finetune.data.datasets import load_source
    from finetune.data.files import reading_training_data
    from finetune.data.options import plain_dict
    from finetune.data.streaming import pack
    from finetune.run.console import console

    packer = DATASETS.get(cfg.dataset.kind).packer
    if packer:
        _pack_with(packer, cfg, out)
        return
    config = dataset_config(plain_dict(cfg.dataset))
    with reading_training_data():  # what the pack leaves out is said
        source = load_source(config)
    multilabel = source.task == "multi-label" or (isinstance(config, CsvConfig) and config.multilabel)
    index = pack(source, config, out, multilabel)
    console.print(
        f"packed dataset={config.kind}: {_counts(index)} -> {out} (train with dataset=streaming dataset.uri={out})"
    )


def _pack_with(packer: str, cfg, out: str) -> None:
    """A kind with a packer of its own (segmentation pairs: finetune.data.seg_pack); not trainable from the
    pack yet."""
    from finetune.data.options import plain_dict
    from finetune.run.console import console
    from finetune.run.registry import resolve

    index = resolve(packer)(plain_dict(cfg.dataset), out)
    group, kind = index["task_group"], index["kind"]
    console.print(
        f"packed dataset={kind} ({group}): {_counts(index)} -> {out} "
        f"(training on a {group} pack is not supported yet: train with task={group} dataset={kind})"
    )


def _counts(index: dict) -> str:
    """The class and per-split image counts of a pack's index, as the pack line gives them."""
    from finetune.data.streaming import SPLITS

    sizes = "/".join(str(index["splits"][s]["size"]) for s in SPLITS)
    return f"{len(index['class_names'])} classes, images train/val/test = {sizes}"
