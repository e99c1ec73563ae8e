"""Running the comparison: every (dataset, comparison, seed, tool) in turn, each tool's runner in a fresh
subprocess with its own python; peers.json after each run and the results README at the end."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..common import RESULTS, environment
from ..readme import render
from .budget import budget_of, budget_spec
from .definitions import COMPARISONS, DATASETS, PEERS, Dataset, Settings
from .results import save
from .specs import spec, weights
from .tables import SECTIONS
from .venvs import freeze, peer_python

RUNNERS = Path(__file__).resolve().parents[1] / "peer_runners"


def run_peer(name: str, run_spec: dict) -> dict:
    """One runner in a fresh subprocess with the shared thread settings; its result or its error."""
    threads = str(run_spec["threads"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cwd:
        peer_spec = {**run_spec, **dict(PEERS[name].options)}
        done = subprocess.run(
            [str(peer_python(name)), str(RUNNERS / PEERS[name].script), json.dumps(peer_spec)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
            check=False,
        )
    process_s = round(time.perf_counter() - started, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines or not lines[-1].startswith("{"):
        return {"tool": name, "error": (done.stderr or done.stdout).strip()[-2000:], "process_s": process_s}
    return {**json.loads(lines[-1]), "tool": name, "process_s": process_s}


def main(
    datasets: list[str],
    seeds: list[int] | None,
    peers: list[str],
    settings: Settings,
    out_dir: Path = RESULTS,
    max_minutes: float | None = None,
    compare: tuple[str, ...] = COMPARISONS,
) -> dict:
    """Run every (dataset, comparison, seed, peer) of ``plan``; write peers.json after each run and the table
    at the end."""
    path = out_dir / "peers.json"
    header = {
        "benchmark": "peers",
        "environment": environment(),
        "settings": asdict(settings),
        "weights": weights(),
        "peers": {
            n: {"requirements": list(PEERS[n].requirements), "how": PEERS[n].how, "freeze": freeze(n)} for n in peers
        },
    }
    payload = save(path, header)
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    for dataset, comparison, seed, order, name in plan([DATASETS[n] for n in datasets], seeds, peers, compare):
        if deadline and time.time() > deadline:
            print(f"== time is up: {dataset.name} {comparison} seed {seed} {name} not run", flush=True)
            continue
        run = measure(dataset, comparison, seed, name, settings, payload) | {"order": order}
        print(f"   {run.get('error', '').splitlines()[-1:] or run['val']} in {run.get('process_s')} s", flush=True)
        payload = save(path, header, run)
    (out_dir / "README.md").write_text(render(out_dir, SECTIONS) + "\n")
    return payload


def plan(
    datasets: list[Dataset], seeds: list[int] | None, peers: list[str], compare: tuple[str, ...]
) -> Iterator[tuple[Dataset, str, int, int, str]]:
    """(dataset, comparison, seed, order, tool) in the order they run: per dataset the epoch comparison, then
    the budget one (which sizes each tool's schedule from its runs in the first); the tools of the dataset's
    task, their order rotating from seed to seed."""
    for dataset in datasets:
        tools = [name for name in peers if dataset.task in PEERS[name].tasks]
        for comparison in compare if tools else ():
            for i, seed in enumerate(seeds if seeds is not None else dataset.seeds):
                for order, name in enumerate(tools[i % len(tools) :] + tools[: i % len(tools)]):
                    yield dataset, comparison, seed, order, name


def measure(dataset: Dataset, comparison: str, seed: int, name: str, settings: Settings, payload: dict) -> dict:
    """One run's record: what was asked (data, size, epochs; the budget) and the runner's result or error."""
    run_spec = spec(dataset, settings, seed, payload["weights"])
    run = {
        "dataset": dataset.name,
        "image_size": run_spec["image_size"],
        "seed": seed,
        "batch_size": run_spec["batch_size"],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        tool_spec = (
            run_spec
            if comparison == "epochs"
            else budget_spec(dataset, settings, seed, run_spec, name, payload["runs"])
        )
    except LookupError as error:
        return run | {
            "budget_s": budget_of(dataset, settings),
            "reference_epochs": run_spec["epochs"],
            "tool": name,
            "error": str(error),
        }
    budget = {k: tool_spec[k] for k in ("budget_s", "reference_epochs") if k in tool_spec}
    print(
        f"== {dataset.name} {run_spec['image_size']} px, {tool_spec['epochs']} epochs"
        + (f" (≤ {budget['budget_s']:.0f} s)" if budget else "")
        + f", seed {seed}: {name}",
        flush=True,
    )
    return run | {
        "epochs": tool_spec["epochs"],
        **budget,
        "load_average_at_start": round(os.getloadavg()[0], 2),
        **run_peer(name, tool_spec),
    }
