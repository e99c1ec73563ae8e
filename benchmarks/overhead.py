"""1. Overhead of our training stack vs a minimal hand-written PyTorch loop.

Our side: ``finetune.training.phases.make_trainer`` (loggers, LR monitor, rich progress bar, checkpoint
callback) + ``ClassificationTask`` (loss, train metrics, ``self.log`` every step). Minimal side:
``for x, y in loader: loss = ce(model(x), y); zero_grad; backward; step`` with the same model
(``FineTuneModel`` with the same frozen stages), the same pre-made batches (one DataLoader over a
list of tensors) and the same AdamW param groups. Step time = interval between consecutive batch
starts (so logging / progress-bar work after a step is counted), warm-up steps excluded. Inside each
step the model's own work (forward, backward, optimizer step) is timed too, so the loop's cost per
step (interval - work) is measured where it happens; see ``WorkClock``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import DataLoader

from finetune.models.freezing import frozen_stages, param_groups, stage_learning_rates
from finetune.run.schedule import PhaseOptim
from finetune.tasks.classification.module import ClassificationTask
from finetune.training.phases import make_trainer

from .common import RESULTS, build, fake_batches, interleaved, median, write_result


class WorkClock:
    """Times the model's own work inside every training step: forward, backward, optimizer step.

    ``interval - work`` is the loop's own cost per step (data fetch, hooks, metrics, logging,
    progress bar). Measured within the same step, it is insensitive to the machine's load, which
    scales the model's work and the loop's cost alike: the differential ratio
    ``(work + stack overhead) / (work + minimal overhead)`` stays stable where raw step times of a
    shared 2-core machine swing by 2-10x between repetitions.
    """

    def __init__(self, model) -> None:
        self.work: list[float] = []
        self.active = False
        self._t = 0.0
        self._opt_start: float | None = None
        self._inner: list[float] = []  # first forward / last backward inside an optimizer step (closure)
        self._handles = [
            model.register_forward_pre_hook(lambda *a: self.begin()),
            model.register_forward_hook(lambda *a: self.end()),
            register_optimizer_step_pre_hook(lambda *a: self.optimizer_begin()),
            register_optimizer_step_post_hook(lambda *a: self.optimizer_end()),
        ]

    def new_step(self) -> None:
        self.work.append(0.0)
        self.active = True

    def begin(self) -> None:
        self._t = time.perf_counter()
        if self._opt_start is not None and not self._inner:
            self._inner.append(self._t)

    def end(self) -> None:
        now = time.perf_counter()
        if self.active and self.work:
            self.work[-1] += now - self._t
        if self._opt_start is not None:
            self._inner[1:] = [now]

    def optimizer_begin(self) -> None:
        self._opt_start, self._inner = time.perf_counter(), []

    def optimizer_end(self) -> None:
        """The update itself: Lightning runs forward + backward in a closure inside ``step``; that span
        is already counted, so it is taken out."""
        span = time.perf_counter() - self._opt_start
        if len(self._inner) == 2:
            span -= self._inner[1] - self._inner[0]
        if self.active and self.work:
            self.work[-1] += span
        self._opt_start = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class StepTimer(L.Callback):
    """perf_counter at every train batch start (and the end of the last one); optional WorkClock."""

    def __init__(self, clock: WorkClock | None = None) -> None:
        self.starts: list[float] = []
        self.last_end = 0.0
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())
        if self.clock:
            self.clock.new_step()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.clock:
            self.clock.begin()

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.clock:
            self.clock.end()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last_end = time.perf_counter()
        if self.clock:
            self.clock.active = False


def step_intervals(starts: list[float], last_end: float, warmup: int) -> list[float]:
    marks = [*starts, last_end]
    return [b - a for a, b in zip(marks[:-1], marks[1:])][warmup:]


class NoStepLogTask(ClassificationTask):
    """Ablation: train loss logged per epoch only (no per-step log / progress-bar value)."""

    def training_step(self, batch, batch_idx):
        loss, logits, targets = self._step(batch)
        self.train_metrics.update(logits, targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss


class NoMetricsTask(ClassificationTask):
    """Ablation: no torchmetrics update in the training step (loss logging kept)."""

    def training_step(self, batch, batch_idx):
        loss, logits, targets = self._step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

    def on_train_epoch_end(self) -> None:
        pass


class PerStepRichProgressBar(RichProgressBar):
    """Lightning's bar as we used it before: redraws and reads the metrics every batch."""

    def __init__(self, every: int = 1, phase: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)  # make_trainer's every / phase: the old bar had neither


def stack_side(
    cfg, model, loader, val_loader, warmup: int, task_cls=ClassificationTask, progress_bar_cls=None, **trainer_overrides
) -> dict:
    """Per-step (interval, work) seconds of one ``trainer.fit`` of our stack over ``loader``."""
    import finetune.training.phases as phases

    cfg = cfg.copy()
    for k, v in trainer_overrides.items():
        cfg.trainer[k] = v
    clock = WorkClock(model)
    timer = StepTimer(clock)
    original_bar = phases.ThrottledRichProgressBar
    if progress_bar_cls:
        phases.ThrottledRichProgressBar = progress_bar_cls
    try:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = phases.best_checkpoint(Path(tmp), "val/acc")
            trainer = make_trainer(cfg, Path(tmp), "bench", 1, [timer, checkpoint])
            task = task_cls(model, 10, False, PhaseOptim())
            trainer.fit(task, train_dataloaders=loader, val_dataloaders=val_loader)
    finally:
        phases.ThrottledRichProgressBar = original_bar
        clock.close()
    return {"interval": step_intervals(timer.starts, timer.last_end, warmup), "work": clock.work[warmup:]}


def minimal_loop(model, loader, warmup: int) -> dict:
    """Per-step (interval, work) seconds of a plain PyTorch loop over the same batches."""
    optimizer = torch.optim.AdamW(param_groups(model, stage_learning_rates(model, 1e-3, 0.1), 0.01))
    model.train()
    clock = WorkClock(model)
    starts = []
    try:
        for x, y in loader:
            starts.append(time.perf_counter())
            clock.new_step()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            clock.begin()
            loss.backward()
            clock.end()
            optimizer.step()
            clock.active = False
    finally:
        clock.close()
    return {"interval": step_intervals(starts, time.perf_counter(), warmup), "work": clock.work[warmup:]}


def minimal_side(model, loader, warmup: int) -> float:
    """Median step time (s) of the plain loop (used by the other benchmarks)."""
    return median(minimal_loop(model, loader, warmup)["interval"])


def summarize(runs: dict[str, list[dict]], base: str = "minimal") -> dict:
    """Raw and differential step-time ratios of every side vs ``base``."""
    work = median([w for rs in runs.values() for r in rs for w in r["work"]])
    out = {"work_ms": round(1e3 * work, 2), "sides": {}}
    base_oh = median([i - w for r in runs[base] for i, w in zip(r["interval"], r["work"])])
    base_raw = [median(r["interval"]) for r in runs[base]]
    for name, rs in runs.items():
        oh = median([i - w for r in rs for i, w in zip(r["interval"], r["work"])])
        raw = [median(r["interval"]) for r in rs]
        out["sides"][name] = {
            "step_ms": round(1e3 * median(raw), 2),
            "loop_overhead_ms": round(1e3 * oh, 2),
            "raw_ratio": round(median([a / b for a, b in zip(raw, base_raw)]), 3),
            "ratio": round((work + oh) / (work + base_oh), 4),
        }
    return out


def _setup(backbone: str, image_size: int, freeze, batch_size: int, steps: int, warmup: int):
    cfg, model = build(
        backbone,
        image_size,
        10,
        False,
        "trainer.progress_bar=true",
        f"trainer.limit_train_batches={warmup + steps}",
        "trainer.limit_val_batches=1",
        "trainer.accelerator=cpu",
    )
    model.set_frozen(frozen_stages(model.stage_map, freeze), "frozen")
    batches = fake_batches(warmup + steps, batch_size, image_size)
    loader = DataLoader(batches, batch_size=None)
    val_loader = DataLoader(batches[:1], batch_size=None)
    return cfg, model, loader, val_loader


def measure(
    backbone: str = "efficientnet_lite0",
    image_size: int = 64,
    freeze="0",
    batch_size: int = 16,
    steps: int = 8,
    warmup: int = 3,
    repeats: int = 5,
) -> dict:
    """Our stack vs the minimal loop for one setting: step times, loop overheads and their ratio."""
    cfg, model, loader, val_loader = _setup(backbone, image_size, freeze, batch_size, steps, warmup)
    runs = interleaved(
        {
            "stack": lambda: stack_side(cfg, model, loader, val_loader, warmup),
            "minimal": lambda: minimal_loop(model, loader, warmup),
        },
        repeats,
    )
    summary = summarize(runs)
    st, mi = summary["sides"]["stack"], summary["sides"]["minimal"]
    return {
        "backbone": cfg.backbone.name,
        "image_size": image_size,
        "freeze": str(freeze),
        "batch_size": batch_size,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
        "work_ms": summary["work_ms"],
        "stack_step_ms": st["step_ms"],
        "minimal_step_ms": mi["step_ms"],
        "stack_overhead_ms": st["loop_overhead_ms"],
        "minimal_overhead_ms": mi["loop_overhead_ms"],
        "raw_ratio": st["raw_ratio"],
        "ratio": st["ratio"],
    }


def ablation(
    backbone: str = "efficientnet_lite0",
    image_size: int = 64,
    freeze="all",
    batch_size: int = 16,
    steps: int = 8,
    warmup: int = 3,
    repeats: int = 5,
) -> dict:
    """Which part of the stack costs: the stack with one piece removed (or fixed) at a time."""
    cfg, model, loader, val_loader = _setup(backbone, image_size, freeze, batch_size, steps, warmup)
    sides = {
        "stack": lambda: stack_side(cfg, model, loader, val_loader, warmup),
        "no_progress_bar": lambda: stack_side(cfg, model, loader, val_loader, warmup, progress_bar=False),
        "progress_bar_every_step (before the fix)": lambda: stack_side(
            cfg, model, loader, val_loader, warmup, progress_bar_cls=PerStepRichProgressBar
        ),
        "no_step_logging": lambda: stack_side(
            cfg, model, loader, val_loader, warmup, NoStepLogTask, log_every_n_steps=10_000
        ),
        "no_train_metrics": lambda: stack_side(cfg, model, loader, val_loader, warmup, NoMetricsTask),
        "minimal": lambda: minimal_loop(model, loader, warmup),
    }
    summary = summarize(interleaved(sides, repeats))
    return {
        "backbone": cfg.backbone.name,
        "image_size": image_size,
        "freeze": str(freeze),
        "batch_size": batch_size,
        "repeats": repeats,
        "steps_timed": steps,
        **summary,
    }


def profile_text(
    backbone: str = "efficientnet_lite0",
    image_size: int = 64,
    freeze="all",
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 3,
    top: int = 30,
) -> str:
    """cProfile of one fit of our stack (tottime order, top functions) as small text."""
    cfg, model, loader, val_loader = _setup(backbone, image_size, freeze, batch_size, steps, warmup)
    stack_side(cfg, model, loader, val_loader, warmup)  # warm
    profiler = cProfile.Profile()
    profiler.enable()
    stack_side(cfg, model, loader, val_loader, warmup)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    out.write("\n--- cumulative ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    text = out.getvalue()
    return "\n".join(
        line.replace(str(Path(torch.__file__).parents[1]), "<site-packages>") for line in text.splitlines()
    )


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    settings = [(b, s, f) for b in ("efficientnet_lite0", "resnet18") for s in (64, 128) for f in ("0", "all")]
    kw = dict(steps=2, warmup=1, repeats=1, batch_size=4) if quick else dict(steps=4, warmup=1, repeats=5, batch_size=4)
    if quick:
        settings = settings[:1]
    rows = [measure(b, s, f, **kw) for b, s, f in settings]
    abl = (
        ablation(steps=2, warmup=1, repeats=1, batch_size=4)
        if quick
        else ablation(steps=8, warmup=1, repeats=5, batch_size=8)
    )
    if not quick:
        (out_dir / "overhead_profile.txt").write_text(profile_text())
    payload = {
        "target_ratio": 1.05,
        "rows": rows,
        "ablation": abl,
        "profile": None if quick else "overhead_profile.txt",
    }
    write_result("overhead", payload, out_dir)
    return payload


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=1))
