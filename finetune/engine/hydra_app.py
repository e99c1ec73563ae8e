"""``finetune [train] dataset=… backbone=… schedule=…``: the training command under Hydra.

The config is composed once, here; training runs in this process or in launched workers.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from finetune.errors import FinetuneError
from finetune.resources import conf_dir

RESUME_CHECKPOINTS = ("last.ckpt", "best.ckpt")


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> dict | None:
    """Compose the config once, then train here or in launched workers; user errors exit 2."""
    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints its own lines once
    try:
        return _run(cfg)
    except (FinetuneError, OSError) as err:  # bad input, or a file the OS refused: one line, no traceback
        print(f"finetune: error: {err}", file=sys.stderr)
        sys.exit(2)


def _run(cfg: DictConfig) -> dict | None:
    from finetune.engine.distributed import launch_workers, wants_processes
    from finetune.engine.train import train
    from finetune.engine.runs import find_checkpoint, resume_config

    run_dir, resume_from = Path(HydraConfig.get().runtime.output_dir), None
    if cfg.resume:
        run_dir, resume_from = find_checkpoint(cfg.resume, prefer=RESUME_CHECKPOINTS)
        cfg = resume_config(run_dir, cfg)
        print(f"resuming {run_dir} from {resume_from.name} with the run's saved config")
    if cfg.plan or not wants_processes(cfg):
        return train(cfg, run_dir, resume_from)
    code = launch_workers(cfg, run_dir, resume_from)
    if code != 0:
        raise FinetuneError(f"a worker process failed (exit code {code}); see its output above")
    return json.loads((run_dir / "metrics.json").read_text())  # rank 0 printed the results


def run_dir_for_resume(argv: list[str]) -> list[str]:
    """``resume=<dir or ckpt>`` writes into that run directory instead of a new one."""
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if not resume or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    path = Path(resume).expanduser()
    if path.is_file():  # a checkpoint: its run directory holds it, usually in checkpoints/
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return [*argv, f"hydra.run.dir={path}"]


def run(overrides: list[str]) -> None:
    """Train with Hydra's command line (``overrides`` as typed after ``finetune train``)."""
    sys.argv = [sys.argv[0], *run_dir_for_resume(overrides)]
    main()
