"""``make bench``: run every benchmark, write benchmarks/results/<name>.json and README.md.

python -m benchmarks.run_all            # everything (~7 min on a 2-core CPU, plus ~25 min for search)
python -m benchmarks.run_all overhead frozen   # a subset (README keeps the other results)
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from finetune.run.warning_filters import quiet_library_chatter

from .common import RESULTS, environment
from .peers import SECTIONS
from .readme import render

BENCHMARKS = (
    "overhead",
    "frozen",
    "memory",
    "pipeline",
    "accuracy",
    "gpu",
    "advise",
    "sharding_memory",
    "streaming",
    "search",
)


def table(out_dir: Path = RESULTS) -> str:
    """The markdown summary of whatever result files exist, the peers package's section included."""
    return render(out_dir, SECTIONS)


def main(names: list[str] | None = None, quick: bool = False, out_dir: Path = RESULTS) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds, start = {}, time.perf_counter()
    for name in names or BENCHMARKS:
        t = time.perf_counter()
        print(f"== benchmark {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(quick=quick, out_dir=out_dir)
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"== {name}: {seconds[name]} s", flush=True)
    if not names:
        (out_dir / "run_all.json").write_text(
            json.dumps(
                {"total_s": round(time.perf_counter() - start, 1), "seconds": seconds, "environment": environment()},
                indent=2,
            )
            + "\n"
        )
    (out_dir / "README.md").write_text(table(out_dir) + "\n")
    return seconds


if __name__ == "__main__":
    quiet_library_chatter()
    main(sys.argv[1:] or None)
