"""Launching several processes: ``finetune trainer=ddp`` composes the config once (Hydra, in this process),
writes the resolved config to the run directory and starts ``finetune.commands.worker`` processes with
``torch.distributed.run``. Every worker reads that one file: no re-composition, one run directory.

Light at import (no torch, Lightning or timm): the launching process only starts the workers, which import them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from finetune.run.artifacts import write_text
from finetune.run.errors import FinetuneError, RunInterrupted, TrainingDiverged
from finetune.run.lock import held_token
from finetune.run.rundir import CLAIMED, claim_run_dir
from finetune.run.strategies import is_distributed

LAUNCH_CONFIG = ".finetune-launch.yaml"  # the resolved config the launched workers read


def launched_by_a_launcher() -> bool:
    """True inside torchrun / torch.distributed.run / SLURM tasks: processes already exist."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def is_global_zero() -> bool:
    """Rank 0 (or the only process): the one that writes the run directory."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


INTERACTIVE = ("bash", "interactive")  # SLURM job names Lightning leaves to other environments


def launched_layout() -> tuple[int, int, str] | None:
    """(processes per node, nodes, launcher) as the launcher that started this process says: torchrun's
    variables first (it may run inside a SLURM job, whose variables then count the launchers), then srun's.
    None when no launcher says (no launcher, or an interactive SLURM shell)."""
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        per_node = int(env["LOCAL_WORLD_SIZE"])
        return per_node, int(env["WORLD_SIZE"]) // per_node, "torchrun"
    if "SLURM_NTASKS_PER_NODE" in env and "SLURM_NNODES" in env and env.get("SLURM_JOB_NAME") not in INTERACTIVE:
        return int(env["SLURM_NTASKS_PER_NODE"]), int(env["SLURM_NNODES"]), "SLURM"
    return None


def check_layout(cfg: DictConfig, source: Path) -> None:
    """A worker's config asks for the processes its launcher started (``trainer.devices`` per node on
    ``trainer.num_nodes`` nodes): else one line, before the run directory is claimed or any rank waits for
    ranks that never come."""
    layout = launched_layout()
    t = cfg.trainer
    if layout is None or not is_distributed(t.strategy):
        return
    per_node, nodes, launcher = layout
    if (int(t.devices), int(t.num_nodes)) != (per_node, nodes):
        raise FinetuneError(
            f"trainer.devices={t.devices} trainer.num_nodes={t.num_nodes} in {source}, but {launcher} started "
            f"{per_node} process{'es' if per_node > 1 else ''} per node on {nodes} node(s): compose the config "
            f"again with trainer.devices={per_node} trainer.num_nodes={nodes}"
        )


def wants_processes(cfg: DictConfig) -> bool:
    """The trainer group asks for more than one process and nobody launched them yet."""
    t = cfg.trainer
    several = is_distributed(t.strategy) and (int(t.devices) > 1 or int(t.num_nodes) > 1)
    return several and not launched_by_a_launcher()


def launch_workers(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None, resumed: bool = False) -> int:
    """Write the resolved config once and run ``trainer.devices`` workers on this node."""
    if int(cfg.trainer.num_nodes) > 1:
        raise FinetuneError(
            f"trainer.num_nodes={cfg.trainer.num_nodes}: start one launcher per node yourself, e.g. "
            "`finetune --cfg job --resolve <overrides> > exp.yaml`, then on every node "
            "`torchrun --nnodes=N --nproc_per_node=G --node_rank=R --master_addr=HOST --master_port=PORT "
            "-m finetune.commands.worker run_dir=<dir> config=exp.yaml` (or `srun python -m "
            "finetune.commands.worker ...` under SLURM; see docs/multinode.md)"
        )
    # One directory for all ranks: the launcher owns it (claimed, or the run it resumes) and tells the
    # workers so; a worker started without owner= (torchrun by hand) claims it on rank 0.
    owner = (
        CLAIMED.get(str(run_dir.absolute()), "resumed") if resumed else claim_run_dir(run_dir, hydra_files_allowed=True)
    )
    # Bookkeeping, not a result: rank 0 writes config.yaml itself once the data and weights are checked.
    config = write_text(run_dir / LAUNCH_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    lock = held_token(run_dir)  # the workers work under the launcher's lock of the run directory
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(cfg.trainer.devices)}",
        "-m",
        "finetune.commands.worker",
        f"run_dir={run_dir}",
        f"config={config}",
        f"owner={owner}",
        *([f"resume={resume_from}"] if resume_from else []),
        *([f"lock={lock}"] if lock else []),
    ]
    try:
        code = run_forwarding_signals(command)
    finally:
        config.unlink(missing_ok=True)
    if (run_dir / DIVERGED_MARKER).exists():  # rank 0 printed the line; workers under our launcher exit 0
        (run_dir / DIVERGED_MARKER).unlink()
        raise TrainingDiverged(None)
    return code


# Rank 0 of workers this launcher started leaves it when training diverged: they exit 0 so that torchrun prints
# no failure report of its own, and the launcher exits 3 as one process would.
DIVERGED_MARKER = ".finetune-diverged"

# torchrun passes these on to every worker (its default lacks SIGUSR1, which would end torchrun itself).
WORKER_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def run_forwarding_signals(command: list[str]) -> int:
    """Run the ``torch.distributed.run`` launcher in a session of its own, passing SIGINT, SIGTERM and
    SIGUSR1 sent to this process on to it (torchrun sends them on to every worker, which stops at a batch
    end and says where; a second signal stops the workers at once). A hang-up (SIGHUP: the terminal or ssh
    session closed) is passed on as SIGTERM, so the workers never outlive the launcher that holds the run's
    lock. After a signal, ``RunInterrupted`` with no line of its own (rank 0 printed it): this process exits
    130 / 143 as a worker does. Else torchrun's exit code."""
    process = subprocess.Popen(
        command, start_new_session=True, env={**os.environ, "TORCHELASTIC_SIGNALS_TO_HANDLE": WORKER_SIGNALS}
    )
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signal.SIGTERM if signum == signal.SIGHUP else signum)
        process.send_signal(received[-1])

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in forwarded}
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise RunInterrupted(None, received[0])
    return code
