"""``plan=true``: what each phase would do, printed without loading weights or images."""

from __future__ import annotations

import timm
from omegaconf import DictConfig
from rich.table import Table

from finetune.data.datamodule import ClassificationDataModule
from finetune.models.freezing import FineTuneModel, param_groups, stage_learning_rates
from finetune.models.weights import WeightsRecord
from finetune.training.display import console, stage_table
from finetune.training.features import cache_blockers


def print_plan(
    cfg: DictConfig, model: FineTuneModel, data: ClassificationDataModule, plan: list, record: WeightsRecord
) -> None:
    """Per phase: stages frozen/trainable, lr per param group, BN mode; then data vs. model."""
    console.print(
        f"[bold]plan[/bold]: {record.model} (weights: {record.source}), {len(plan)} phase(s), nothing trained"
    )
    for index, planned in enumerate(plan):
        phase = planned.phase
        model.set_frozen(planned.frozen, cfg.backbone.bn)
        console.print(
            stage_table(
                model,
                None,
                f"phase {index + 1} {phase.name!r}: {phase.epochs} epoch(s), "
                f"freeze={phase.freeze}, {phase.optim.optimizer}, "
                f"{phase.optim.scheduler}",
            )
        )
        o = phase.optim
        rates = stage_learning_rates(model, o.lr, o.backbone_lr_mult, o.layer_decay)
        groups = Table("param group", "lr", "weight decay", "tensors", title_justify="left")
        for group in param_groups(model, rates, o.weight_decay):
            groups.add_row(group["name"], f"{group['lr']:.3g}", f"{group['weight_decay']:g}", str(len(group["params"])))
        console.print(groups)
        blockers = cache_blockers(model, data)
        console.print(
            f"feature cache ({cfg.data.cache_features}): "
            + ("possible" + _adapted_note(model, plan[:index]) if not blockers else "off — " + "; ".join(blockers))
        )
    console.print(data_table(cfg, model, data))


def _adapted_note(model: FineTuneModel, before: list) -> str:
    """What a cache holds after earlier phases trained adapters: never features of an older backbone."""
    if model.adapter is None or all(set(p.frozen) == set(model.stage_map.stages) for p in before):
        return ""
    return (
        f" (extracted anew at the start of this phase, through the {model.adapter.kind} adapters as "
        "trained so far; no earlier phase's cache is reused)"
    )


def data_table(cfg: DictConfig, model: FineTuneModel, data: ClassificationDataModule) -> Table:
    """What the backbone's weights expect next to what the dataset provides."""
    expected = timm.data.resolve_data_config(model=model.timm_model)
    pre, info = data.preprocessing, data.info
    per_class = info.class_counts  # images per class (segmentation: train pixels)
    counts = [c for c in per_class if c > 0]
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    table = Table("", "pretrained weights expect", "this run feeds", title="data", title_justify="left")
    table.add_row("input size", "x".join(map(str, expected["input_size"][1:])), "x".join(map(str, pre.size)))
    table.add_row(
        "channels",
        str(expected["input_size"][0]),
        f"{pre.in_chans} (images: {info.image_channels}, grayscale={cfg.dataset.grayscale})",
    )
    table.add_row(
        "mean / std", f"{_fmt(expected['mean'])} / {_fmt(expected['std'])}", f"{_fmt(pre.mean)} / {_fmt(pre.std)}"
    )
    table.add_row("interpolation", expected["interpolation"], pre.interpolation)
    table.add_row(
        "classes",
        "",
        f"{info.num_classes}: " + ", ".join(f"{n}={c}" for n, c in list(zip(info.class_names, per_class))[:12]),
    )
    table.add_row("imbalance (max/min)", "", f"{max(counts) / min(counts):.1f}" if counts else "-")
    table.add_row("split sizes", "", " / ".join(f"{k} {v}" for k, v in data.split_sizes.items()))
    table.add_row(
        "global batch", "", f"{cfg.schedule.batch_size} x {devices} device(s) = {cfg.schedule.batch_size * devices}"
    )
    return table


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
