"""3. Memory and time of a training step: freeze=0 vs freeze=k vs freeze=all vs LoRA / BitFit.

A setting is a freeze depth (``0``, ``3``, ``all``) or an adapter (``lora``, ``bitfit``: freeze=0 with
``backbone.adapter``, so every stage runs its backward but only the adapter's parameters get gradients).
Each setting runs in a fresh subprocess (so no allocator state is shared): build the model and
one batch, take the RSS, reset the peak mark, run a few training steps, read the peak RSS. The growth is
the step's peak working set (peak RSS via /proc VmHWM, reset before the steps) (activations kept for
backward, gradients, AdamW state). Parameter,
gradient and optimizer-state bytes are counted exactly alongside. Peak RSS is not a timing: one
fresh process per setting is enough (``repeats`` > 1 takes medians). The child also times its steps
after the first (median ms/step); settings alternate between repetitions, so the step-time ratios
are side by side. On CUDA the same child reports
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from .common import REPO, RESULTS, median, write_result


def _rss_kb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in kB. ``ru_maxrss`` is not used: Linux carries
    the parent's high-water mark into a forked + exec'd child."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak() -> None:
    """Reset the peak-RSS mark (Linux ``clear_refs`` 5), so VmHWM is the training steps' peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(backbone: str, image_size: int, setting: str, batch_size: int, steps: int) -> dict:
    """One setting in this process: RSS before / after ``steps`` training steps, and ms per step."""
    from finetune.models import ADAPTERS
    from finetune.models.freezing import frozen_stages, param_groups, stage_learning_rates

    from .common import build, fake_batches

    adapter = setting if setting in ADAPTERS else "none"
    freeze = "0" if adapter != "none" else setting
    _, model = build(backbone, image_size, 10, False, f"backbone.adapter={adapter}")
    model.set_frozen(frozen_stages(model.stage_map, freeze), "frozen")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    x, y = (t.to(device) for t in fake_batches(1, batch_size, image_size)[0])
    optimizer = torch.optim.AdamW(param_groups(model, stage_learning_rates(model, 1e-3, 0.1), 0.01))
    before = _rss_kb("VmRSS")
    _reset_peak()
    step_ms = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        step_ms.append(1000 * (time.perf_counter() - start))
    after = _rss_kb("VmHWM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "rss_before_mb": before / 1024,
        "rss_peak_mb": after / 1024,
        "growth_mb": (after - before) / 1024,
        "trainable_params": trainable,
        "params": sum(p.numel() for p in model.parameters()),
        "grad_plus_adam_state_mb": 3 * 4 * trainable / 2**20,
        "step_ms": median(step_ms[1:] or step_ms),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def run_child(*args) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    backbone: str, image_size: int, depths: tuple[str, ...], batch_size: int = 32, steps: int = 2, repeats: int = 1
) -> dict:
    """Every setting in ``depths`` (the first is the reference), ``repeats`` interleaved fresh processes each."""
    runs: dict[str, list[dict]] = {d: [] for d in depths}
    for rep in range(repeats):  # interleaved: one fresh process per setting per repetition, order alternating
        for d in depths if rep % 2 == 0 else depths[::-1]:
            runs[d].append(run_child(backbone, image_size, d, batch_size, steps))
    rows = {}
    for d, rs in runs.items():
        rows[d] = {
            "growth_mb": round(median([r["growth_mb"] for r in rs]), 1),
            "rss_peak_mb": round(median([r["rss_peak_mb"] for r in rs]), 1),
            "trainable_params": rs[0]["trainable_params"],
            "grad_plus_adam_state_mb": round(rs[0]["grad_plus_adam_state_mb"], 1),
            "step_ms": round(median([r["step_ms"] for r in rs]), 2),
            "cuda_peak_mb": rs[0]["cuda_peak_mb"],
        }
    base, base_ms = rows[depths[0]]["growth_mb"] or 1.0, rows[depths[0]]["step_ms"]
    for d in depths:
        rows[d]["growth_vs_freeze0"] = round(rows[d]["growth_mb"] / base, 3)
        rows[d]["step_vs_freeze0"] = round(rows[d]["step_ms"] / base_ms, 3)
    return {
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "by_freeze": rows,
    }


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    if quick:
        settings = [measure("efficientnet_lite0", 32, ("0", "all", "lora"), batch_size=2, steps=2, repeats=1)]
    else:
        settings = [
            measure("efficientnet_lite0", 128, ("0", "3", "all", "lora", "bitfit"), batch_size=16, steps=6, repeats=3),
            measure("resnet18", 128, ("0", "all", "lora", "bitfit"), batch_size=16, steps=6, repeats=3),
        ]
    payload = {
        "method": "fresh subprocess per setting, settings interleaved over repetitions (medians); peak RSS "
        "(VmHWM, reset after setup) minus RSS before the training steps; ms/step = median of the "
        "steps after the first",
        "settings": settings,
    }
    write_result("memory", payload, out_dir)
    return payload


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        b, s, f, bs, n = sys.argv[2:7]
        print(json.dumps(child(b, int(s), f, int(bs), int(n))))
    else:
        print(json.dumps(main(), indent=1))
