"""The peers section of benchmarks/results/README.md: one table per task and comparison, how each tool ran, and
what is not measured yet."""

from __future__ import annotations

import statistics

from .definitions import ARCH, DATASETS, PEERS
from .results import group


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _value_at(run: dict, seconds: float, key: str) -> float | None:
    """The validation metric ``key`` of the last epoch a run finished within ``seconds``."""
    done = [p[key] for p in run["curve"] if p["t_s"] <= seconds + 1e-9]
    return done[-1] if done else None


# The columns of each task's table: (headline metric, second test metric) fill the placeholders.
HEADLINES = {"acc": ("acc", "AUC", "auc"), "miou": ("mIoU", "mean Dice", "mdice")}
COLUMNS = (
    "dataset",
    "px",
    "schedule",
    "tool",
    "seeds",
    "epochs",
    "val {0} (final)",
    "best val {0} (any epoch)",
    "test {0}",
    "test {1}",
    "wall s",
    "s / epoch",
    "val {0} at the fastest tool's wall time",
)


BUDGET_COLUMNS = (
    "dataset",
    "px",
    "schedule",
    "budget s",
    "tool",
    "seeds",
    "epochs run",
    "wall s",
    "val {0} (final)",
    "test {0}",
    "test {1}",
)


def columns(metric: str, budget: bool = False) -> list[str]:
    """The table header of one task, classification (``acc``) or segmentation (``miou``), for the epoch
    comparison or the budget one."""
    title, second, _ = HEADLINES[metric]
    return [c.format(title, second) for c in (BUDGET_COLUMNS if budget else COLUMNS)]


def markdown(payload: dict) -> str:
    """The peers section of benchmarks/results/README.md (and the main README)."""
    s, env, w = payload["settings"], payload["environment"], payload["weights"]
    ok = [r for r in payload["runs"] if "error" not in r]
    batches = {r["dataset"]: r.get("batch_size", 32) for r in ok}  # runs before batch_size was recorded: 32
    loads = [r["load_average_at_start"] for r in ok if "load_average_at_start" in r]
    lines = [
        "## 8. finetune vs the tools users would pick instead (`make bench-peers`)",
        "",
        (
            f"Same machine ({env['cpu_count']} CPU cores, shared with other jobs"
            + (f"; 1-min load average at the start of the runs {min(loads)}–{max(loads)}" if loads else "")
            + "), one tool at a time per invocation, interleaved (the order rotates per seed). Every tool: "
            f"`{ARCH}` with the same ImageNet weights file (sha256 {w['sha256'][:12]}…, from finetune's offline "
            f"resolver: {w['source']}), the same splits, image size, epochs, the batch size of finetune's recipe ("
            + ", ".join(f"{d} {b}" for d, b in sorted(batches.items()))
            + "), "
            f"{s['threads']} torch thread(s) (OMP_NUM_THREADS={s['threads']}) and {s['workers']} loader workers, "
            "CPU. *Schedule*: *recipe* = finetune's recipe with its phases, the other tools the same number of "
            "epochs; `--epochs N`: finetune runs one phase of N epochs at its recipe's last freeze depth, with the "
            "recipe's other settings. "
            "*Wall s*: from the runner's start (after imports) to its last metric, data loading and model "
            "building included (finetune's also its test pass and the files a run writes). *Val … at the "
            "fastest tool's wall time*: per seed, each tool's validation metric after the last epoch it had "
            "finished when the fastest tool of that seed finished (read off its curve, not a separate run with "
            "a shorter schedule)."
        ),
    ]
    groups = sorted(set(map(group, ok)))
    for budget in (False, True):
        if budget and any(g[3] for g in groups):
            lines += [
                "",
                "**At an equal wall-clock budget** (`--compare budget`): every tool runs the same schedule "
                "as above with as many epochs as fit in the budget, sized from its own pace in the runs above "
                "(wall(E) = its wall s + s per epoch of the curve's later half × (E − the schedule's epochs), "
                "means over seeds; never more epochs than the schedule, at least one; finetune shortens the "
                "phases that follow `schedule.epochs`). Each tool's own schedule (one-cycle, cosine, linear "
                "decay) then runs to its end, as a user who sized their epochs to the minutes would; *wall s* "
                "is measured, marked *(over)* where a tool's minimum ran past the budget by more than 5 %.",
            ]
        for metric in HEADLINES:
            mine = [g for g in groups if _metric(g[0]) == metric and bool(g[3]) == budget]
            if mine:
                header = columns(metric, budget)
                lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += [
                    row
                    for g in mine
                    for row in (
                        _budget_rows(ok, g, metric) if budget else _rows([r for r in ok if group(r) == g], metric)
                    )
                ]
    lines += [
        "",
        (
            "Mean ± sample standard deviation over the seeds listed. How each tool was run and its versions "
            "(every package of each peer venv: `pip freeze` in peers.json):"
        ),
        "",
        "| tool | how | versions |",
        "|---|---|---|",
    ]
    for tool in payload["peers"]:
        seen = next((r["versions"] for r in ok if r["tool"] == tool), {})
        versions = ", ".join(f"{k} {v}" for k, v in seen.items()) or "not run"
        lines.append(f"| {tool} | {PEERS[tool].how} | {versions} |")
    lines += [
        "",
        *[
            f"- {dataset}: {note}"
            for dataset, d in DATASETS.items()
            for note in d.notes
            if any(r["dataset"] == dataset for r in ok)
        ],
    ]
    failed = [r for r in payload["runs"] if "error" in r]
    lines += [f"- failed: {r['dataset']} seed {r['seed']} {r['tool']}: {r['error'].splitlines()[-1]}" for r in failed]
    lines += [f"- not measured: {note}" for note in missing(payload["runs"])]
    return "\n".join(lines)


def _metric(dataset: str) -> str:
    return DATASETS[dataset].metric if dataset in DATASETS else "acc"


def _rows(runs: list[dict], metric: str) -> list[str]:
    """One table row per tool of one group of runs (same data, size, epochs)."""
    dataset, px, epochs, _ = group(runs[0])
    key = f"val_{metric}"
    fastest = {seed: min(r["wall_s"] for r in runs if r["seed"] == seed) for seed in {r["seed"] for r in runs}}
    rows = []
    for tool, mine in _by_tool(runs):
        at_fastest = [a for r in mine if (a := _value_at(r, fastest[r["seed"]], key)) is not None]
        rows.append(
            f"| {dataset} | {px} | {schedule(runs)} | {tool} | {_seeds(mine)} | {epochs} | "
            f"{_mean_sd([r['val'][metric] for r in mine])} | "
            f"{_mean_sd([max(p[key] for p in r['curve']) for r in mine])} | "
            f"{_test_cells(mine, metric)} | {statistics.mean(r['wall_s'] for r in mine):.0f} | "
            f"{statistics.mean(r['wall_s'] / r['epochs_run'] for r in mine):.1f} | "
            f"{_mean_sd(at_fastest) if len(at_fastest) == len(mine) else 'no epoch done'} "
            f"({statistics.mean(fastest[r['seed']] for r in mine):.0f} s) |"
        )
    return rows


def _budget_rows(ok: list[dict], budget_group: tuple, metric: str) -> list[str]:
    """One table row per tool of one budget group: its fitted epochs, measured wall time and scores."""
    dataset, px, epochs, budget_s = budget_group
    label = schedule([r for r in ok if group(r) == (dataset, px, epochs, 0)])
    rows = []
    for tool, mine in _by_tool([r for r in ok if group(r) == budget_group]):
        over = " (over)" if max(r["wall_s"] for r in mine) > 1.05 * budget_s else ""
        rows.append(
            f"| {dataset} | {px} | {label} | {budget_s:.0f} | {tool} | {_seeds(mine)} | "
            f"{'/'.join(sorted({str(r['epochs']) for r in mine}))} of {epochs} | "
            f"{statistics.mean(r['wall_s'] for r in mine):.0f}{over} | {_mean_sd([r['val'][metric] for r in mine])} | "
            f"{_test_cells(mine, metric)} |"
        )
    return rows


def _by_tool(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """(tool, its runs by seed) in ``PEERS`` order, for the tools that ran."""
    return [
        (tool, sorted(mine, key=lambda r: r["seed"]))
        for tool in PEERS
        if (mine := [r for r in runs if r["tool"] == tool])
    ]


def _seeds(runs: list[dict]) -> str:
    return ",".join(str(r["seed"]) for r in runs)


def _test_cells(runs: list[dict], metric: str) -> str:
    """The two test columns: the headline metric and the second one (AUC; mean Dice), mean ± sd over seeds."""
    second = HEADLINES[metric][2]
    test = [r["test"] for r in runs if r.get("test")]
    return f"{_mean_sd([t[metric] for t in test])} | {_mean_sd([t[second] for t in test if t.get(second)])}"


def schedule(runs: list[dict]) -> str:
    """ "recipe" (with the dataset's own changes to it) or "`--epochs N`", as the group's finetune runs show;
    "?" without one."""
    overrides = next((r["overrides"] for r in runs if r["tool"] == "finetune"), None)
    if overrides is None:
        return "?"
    if any(o.startswith("schedule.phases=") for o in overrides):
        return f"`--epochs {runs[0]['epochs']}`"
    changed = [o for o in overrides if o.startswith("schedule.") and o in DATASETS[runs[0]["dataset"]].recipe]
    return "recipe" + "".join(f", `{o}`" for o in changed)


def missing(runs: list[dict]) -> list[str]:
    """Each dataset's default seeds (its own size, the recipe schedule; its own budget) and every peer of its
    task no successful run covers, in the epoch comparison and the budget one."""
    ok = [r for r in runs if "error" not in r]
    recipe_groups = {
        g for g in set(map(group, ok)) if schedule([r for r in ok if group(r) == g[:3] + (0,)]).startswith("recipe")
    }
    done = {
        (r["dataset"], r["tool"], r["seed"], r.get("budget_s", 0))
        for r in ok
        if group(r) in recipe_groups and r["image_size"] == DATASETS[r["dataset"]].image_size
    }
    notes = []
    for name, dataset in DATASETS.items():
        for budget, what in (
            (0, "finetune's recipe schedule"),
            (dataset.budget_s, f"a {dataset.budget_s:.0f} s budget"),
        ):
            gaps = {
                tool: [s for s in dataset.seeds if (name, tool, s, budget) not in done]
                for tool, peer in PEERS.items()
                if dataset.task in peer.tasks
            }
            if all(len(seeds) == len(dataset.seeds) for seeds in gaps.values()):
                notes.append(f"{name} ({dataset.image_size} px, {what}): no tool")
            else:
                notes += [
                    f"{name} ({what}): {tool} seed {', '.join(map(str, seeds))}"
                    for tool, seeds in gaps.items()
                    if seeds
                ]
    return notes


# What this package hands the results README (``benchmarks/readme.py``): a result file's name and its section.
SECTIONS = {"peers": markdown}
