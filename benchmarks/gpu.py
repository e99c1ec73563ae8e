"""6. GPU: images/s of our stack vs the minimal loop with bf16 autocast, channels_last and
torch.compile. Runs only where ``torch.cuda.is_available()``; elsewhere it records why it skipped.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .common import RESULTS, build, fake_batches, interleaved, median, write_result


def minimal_gpu(model, batches, warmup: int, compiled=None) -> float:
    """Images/s of a bf16-autocast, channels_last loop (optionally a compiled model)."""
    net = compiled or model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model.train()
    times = []
    for i, (x, y) in enumerate(batches):
        torch.cuda.synchronize()
        start = time.perf_counter()
        x = x.cuda(non_blocking=True).to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y.cuda(non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return len(batches[0][0]) / median(times)


def stack_gpu(cfg, model, batches, warmup: int) -> float:
    """Images/s of our stack (bf16-mixed) over the same batches."""
    from .overhead import stack_side

    cfg = cfg.copy()
    cfg.trainer.precision, cfg.trainer.accelerator = "bf16-mixed", "gpu"
    steps = stack_side(
        cfg, model, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None), warmup
    )
    return len(batches[0][0]) / median(steps["interval"])


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    if not torch.cuda.is_available():
        payload = {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
        write_result("gpu", payload, out_dir)
        return payload
    rows = []
    for backbone in ("efficientnet_lite0", "resnet18"):
        size, batch = 224, 128
        cfg, model = build(
            backbone,
            size,
            10,
            False,
            "trainer.progress_bar=true",
            "trainer.limit_train_batches=25",
            "trainer.limit_val_batches=1",
        )
        model.cuda().to(memory_format=torch.channels_last)
        batches = fake_batches(5 if quick else 25, batch, size)
        compiled = torch.compile(model)
        rates = interleaved(
            {
                "stack": lambda: stack_gpu(cfg, model, batches, 5),
                "minimal": lambda: minimal_gpu(model, batches, 5),
                "minimal_compiled": lambda: minimal_gpu(model, batches, 5, compiled),
            },
            1 if quick else 5,
        )
        rows.append(
            {
                "backbone": cfg.backbone.name,
                "image_size": size,
                "batch_size": batch,
                "images_per_s": {k: round(median(v), 1) for k, v in rates.items()},
                "ratio_minimal_over_stack": round(median(rates["minimal"]) / median(rates["stack"]), 3),
            }
        )
    payload = {"rows": rows, "device": torch.cuda.get_device_name(0)}
    write_result("gpu", payload, out_dir)
    return payload
