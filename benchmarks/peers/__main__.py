"""``make bench-peers``: finetune against the tools users would pick instead, on the same machine.

python -m benchmarks.peers                                  # every dataset, its seeds, every peer
python -m benchmarks.peers --datasets hymenoptera --seeds 0 --peers finetune,fastai
python -m benchmarks.peers --datasets bloodmnist --compare budget --budget-s 300
python -m benchmarks.peers --quick                          # 64 px, 1 epoch, seed 0: checks the set-up
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common import RESULTS
from . import COMPARISONS, DATASETS, PEERS, PEERS_DIR, Settings, main


def cli(argv: list[str] | None = None) -> dict:
    """Parse the options, run the comparison they ask for; its payload (peers.json)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    parser.add_argument("--seeds", help="comma list (default: each dataset's own: 0,1,2 where the split is small)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    parser.add_argument(
        "--epochs",
        type=int,
        help="every tool trains N epochs (finetune: one phase, its recipe's last freeze depth); "
        "default: finetune's recipe total, the others the same count",
    )
    parser.add_argument("--image-size", type=int, help="override each dataset's size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (OMP_NUM_THREADS)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes of every run")
    parser.add_argument(
        "--compare",
        default=",".join(COMPARISONS),
        help="comma list: epochs (every tool the same epochs), budget (the same seconds, each tool's "
        "epochs sized from its epoch-comparison runs); default both, in that order",
    )
    parser.add_argument("--budget-s", type=float, help="the budget comparison's seconds (default: each dataset's own)")
    parser.add_argument("--max-minutes", type=float, help="start no run after this many minutes")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS}; --quick: {PEERS_DIR / 'quick'})")
    parser.add_argument("--quick", action="store_true", help="hymenoptera, 64 px, 1 epoch, seed 0: a set-up check")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds, args.image_size, args.epochs, args.compare = "hymenoptera", "0", 64, 1, "epochs"
    settings = Settings(
        args.threads, args.workers, image_size=args.image_size, epochs=args.epochs, budget_s=args.budget_s
    )
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    out = args.out or (PEERS_DIR / "quick" if args.quick else RESULTS)
    compare = tuple(args.compare.split(","))
    if not set(compare) <= set(COMPARISONS):
        parser.error(f"--compare {args.compare}: choose from {', '.join(COMPARISONS)}")
    return main(args.datasets.split(","), seeds, args.peers.split(","), settings, out, args.max_minutes, compare)


if __name__ == "__main__":
    cli()
