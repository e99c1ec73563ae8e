"""One training process of a multi-process run: ``python -m finetune.worker run_dir=DIR config=FILE``.

Started by ``python -m finetune trainer=ddp`` (see distributed.py), by ``torchrun`` or by SLURM's
``srun``. Reads the resolved config file; never composes a config itself.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from .errors import FinetuneError


def main(argv: list[str]) -> int:
    """Parse ``key=value`` arguments and train this rank."""
    from .run import train

    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(args) - {"run_dir", "config", "resume"} or [a for a in argv if "=" not in a]
    if unknown or "run_dir" not in args:
        print("usage: python -m finetune.worker run_dir=DIR [config=FILE] [resume=CKPT]", file=sys.stderr)
        return 2
    run_dir = Path(args["run_dir"])
    try:
        cfg = OmegaConf.load(args.get("config", run_dir / "config.yaml"))
        train(cfg, run_dir, resume_from=Path(args["resume"]) if args.get("resume") else None)
    except FinetuneError as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
