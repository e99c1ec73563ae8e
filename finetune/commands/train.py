"""``finetune [train] dataset=… backbone=… schedule=…`` and ``finetune plan …``: the training command
under Hydra.

The config is composed once, here; training runs in this process or in launched workers.

Run directories are owned by one run: the default ``hydra.run.dir`` / ``hydra.sweep.dir`` go through
the ``unique_dir`` resolver, which creates the directory with ``os.mkdir`` (no ``exist_ok``) before
Hydra writes anything, adding ``-2``, ``-3`` … to a name that is taken; an explicit ``hydra.run.dir``
is claimed before Hydra starts and refused if it holds anything, except that every worker of a search
joins the ``hydra.sweep.dir`` its search made. A directory the run wrote nothing of its own into
(``plan=true``, a run refused before training) is removed again.

Under a sweeper that optimises a number (``hydra/sweeper=search``) the task function returns the run's
validation score (``finetune.training.search``); a trial the study's pruner stopped, or that diverged,
raises for the sweeper to tell the study it was pruned (metrics.json says so); otherwise nothing. A run whose
config names a trial the search did not launch now (``finetune resume=<sweep>/<n>``) trains as a plain run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.commands.args import compose_config, print_error, print_stopped
from finetune.commands.args import override_value as _value
from finetune.commands.config_errors import config_access_error
from finetune.commands.train_help import help_template
from finetune.resources import conf_dir
from finetune.run.artifacts import write_json
from finetune.run.errors import FinetuneError, RunInterrupted, TrainingDiverged
from finetune.run.lock import run_lock
from finetune.run.rundir import (
    CLAIMED,
    RESUME_CHECKPOINTS,
    claim_run_dir,
    claim_search_dir,
    forget_claims,
    release_if_unused,
    unique_run_dir,
)
from finetune.run.warning_filters import lightning_lines_dropped, quiet_library_chatter
from finetune.training.search import PRUNED_REASON, TrialPruned, check_search, direction, is_search, objective

# Command lines after which Hydra prints something and runs no job: nothing to claim.
NO_JOB_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")

OmegaConf.register_new_resolver("unique_dir", unique_run_dir, use_cache=True, replace=True)
# hydra.sweeper.direction: ${search_direction:${monitor}} -> minimize for a loss, else maximize
OmegaConf.register_new_resolver("search_direction", direction, replace=True)
# finetune train --help: Hydra's help with the recipes listed (finetune.commands.train_help)
OmegaConf.register_new_resolver("finetune_help", help_template, replace=True)
HELP_FLAGS = ("--help", "-h")


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Compose the config once, then train here or in launched workers; user errors exit 2 (a search
    stops there). Returns the validation score a search optimises, else None."""
    quiet_library_chatter()  # a launcher's job process (hydra/launcher=submitit_*) starts here, not in finetune.cli
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _run(cfg)
    except (FinetuneError, OSError) as err:  # bad input, or a file the OS refused: one line, no traceback
        stop(print_error(err), err)
    except OmegaConfBaseException as err:  # a key of the config that cannot be read: one line, no traceback
        explained = config_access_error(err)
        stop(print_error(explained), explained)
    except TrialPruned as err:  # the study's pruner stopped this trial: the sweeper tells the study PRUNED
        record_pruned(output_dir, cfg, err.record)
        logging.getLogger(__name__).info("trial %s %s", cfg.search.trial, err)
        raise
    except TrainingDiverged as err:  # one line, exit code 3; a search records a pruned trial and goes on
        if not is_search(HydraConfig.get()):
            stop(print_stopped(err), err)
        record_pruned(output_dir, cfg, {"diverged": str(err)})
        logging.getLogger(__name__).error("trial pruned (diverged): %s: %s", output_dir, err)
        raise
    except RunInterrupted as err:  # a search's trial: the sweeper fails and re-queues it
        if cfg.search.study is not None and is_search(HydraConfig.get()):
            raise search_interrupt(err, cfg.search.trial) from None
        raise
    except Exception:  # a search records a failed trial and goes on (max_failure_rate): keep the why
        if is_search(HydraConfig.get()):
            logging.getLogger(__name__).exception("trial failed: %s", output_dir)
        raise
    finally:
        release_if_unused(output_dir)  # plan, or refused before the run wrote anything: no clutter


def record_pruned(run_dir: Path, cfg: DictConfig, record: dict) -> None:
    """metrics.json of a search's trial that was pruned or diverged: why, and no test results."""
    if run_dir.is_dir():
        write_json(
            run_dir / "metrics.json",
            {"test": {}, PRUNED_REASON: record, "search": {"study": cfg.search.study, "trial": cfg.search.trial}},
        )


def search_interrupt(err: RunInterrupted, trial: int) -> RunInterrupted:
    """The interrupt of a search's trial: the sweeper failed and re-queued it, so the way on is the search command
    (a resume of the trial's directory would train outside the study)."""
    if err.message is None:  # ranks other than 0 say nothing
        return err
    stopped = re.match(r".*?\(SIG\w+\)", err.message)
    return RunInterrupted(
        f"{stopped.group(0) if stopped else err.message}: trial {trial} of the search; run the search command "
        "again (the trial is re-queued)",
        err.signum,
    )


def detach_from_study(cfg: DictConfig, hydra_cfg: DictConfig, resumed: bool) -> None:
    """A run whose config names a search's trial reports to the study only when the search sweeper launched it
    (``-m``, not a resume) and the study still has the trial RUNNING. Else (``finetune resume=<sweep>/<n>`` of an
    interrupted trial, which the sweeper failed and re-queued) it trains as a plain run, said in one line."""
    from finetune.training.search.storage import is_running

    search = cfg.search
    if search.study is None:
        return
    launched = is_search(hydra_cfg) and hydra_cfg.mode == RunMode.MULTIRUN and not resumed
    if launched and is_running(search.storage, search.study, search.trial):
        return
    print(
        f"trial {search.trial} of the search study {search.study!r} trains as a plain run: the study does not "
        "see it (run the search command again to continue the search)"
    )
    search.storage = search.study = search.trial = None


class JobStopped(CompactHydraException):
    """A job that ran in a launcher's process of its own (``hydra/launcher=submitit_*``) stopped with our error:
    Hydra hands it back to the command, which prints it as one line (exit code 1) once every job has ended."""


COMMAND_PID: int | None = None  # the process ``run()`` started the command in


def stop(code: int, error: object) -> NoReturn:
    """Exit with ``code`` (the run's ``finetune:`` line is printed). A launcher's job process raises JobStopped
    instead: a job process that exits leaves its launcher no result (submitit waits for one, then raises)."""
    if os.getpid() != COMMAND_PID:
        job = HydraConfig.get()
        raise JobStopped(f"finetune: error: job {job.job.num} of the sweep stopped ({job.runtime.output_dir}): {error}")
    sys.exit(code)


def command(argv: list[str]) -> int:
    """``finetune [train] <overrides>``: check the config (no torch yet), then train under Hydra."""
    from finetune.commands.precheck import info_choice_given, precheck

    argv = info_choice_given(argv)
    code = precheck(argv)
    if code:
        return code
    run(argv)
    return 0


def plan_command(argv: list[str]) -> int:
    """``finetune plan <overrides>`` = ``finetune train plan=true <overrides>``, composed with Hydra's
    compose API: nothing is loaded and no run directory is made."""
    if any(a.startswith("-") for a in argv):  # --help, --cfg …: Hydra's own flags
        return command([*argv, "plan=true"])
    from finetune.commands.precheck import precheck

    code = precheck([*argv, "plan=true"])
    if code:
        return code
    return plan_only(argv)


def train(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None) -> dict:
    """Fine-tune as ``cfg`` says (its task from the registry), writing ``run_dir``; the metrics."""
    from finetune.data.files import reading_training_data
    from finetune.tasks.registry import get_task
    from finetune.training.train import train as train_task

    with reading_training_data(), lightning_lines_dropped():  # the command, finetune.train and DDP workers
        return train_task(get_task(cfg.task), cfg, run_dir, resume_from)


def _run(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir, resume_from = Path(hydra_cfg.runtime.output_dir), None
    cfg_resumed = cfg.resume
    if cfg.resume:
        from finetune.models.saved_runs import prepare_resume
        from finetune.tasks.registry import TASKS

        run_dir, resume_from, cfg = prepare_resume(
            cfg, list(hydra_cfg.overrides.task), TASKS, prefer=RESUME_CHECKPOINTS
        )
    elif not cfg.plan:
        claim_run_dir(run_dir, hydra_files_allowed=True)  # a multirun job's directory; a no-op when claimed
        from finetune.commands.precheck import check_run_dir_outside_data

        check_run_dir_outside_data(str(run_dir), cfg)  # a sweep's job directories too (released again)
    searching = is_search(hydra_cfg)
    if searching:
        check_search(hydra_cfg, cfg)  # before any work: no -m, plan=true, the wrong direction
    detach_from_study(cfg, hydra_cfg, resumed=bool(cfg_resumed))
    metrics = train_claimed(cfg, run_dir, resume_from, resumed=bool(cfg_resumed))
    return objective(metrics) if searching else None


def train_claimed(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None, resumed: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (claimed by this process, or the run it resumes) under the run directory's
    lock, here or in launched workers; the metrics. The command line and ``finetune.train`` both end here."""
    from finetune.training.launch import launch_workers, wants_processes

    # One process at a time in a run directory (a resume took its lock before Hydra started: kept)
    with run_lock([] if cfg.plan else [run_dir], "finetune resume" if resumed else "finetune train"):
        if cfg.plan or not wants_processes(cfg):
            return train(cfg, run_dir, resume_from)
        code = launch_workers(cfg, run_dir, resume_from, resumed=resumed)  # under this process's lock
        if code != 0:
            raise FinetuneError(f"a worker process failed (exit code {code}); see its output above")
        return json.loads((run_dir / "metrics.json").read_text())  # rank 0 printed the results


def resumed_dir(argv: list[str]) -> Path | None:
    """The run directory ``resume=<dir or ckpt>`` continues; None without ``resume=``."""
    resume = _value(argv, "resume")
    if not resume or resume == "null":
        return None
    path = Path(resume).expanduser()
    if path.is_file():  # a checkpoint: its run directory holds it
        from finetune.run.records import run_dir_of

        path = run_dir_of(path)
    return path


def run_dir_for_resume(argv: list[str]) -> list[str]:
    """``resume=<dir or ckpt>`` writes into that run directory instead of a new one, and Hydra keeps
    its hands off the run's ``.hydra/`` (the record of how the run was started)."""
    path = resumed_dir(argv)
    if path is None:
        return argv
    extra = [] if _value(argv, "hydra.output_subdir") else ["hydra.output_subdir=null"]
    if _value(argv, "hydra.run.dir") is not None:
        return [*argv, *extra]
    return [*argv, f"hydra.run.dir={path}", *extra]


def lock_resumed_run(argv: list[str]) -> AbstractContextManager:
    """The lock of the run directory ``resume=`` continues, taken before Hydra opens its log file there
    (nothing to lock without ``resume=``, or for ``--cfg``, ``--help`` …, which run no job)."""
    path = resumed_dir(argv)
    if path is None or any(a.split("=", 1)[0] in NO_JOB_FLAGS for a in argv):
        return nullcontext()
    return run_lock([path], "finetune resume")


def check_resume_target(argv: list[str]) -> None:
    """``resume=`` names a run directory (or a checkpoint): refused before Hydra opens a log file there."""
    resume = _value(argv, "resume")
    if resume in (None, "null"):
        return
    path = Path(resume).expanduser()
    if path.is_file():
        return
    if not path.is_dir():
        raise FinetuneError(f"resume={resume}: no such run directory or checkpoint")
    if not any((path / name).is_file() for name in ("config.yaml", ".hydra/config.yaml")) and not list(
        path.glob("checkpoints/*.ckpt")
    ):
        raise FinetuneError(
            f"resume={resume}: not a finetune run directory (no config.yaml, no .hydra/config.yaml); "
            "resume= takes the directory a training run wrote"
        )


def check_resume(argv: list[str]) -> None:
    """A ``resume=`` command line checked completely (the run, its stored config, the overrides, the
    checkpoint against the run's model) before Hydra opens the run's log file: a refused resume leaves
    the run as it was."""
    if resumed_dir(argv) is None or any(a.split("=", 1)[0] in NO_JOB_FLAGS for a in argv):
        return
    from hydra.errors import HydraException

    from finetune.models.saved_runs import check_resume as check_run
    from finetune.tasks.registry import TASKS

    overrides = [a for a in argv if not a.lstrip("+").startswith("hydra.") and not a.startswith("-")]
    try:
        current = compose_config(overrides)
    except HydraException:
        return  # Hydra refuses the command line in its own words
    check_run(current, overrides, TASKS, prefer=RESUME_CHECKPOINTS)


def check_output_location_of(argv: list[str]) -> None:
    """The run directory a new run will make can be written (a resume writes where its run is)."""
    if _value(argv, "resume") in (None, "null") and not any(a.split("=", 1)[0] in NO_JOB_FLAGS for a in argv):
        from finetune.commands.precheck import check_output_location

        check_output_location(argv)


def claim_explicit_dirs(argv: list[str]) -> list[str]:
    """An explicit ``hydra.run.dir`` (``hydra.sweep.dir`` with ``-m``) is claimed before Hydra writes
    a file there: refused if it holds anything, so a finished run is never overwritten. A value with
    an interpolation (``${now:…}``) goes through the ``unique_dir`` resolver instead. Returns the
    directories claimed."""
    if any(a.split("=", 1)[0] in NO_JOB_FLAGS for a in argv) or _value(argv, "resume") not in (None, "null"):
        return []
    multirun = bool({"-m", "--multirun"} & set(argv))
    value = _value(argv, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    if value is None or "${" in value:
        return []
    if multirun and is_search_command(argv):
        return [value] if claim_search_dir(value) else []  # joined: another worker of the search made it
    claim_run_dir(value)
    return [value]


def is_search_command(argv: list[str]) -> bool:
    """True when the ``-m`` command line ``argv`` runs a search (its sweeper optimises a number)."""
    from hydra.errors import HydraException

    overrides = [a for a in argv if not a.startswith("-") and not a.lstrip("+").startswith("hydra.")]
    try:
        return is_search(compose_config(overrides, with_hydra=True).hydra)
    except (HydraException, FinetuneError, OmegaConfBaseException):
        return False  # Hydra refuses the command line in its own words


def register_search_sweeper() -> None:
    """``hydra/sweeper=search``: Hydra finds plugins by scanning ``hydra_plugins``, which misses the folder an
    editable install maps there; registering the class makes it known either way."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.finetune_search import SearchSweeper

    Plugins.instance().register(SearchSweeper)


def _wrap_interpolated(argv: list[str]) -> list[str]:
    """``hydra.run.dir=runs/${now:…}`` → made unique like the default one."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if (
            sep
            and key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir")
            and "${" in value
            and not value.startswith("${unique_dir:")
        ):
            arg = f"{key}=${{unique_dir:{value}}}"
        out.append(arg)
    return out


def run(overrides: list[str]) -> None:
    """Train with Hydra's command line (``overrides`` as typed after ``finetune train``)."""
    global COMMAND_PID
    COMMAND_PID = os.getpid()
    forget_claims()
    resumed = ExitStack()
    try:
        check_resume_target(overrides)
        check_resume(overrides)
        check_output_location_of(overrides)
        claimed = claim_explicit_dirs(overrides)
        resumed.enter_context(lock_resumed_run(overrides))
    except FinetuneError as err:
        sys.exit(print_error(err))
    if set(HELP_FLAGS) & set(overrides):
        overrides = [*overrides, "hydra.help.template=${finetune_help:}"]
    sys.argv = [sys.argv[0], *run_dir_for_resume(_wrap_interpolated(overrides))]
    register_search_sweeper()
    try:
        main()
    finally:  # Hydra refused the command line after a directory was made for it: take it back
        for directory in [*claimed, *list(CLAIMED)]:
            release_if_unused(directory)
        forget_claims()
        resumed.close()


def plan_only(overrides: list[str]) -> int:
    """``finetune plan …``: compose with Hydra's compose API and print the plan; no run directory."""
    overrides = [o for o in overrides if not o.lstrip("+").startswith("hydra.")]
    cfg = compose_config([*overrides, "plan=true"])
    try:
        train(cfg, Path("."), None)  # plan=true returns before anything is written
    except (FinetuneError, OSError) as err:
        return print_error(err)
    return 0
