"""``finetune lr-find <overrides>``: a learning-rate range test on the phase that will train, written
to a run directory of its own."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from finetune.commands.args import compose_config, positive_int, print_error, tool_run_dir
from finetune.commands.tool import tool_main
from finetune.run.errors import FinetuneError

OPTIONS: dict[str, str | None] = {"phase": None, "min_lr": "1e-6", "max_lr": "1", "steps": "100"}
MIN_STEPS = 20  # Lightning's suggestion skips the first 10 points and the last one


def main(argv: Sequence[str] | None = None) -> int:
    """finetune lr-find: a learning-rate range test of one phase (Tuner.lr_find).

    finetune lr-find <training overrides> [phase=NAME|INDEX] [min_lr=1e-6]
                     [max_lr=1] [steps=100]

    Builds the run exactly as `finetune <training overrides>` would (same data,
    weights, head) and trains `steps` batches of one phase, raising its learning
    rate exponentially from min_lr to max_lr, on one device. The phase keeps its
    frozen stages, BatchNorm policy, optimizer and per-stage learning rates: the
    scanned value is the head's lr (the phase's base lr) and every backbone
    stage runs at its usual ratio to it (backbone_lr_mult, layer_decay).

    phase=   the phase to scan, by name or by index in schedule.phases (from 0);
             default: the first phase that trains backbone stages (the first
             phase if every phase trains the head alone)
    min_lr=, max_lr=, steps=   the scan (steps >= 20: the suggestion skips the
             first 10 points)

    Writes a new run directory, runs/<time>_lr-find_<dataset>_<backbone> (never
    an existing one): lr_find.png (loss against lr, suggested and configured lr
    marked) and lr_find.json (the suggestion, the phase, the config key that
    sets its lr, every lr and loss scanned), and prints the training command
    with the suggested lr. The suggestion is where the (smoothed) training loss
    falls fastest against log(lr); read the plot before you trust it. Nothing
    the scan trains is kept.
    """
    return tool_main(
        argv,
        main.__doc__,
        OPTIONS,
        "+classification=digits phase=0",
        "lr-find writes a new directory runs/<time>_lr-find_… under the current directory; run it from where "
        "runs/ should be",
        lambda own: (own, *scan_options(own)),
        lambda parsed, overrides: run(parsed[0], overrides, *parsed[1:]),
    )


def scan_options(own: dict[str, str | None]) -> tuple[float, float, int]:
    """``min_lr``, ``max_lr`` (0 < min < max) and ``steps`` (>= MIN_STEPS), or a FinetuneError."""
    try:
        min_lr, max_lr = float(own["min_lr"]), float(own["max_lr"])
    except ValueError:
        raise FinetuneError(f"min_lr={own['min_lr']}, max_lr={own['max_lr']}: use numbers such as 1e-6 and 1") from None
    if not 0 < min_lr < max_lr:
        raise FinetuneError(f"min_lr={own['min_lr']}, max_lr={own['max_lr']}: need 0 < min_lr < max_lr")
    steps = positive_int(own["steps"], "steps")
    if steps < MIN_STEPS:
        raise FinetuneError(
            f"steps={steps}: too few for a suggestion (it skips the first 10 points); "
            f"use steps>={MIN_STEPS} (default {OPTIONS['steps']})"
        )
    return min_lr, max_lr, steps


def run(own: dict[str, str | None], overrides: list[str], min_lr: float, max_lr: float, steps: int) -> int:
    """Check the phase, claim the run directory, scan, write, print; an exit code."""
    from finetune.commands.precheck import check_config
    from finetune.run.rundir import forget_claims, release_if_unused
    from finetune.run.schedule import phase_index
    from finetune.tasks.registry import get_task

    cfg = compose_config(overrides)
    forget_claims()
    run_dir = None
    try:
        if cfg.resume or cfg.plan:
            raise FinetuneError("lr-find builds a fresh run from the pretrained weights: drop resume= and plan=")
        phases = check_config(cfg)
        phase = None if own["phase"] is None else phase_index(phases, own["phase"])
        run_dir = Path(tool_run_dir("lr-find", cfg))
        from finetune.training.lr_find import find_lr, write_scan

        scan = find_lr(get_task(cfg.task), cfg, run_dir, phase, min_lr, max_lr, steps)
        command = ready_command(overrides, scan.lr_key, scan.suggestion)
        json_path, plot_path = write_scan(scan, run_dir, command)
    except (FinetuneError, OSError) as err:
        return print_error(err)
    finally:
        if run_dir is not None:
            release_if_unused(run_dir)  # refused before the scan wrote anything: no clutter
    print(
        f"lr-find: phase {scan.phase!r} (index {scan.phase_index}), {len(scan.lrs)} steps from {min_lr:g} to "
        f"{max_lr:g} in {scan.scan_seconds:.1f} s"
    )
    print(f"wrote {plot_path} and {json_path}")
    if scan.suggestion is None:
        return print_error(
            "the scan has too few finite losses for a suggestion (it diverged early or the data "
            "ran out): raise steps= or lower max_lr=, and read the plot"
        )
    print(
        f"suggested lr {scan.suggestion:.3g} for phase {scan.phase!r} (configured: {scan.config_lr:g}), "
        f"set with {scan.lr_key}={scan.suggestion:.3g}; train with:"
    )
    print(command)
    return 0


def ready_command(overrides: list[str], key: str, lr: float | None) -> str:
    """``finetune <overrides> <key>=<lr>``, any earlier value of ``key`` dropped; shell-quoted."""
    plain = key.lstrip("+")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") != plain]
    setting = [] if lr is None else [f"{key}={lr:.3g}"]
    return shlex.join(["finetune", *kept, *setting])
