"""7. DDP vs FSDP: training-state memory per rank for ViT-S/16 and ViT-B/16 at 224 px.

Counted from the real timm models built through finetune (``pretrained=False``: no download), for full
fine-tuning (``freeze=0``) and a frozen backbone with LoRA adapters (``backbone.adapter=lora``: the adapters and
the head train), at N = 1, 2, 4, 8 ranks. float32 master weights, gradients and AdamW's two moments (what
``precision=bf16-mixed`` keeps too: autocast computes in bf16 from float32 weights):

- DDP: every rank holds all parameters, the gradients of the trainable ones plus DDP's gradient buckets (as
  large again: Lightning's DDP does not view gradients as buckets; none at N = 1, one process) and the full AdamW
  state.
- FSDP (FULL_SHARD, ``use_orig_params=True``, one unit per block: ``finetune.training.sharding``): each rank
  holds 1/N of parameters, gradients and AdamW state, plus the largest unit gathered whole while it runs (two:
  the next one is prefetched), parameters and, for a trained unit, its gradients.

Activations are not counted (they depend on the batch and are the same per rank for both). Where it runs here
(one process, N = 1 of DDP; ViT-S, the model with a ``conf/backbone`` group) the measured peak RSS growth of
training steps is added (``benchmarks.memory``'s child): FSDP does not run on a CPU. Written to
``results/sharding_memory.json`` and ``results/sharding_memory.md``.
"""

from __future__ import annotations

from pathlib import Path

from .common import RESULTS, build, write_result

MODELS = ("vit_small_patch16_224", "vit_base_patch16_224")
GROUP = "vit_small_patch16_224"  # the conf/backbone group the models are built from (backbone.name set over it)
RANKS = (1, 2, 4, 8)
SETTINGS = {"full": "0", "lora": "lora"}  # a freeze depth, or an adapter with freeze=0
FLOAT = 4  # bytes of a float32
MIB = 2**20


def counts(backbone: str, setting: str) -> dict:
    """Parameters, trainable parameters and the largest FSDP unit of ``backbone`` under ``setting``."""
    from finetune.models.freezing import frozen_stages
    from finetune.training.sharding import block_classes

    adapter = setting if setting == "lora" else "none"
    _, model = build(GROUP, 224, 10, False, f"backbone.name={backbone}", f"backbone.adapter={adapter}")
    model.set_frozen(frozen_stages(model.stage_map, "0" if adapter != "none" else setting), "frozen")
    classes = tuple(block_classes(model))
    units = [m for m in model.modules() if isinstance(m, classes)]
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "unit_params": max(sum(p.numel() for p in u.parameters()) for u in units),
        "unit_trainable": max(sum(p.numel() for p in u.parameters() if p.requires_grad) for u in units),
        "units": len(units),
    }


def per_rank(c: dict, ranks: int) -> dict:
    """MiB per rank of parameters, gradients and AdamW state under DDP and FSDP (module docstring)."""
    ddp = {
        "params": c["params"] * FLOAT,
        "grads": (2 if ranks > 1 else 1) * c["trainable"] * FLOAT,  # gradients (+ DDP's buckets: N > 1)
        "adamw": 2 * c["trainable"] * FLOAT,
    }
    gathered = 2 * (c["unit_params"] + c["unit_trainable"]) * FLOAT  # the running unit and the prefetched one
    fsdp = {
        "params": c["params"] * FLOAT / ranks,
        "grads": c["trainable"] * FLOAT / ranks,
        "adamw": 2 * c["trainable"] * FLOAT / ranks,
        "gathered_units": gathered if ranks > 1 else 0,
    }
    mib = {k: {n: round(v / MIB, 1) for n, v in side.items()} for k, side in (("ddp", ddp), ("fsdp", fsdp))}
    for side in mib.values():
        side["total"] = round(sum(side.values()), 1)
    return mib


def measured(backbone: str, setting: str, batch_size: int, steps: int) -> dict | None:
    """Peak RSS growth of ``steps`` training steps in one fresh process (N = 1); None where it fails."""
    from .memory import run_child

    try:
        row = run_child(backbone, 224, setting, batch_size, steps)
    except RuntimeError as err:  # e.g. out of memory on a small machine: the counted table still stands
        return {"error": str(err)[-300:]}
    return {"batch_size": batch_size, "step_growth_mb": round(row["growth_mb"], 1), "step_ms": round(row["step_ms"])}


def markdown(rows: list[dict]) -> str:
    """The table of docs/gpu.md: MiB per rank (parameters + gradients + AdamW state [+ gathered units])."""
    lines = [
        "| model | training | params (M) | trainable (M) | N | DDP MiB/rank | FSDP MiB/rank |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    measured_rows = []
    for r in rows:
        for n in RANKS:
            m = r["per_rank"][str(n)]
            lines.append(
                f"| {r['model']} | {r['setting']} | {r['params'] / 1e6:.1f} | {r['trainable'] / 1e6:.2f} | {n} "
                f"| {m['ddp']['total']:.0f} | {m['fsdp']['total']:.0f} |"
            )
        one = r.get("measured_one_process")
        if one and "step_growth_mb" in one:
            figures = f"{one['batch_size']} | {one['step_growth_mb']:.0f} | {one['step_ms']}"
            measured_rows.append(f"| {r['model']} | {r['setting']} | {figures} |")
    if measured_rows:
        lines += [
            "",
            "Measured on the CPU, one process (N = 1), 224 px: peak RSS growth of 2 AdamW steps (activations in it)",
            "",
            "| model | training | batch | step growth MiB | ms/step |",
            "|---|---|---:|---:|---:|",
            *measured_rows,
        ]
    return "\n".join(lines) + "\n"


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    rows = []
    for backbone in MODELS[:1] if quick else MODELS:
        for name, setting in SETTINGS.items():
            c = counts(backbone, setting)
            rows.append(
                {
                    "model": backbone,
                    "setting": name,
                    **c,
                    "per_rank": {str(n): per_rank(c, n) for n in RANKS},
                    # benchmarks.memory's child builds a conf/backbone group: ViT-S only
                    "measured_one_process": measured(backbone, setting, 2 if quick else 8, 2)
                    if backbone == GROUP
                    else None,
                }
            )
    payload = {"rows": rows, "note": "MiB per rank of float32 parameters, gradients and AdamW state; no activations"}
    write_result("sharding_memory", payload, out_dir)
    (out_dir / "sharding_memory.md").write_text(markdown(rows))
    return payload
