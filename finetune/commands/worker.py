"""One training process of a multi-process run:
``python -m finetune.commands.worker run_dir=DIR config=FILE``.

Started by ``python -m finetune trainer=ddp`` (see distributed.py), by
``torchrun`` or by SLURM's ``srun`` (docs/multinode.md). Reads the resolved
config file; never composes a config itself. ``resume=<run dir>`` continues a
run from its last checkpoint (a requeued SLURM job; the directory must hold the
marker a finetune run's start wrote), ``resume=<file>`` from that checkpoint.
The launcher holds the run directory's lock and names it (``lock=<token>``);
without a launcher of ours, rank 0 takes the lock.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from finetune.commands.args import parse_args, print_stopped, run_command
from finetune.run.artifacts import write_text
from finetune.run.config import load_config
from finetune.run.errors import FinetuneError, TrainingDiverged
from finetune.run.lock import check_holder, run_lock
from finetune.run.rundir import RESUME_CHECKPOINTS, RUN_MARKER, claim_run_dir, marker_token
from finetune.run.warning_filters import quiet_library_chatter


def main(argv: list[str]) -> int:
    """Parse ``key=value`` arguments and train this rank; exit code 2 on bad input."""
    quiet_library_chatter()
    return run_command(_train_rank, __doc__, argv)


def _train_rank(argv: list[str]) -> None:
    from finetune.commands.train import train
    from finetune.training.distributed import DIVERGED_MARKER, check_layout, end_process_group, is_global_zero

    args = parse_args(
        argv,
        {"run_dir": None, "config": None, "resume": None, "owner": None, "lock": None},
        ["run_dir"],
        "finetune.commands.worker",
    )
    run_dir = Path(args["run_dir"])
    config = Path(args["config"]) if args["config"] else run_dir / "config.yaml"
    cfg = load_config(config)
    check_layout(cfg, config)
    if args["resume"]:
        _check_resumable(Path(args["resume"]))  # every rank: the same files, refused alike, none left waiting
    elif is_global_zero():
        _check_owner(run_dir, args["owner"])
    with _rank_lock(run_dir, args["lock"], is_global_zero()):
        try:
            train(cfg, run_dir, resume_from=_resume_checkpoint(args["resume"]))
        except TrainingDiverged as err:
            if args["lock"] is None:  # torchrun by hand: exit 3 (torchrun reports it as its own failure)
                raise
            print_stopped(err)  # rank 0's one line; the launcher that started us exits 3 (no torchrun report)
            if is_global_zero():
                write_text(run_dir / DIVERGED_MARKER, "")
    end_process_group()


def _resume_checkpoint(resume: str | None) -> Path | None:
    """``resume=<checkpoint>``, or ``resume=<run dir>`` (a requeued SLURM job): its ``last.ckpt``, else its
    ``best.ckpt``, else None (stopped before its first checkpoint: phase 1 starts again in the same directory)."""
    if not resume:
        return None
    path = Path(resume)
    if not path.is_dir():
        return path
    return next((path / "checkpoints" / n for n in RESUME_CHECKPOINTS if (path / "checkpoints" / n).is_file()), None)


def _check_resumable(resume: Path) -> None:
    """``resume=<run dir>`` names a directory a finetune run made (its run marker): not any existing folder,
    which a requeued job would otherwise train into from scratch when it holds no checkpoint."""
    if resume.is_dir() and marker_token(resume) is None:
        raise FinetuneError(
            f"resume={resume}: not a finetune run directory (no {RUN_MARKER}, which a run's first start writes); "
            "resume= a run directory finetune made, or leave resume= out to start a new run in a new directory"
        )


def _rank_lock(run_dir: Path, token: str | None, global_zero: bool) -> AbstractContextManager:
    """Rank 0 works under the lock of the launcher that started it (``lock=<token>``, checked), or, started
    by torchrun or srun, takes the run directory's lock itself; the other ranks leave it to rank 0."""
    if not global_zero:
        return nullcontext()
    if token:
        check_holder(run_dir, token)
        return nullcontext()
    return run_lock([run_dir], "finetune worker")


def _check_owner(run_dir: Path, owner: str | None) -> None:
    """Rank 0 makes sure the run directory is this run's: claimed by the launcher that started it
    (``owner=<token>``; ``owner=resumed`` for a resumed run), else it claims the directory itself."""
    if owner is None:
        claim_run_dir(run_dir)
    elif owner != "resumed" and marker_token(run_dir) != owner:
        raise FinetuneError(
            f"{run_dir} is owned by another run (its {RUN_MARKER} does not match owner=); "
            "every run needs a directory of its own"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
