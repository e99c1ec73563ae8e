"""The benchmark tables: a section per result file, ``run_all``'s benchmarks first, then the sections handed over
by the benchmarks run on their own (the peers package's ``SECTIONS``). ``make bench`` writes them to
benchmarks/results/README.md; ``make docs-pages`` (docs/gen_pages.py) renders them again from the same JSON
files into docs/results/benchmarks.md, and tests/unit/test_docs_drift.py fails while that page differs from them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from .common import environment


def _load(name: str, out_dir: Path) -> dict | None:
    path = out_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ok(value: float, target: float, higher: bool = False) -> str:
    return "✅" if (value >= target if higher else value <= target) else "❌"


def _header(*columns: str) -> list[str]:
    """A markdown table's header row and separator row."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def render(out_dir: Path, sections: Mapping[str, Callable[[dict], str]]) -> str:
    """The markdown summary of whatever result files exist in ``out_dir``; ``sections`` maps the name of a result
    file run_all does not write (``peers``) to its section."""
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run_all`). Every ratio is measured side by side "
        "in one process run: the sides alternate (interleaved repetitions) and the median is reported. "
        "Raw numbers, settings and per-repetition ratios are in the JSON files next to this one.",
        "",
    ]
    r = _load("overhead", out_dir)
    env = (r or {}).get("environment") or environment()
    lines += [
        f"Machine: `{env['machine']}`, {env['cpu_count']} CPU cores, torch {env['torch']} "
        f"({env['torch_threads']} threads), lightning {env['lightning']}, timm {env['timm']}; "
        f"GPU: {env['cuda'] or 'none'}; load average at start {env['load_average_at_start']} "
        f"(shared machine: other jobs were running), {env['date']}.",
        "",
    ]
    if r and "work_ms" in r["rows"][0]:
        lines += [
            "## 1. Overhead: our stack vs a minimal PyTorch loop (target ≤ 1.05)",
            "",
            "Step = interval between batch starts (warm-up excluded). *Work* = the model's forward + "
            "backward + optimizer step, timed inside every step on both sides; *loop overhead* = step - work. "
            "*Ratio* = (work + stack overhead) / (work + minimal overhead): measured within each step, it "
            "survives the load of the shared machine; *raw ratio* = median over interleaved repetitions of "
            "stack step / minimal step (noisy here).",
            "",
            *_header(
                "backbone",
                "px",
                "freeze",
                "batch",
                "work ms",
                "stack ms/step",
                "minimal ms/step",
                "stack overhead ms",
                "minimal overhead ms",
                "raw ratio",
                "ratio",
                "",
            ),
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['backbone']} | {row['image_size']} | {row['freeze']} | {row['batch_size']} | "
                f"{row['work_ms']} | {row['stack_step_ms']} | {row['minimal_step_ms']} | "
                f"{row['stack_overhead_ms']} | {row['minimal_overhead_ms']} | {row['raw_ratio']:.2f} | "
                f"{row['ratio']:.3f} | {_ok(row['ratio'], r['target_ratio'])} |"
            )
        a = r["ablation"]
        lines += [
            "",
            f"Where the overhead goes ({a['backbone']}, {a['image_size']} px, freeze={a['freeze']}, "
            f"batch {a['batch_size']}: the smallest step, so the stack's fixed cost shows most; "
            f"work {a['work_ms']} ms/step):",
            "",
            *_header("variant", "loop overhead ms/step", "ratio vs minimal", "raw ratio"),
        ]
        for k, v in a["sides"].items():
            lines.append(f"| {k} | {v['loop_overhead_ms']} | {v['ratio']:.3f} | {v['raw_ratio']:.2f} |")
        if r.get("profile"):
            lines += ["", f"cProfile of one fit: [{r['profile']}]({r['profile']})."]
        floor = min(v["loop_overhead_ms"] for k, v in a["sides"].items() if k != "minimal")
        lines += [
            "",
            f"Why some ratios exceed the target: with progress bar, step logging or train metrics "
            f"removed, the stack still spends {floor} ms per step in Lightning's own loop (hooks, "
            "optimizer closure, result collection; see the profile). That is within 5% for every "
            "step that trains the backbone, and above it only for freeze=all steps of a few ms of "
            "work on tiny inputs, which head-only phases do not run: they train on cached "
            "features (section 2). Train metrics were cut to accuracy alone (they were the "
            "largest removable part).",
        ]
        lines.append("")
    r = _load("frozen", out_dir)
    if r:
        c = r["cache"]
        lines += [
            "## 2. Frozen phases",
            "",
            f"Linear probe on {c['dataset']} at {c['image_size']} px ({c['backbone']}, batch {c['batch_size']}, "
            f"{c['batches_per_epoch']} batches/epoch), our stack:",
            "",
            *_header(
                "live backbone ms/step",
                "cached features ms/step",
                "epoch speed-up (median of paired reps; target ≥ 10)",
                "ratio of medians",
                "one-time extraction s",
                "speed-up over a whole probe incl. extraction",
            ),
            f"| {c['live_step_ms']} | {c['cached_step_ms']} | {c['epoch_speedup']} "
            f"{_ok(c['epoch_speedup'], c['target_epoch_speedup'], True)} | "
            f"{c['live_step_ms'] / c['cached_step_ms']:.1f} | {c['extraction_s']} | "
            f"{c['probe_speedup_incl_extraction']}x over {c['probe_epochs']} epochs |",
            "",
        ]
        for curve in r["curves"]:
            depths = list(curve["step_ms"])
            lines += [
                f"freeze=k step time relative to freeze=0 ({curve['backbone']}, {curve['image_size']} px, "
                f"batch {curve['batch_size']}):",
                "",
                *_header("freeze", *depths),
                "| ms/step | " + " | ".join(str(curve["step_ms"][d]) for d in depths) + " |",
                "| ratio | " + " | ".join(f"{curve['ratio_vs_freeze0'][d]:.2f}" for d in depths) + " |",
                "",
            ]
    r = _load("memory", out_dir)
    if r:
        lines += [
            "## 3. Memory and time of a training step: freeze depths and adapters",
            "",
            "Peak RSS growth over one training step and the median ms/step, a fresh process per setting, "
            "settings interleaved over repetitions (medians). `lora` / `bitfit`: `backbone.freeze=0` with "
            "`backbone.adapter` (every stage runs backward; only the adapter's parameters get gradients "
            "and AdamW state).",
            "",
            *_header(
                "backbone",
                "px",
                "batch",
                "setting",
                "RSS growth MB",
                "vs freeze=0",
                "ms/step",
                "vs freeze=0",
                "peak RSS MB",
                "trainable params",
            ),
        ]
        for s in r["settings"]:
            for d, row in s["by_freeze"].items():
                lines.append(
                    f"| {s['backbone']} | {s['image_size']} | {s['batch_size']} | {d} | {row['growth_mb']} | "
                    f"{row['growth_vs_freeze0']:.2f} | {row['step_ms']} | {row['step_vs_freeze0']:.2f} | "
                    f"{row['rss_peak_mb']} | {row['trainable_params']:,} |"
                )
        lines.append("")
    r = _load("pipeline", out_dir)
    if r:
        lines += [
            "## 4. Data pipeline vs model (target pipeline ≥ 2x model)",
            "",
            *_header("px", "loader", "pipeline img/s", "model train img/s", "ratio", "other worker counts img/s"),
        ]
        for row in r["rows"]:
            ld = row["loader"]
            key = f"pipeline_w{ld['num_workers']}"
            others = ", ".join(
                f"{k.removeprefix('pipeline_')}: {v}"
                for k, v in row["images_per_s"].items()
                if k.startswith("pipeline") and k != key
            )
            lines.append(
                f"| {row['image_size']} | {ld['num_workers']} workers, persistent={ld['persistent_workers']}, "
                f"pin_memory={ld['pin_memory']} | {row['images_per_s'][key]} | {row['images_per_s']['model']} | "
                f"{row['ratio_pipeline_over_model']} "
                f"{_ok(row['ratio_pipeline_over_model'], row['target_ratio'], True)} | "
                f"{others} |"
            )
        lines += ["", f"Defaults: {r['defaults']}.", ""]
    r = _load("accuracy", out_dir)
    if r:
        lines += [
            f"## 5. Accuracy per minute ({r['backbone']})",
            "",
            *_header("dataset", "schedule", "wall s", "best val acc", "test acc", "val acc over time (s: acc)"),
        ]
        for row in r["rows"]:
            curve = ", ".join(f"{p['t_s']:.0f}: {p['val_acc']:.3f}" for p in row["curve"])
            lines.append(
                f"| {row['dataset']} | {row['schedule']} | {row['wall_s']} | {row['best_val_acc']} | "
                f"{row['test_acc']} | {curve} |"
            )
        lines += ["", *[f"- {n}" for n in r.get("notes", [])], ""]
    r = _load("gpu", out_dir)
    if r:
        lines += ["## 6. GPU", ""]
        if "skipped" in r:
            lines += [
                f"Skipped: {r['skipped']}. `benchmarks/gpu.py` runs it where CUDA exists (bf16 autocast, "
                "channels_last, torch.compile; images/s of our stack vs the minimal loop).",
                "",
            ]
        else:
            lines += _header("backbone", "px", "batch", "stack img/s", "minimal img/s", "compiled img/s")
            for row in r["rows"]:
                ips = row["images_per_s"]
                lines.append(
                    f"| {row['backbone']} | {row['image_size']} | {row['batch_size']} | {ips['stack']} | "
                    f"{ips['minimal']} | {ips['minimal_compiled']} |"
                )
            lines.append("")
    r = _load("advise", out_dir)
    if r:
        lines += [
            "## 7. `finetune advise`: linear probes by stage instead of candidate trainings",
            "",
            "One fresh `python -m finetune advise …` process (imports included): train + val once through "
            "the frozen pretrained backbone, a logistic regression per stage. One training epoch costs about "
            "3x a forward pass over the train split (forward + backward), so advise costs about a third of one "
            "epoch plus the probes; each candidate run it replaces trains several epochs.",
            "",
            *_header(
                "dataset",
                "px",
                "train / val",
                "wall s (target)",
                "build / features / probes s",
                "val acc by stage",
                "peak, domain, size",
                "recommendation",
            ),
        ]
        for row in r["rows"]:
            t = row["seconds"]
            curve = ", ".join(f"{s['acc']:.3f}" for s in row["stages"])
            settings = " ".join(f"{k}={'null' if v is None else v}" for k, v in row["settings"].items())
            lines.append(
                f"| {row['dataset']} | {row['image_size']} | {row['train']} / {row['val']} | {row['wall_s']} "
                f"({row['target_s']}) {_ok(row['wall_s'], row['target_s'])} | {t['build']} / {t['features']} / "
                f"{t['probes']} | {curve} | stage{row['peak']}, {row['domain']}, {row['size']} | "
                f"rule {row['rule']}: `{settings}` |"
            )
        lines += [*(f"- skipped {name}: its data is not in ../shared/data" for name in r.get("skipped", [])), ""]
    for name, section in sections.items():
        r = _load(name, out_dir)
        if r:
            lines += [section(r), ""]
    r = _load("search", out_dir)
    if r:
        lines += _search_section(r)
    timing = _load("run_all", out_dir)
    if timing:
        lines += [
            f"`make bench` took {timing['total_s'] / 60:.1f} min "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in timing['seconds'].items())}).",
            "",
        ]
    return "\n".join(lines)


def _search_section(r: dict) -> list[str]:
    """Section 9 (after the peers' 8): today's 8-trial search vs 16 trials on 2 workers sharing one study,
    median pruning on."""
    lines = [
        "## 9. Search: today's 8-trial search vs 16 trials on 2 workers sharing a study, pruning on",
        "",
        *_header(
            "dataset",
            "side",
            "workers",
            "trials complete / pruned / failed",
            "epochs trained",
            "best val (trial)",
            "its test acc",
            "wall s",
            "wall new / today",
            "load average before → after",
        ),
    ]
    for name, row in r["rows"].items():
        for side in ("today", "new"):
            s = row[side]
            t, best = s["trials"], s["best_val"]
            ratio = f"{row['ratio_wall_new_over_today']:.2f}" if side == "new" else ""
            lines.append(
                f"| {name} | {side} ({s['n_trials']} trials, pruner {s['pruner']}) | {s['workers']} | "
                f"{t['complete']} / {t['pruned']} / {t['failed']} | {s['epochs_trained']} | "
                f"{best['monitor']} {best['value']:.4f} ({best['trial']}) | {s['test_of_best'].get('acc', '')} | "
                f"{s['wall_s']} | {ratio} | {s['load_average_before_after'][0][0]} → "
                f"{s['load_average_before_after'][1][0]} |"
            )
    lines += ["", *(f"- {name}: {row['variant']}" for name, row in r["rows"].items())]
    return [*lines, *(f"- {n}" for n in r.get("notes", [])), ""]
