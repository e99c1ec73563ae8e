"""One training process of a multi-process run: ``python -m finetune.engine.worker run_dir=DIR config=FILE``.

Started by ``python -m finetune trainer=ddp`` (see distributed.py), by ``torchrun`` or by SLURM's
``srun``. Reads the resolved config file; never composes a config itself.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from finetune.cli import parse_args, run_command


def main(argv: list[str]) -> int:
    """Parse ``key=value`` arguments and train this rank; exit code 2 on bad input."""
    return run_command(_train_rank, __doc__, argv)


def _train_rank(argv: list[str]) -> None:
    from finetune.engine.train import train

    args = parse_args(argv, {"run_dir": None, "config": None, "resume": None}, ["run_dir"], "finetune.engine.worker")
    run_dir = Path(args["run_dir"])
    cfg = OmegaConf.load(args["config"] or run_dir / "config.yaml")
    train(cfg, run_dir, resume_from=Path(args["resume"]) if args["resume"] else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
