"""peers.json: which runs are compared with each other, which one a rerun replaces, and merging each run in
under a file lock."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


def group(run: dict) -> tuple:
    """Runs compared with each other: same data, image size, schedule (its epochs) and budget (0: the epoch
    comparison; a budget run's epochs are its own fit of the schedule)."""
    epochs = run["reference_epochs"] if "reference_epochs" in run else run["epochs"]
    return run["dataset"], run["image_size"], epochs, run.get("budget_s", 0)


def key(run: dict) -> tuple:
    """One run of one tool: a rerun replaces it."""
    return *group(run), run["seed"], run["tool"]


def save(path: Path, header: dict, run: dict | None = None) -> dict:
    """Merge this invocation's header and one run into ``path`` under a file lock, atomically: invocations
    running side by side (other datasets) keep each other's runs; a run replaces one with the same key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        payload = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        payload.update({k: v for k, v in header.items() if k != "peers"})
        payload.setdefault("peers", {}).update(header["peers"])
        if run is not None:
            payload["runs"] = [r for r in payload["runs"] if key(r) != key(run)] + [run]
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(partial, path)
    return payload
