"""7. ``finetune advise``: wall time of the per-stage linear probes (frozen pretrained backbone, train
and val once through it, one logistic regression per stage) on hymenoptera at 160 px and BloodMNIST
at 64 px, as a user runs it: ``python -m finetune advise …`` in a fresh process (imports included).

Targets on a 2-core CPU: 3 min (hymenoptera), 6 min (BloodMNIST). The recommendation and the timings
of its parts come from the run's advice.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import HYMENOPTERA, MEDMNIST, REPO, RESULTS, write_result

CASES = {  # name -> (the data it needs, image size, overrides, target seconds)
    "hymenoptera": (
        HYMENOPTERA,
        160,
        ["+classification=hymenoptera", f"dataset.root={HYMENOPTERA}", "dataset.image_size=160"],
        180,
    ),
    "bloodmnist": (
        MEDMNIST / "bloodmnist.npz",
        64,
        ["dataset=medmnist", "dataset.name=bloodmnist", f"dataset.root={MEDMNIST}", "dataset.image_size=64"],
        360,
    ),
}
QUICK = {
    "digits": (
        REPO,
        32,
        ["+classification=digits", "backbone.name=resnet10t", "backbone.pretrained=false", "dataset.image_size=32"],
        60,
    )
}  # digits ship with scikit-learn


def measure(name: str, image_size: int, overrides: list[str], target_s: float) -> dict:
    """One ``finetune advise`` in a fresh process: its wall time and what advice.json records."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "advise"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "finetune", "advise", *overrides, f"out={out}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"finetune advise {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
        record = json.loads((out / "advice.json").read_text())
    advice = record["recommendation"]
    return {
        "dataset": name,
        "image_size": image_size,
        "overrides": overrides,
        "wall_s": round(wall, 1),
        "target_s": target_s,
        "seconds": record["seconds"],
        "train": record["data"]["train"],
        "val": record["data"]["val"],
        "stages": record["stages"],
        "backbone": record["backbone"]["name"],
        "peak": advice["peak"],
        "domain": advice["domain"],
        "size": advice["size"],
        "rule": advice["rule"],
        "settings": advice["settings"],
        "command": record["command"],
    }


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    cases = QUICK if quick else CASES
    present = {name: case for name, case in cases.items() if case[0].exists()}
    payload = {
        "rows": [measure(name, *case[1:]) for name, case in present.items()],
        "skipped": sorted(set(cases) - set(present)),
    }
    write_result("advise", payload, out_dir)
    return payload


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
