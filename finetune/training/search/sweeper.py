"""``hydra/sweeper=search``: finetune's Hydra sweeper on an Optuna study that persists (a journal file or a
database), is shared by any number of workers (the same command with the same ``hydra.sweep.dir``, or the
same ``storage`` and ``study_name``), resumes after a crash and prunes hopeless trials.

Each worker loops: under the study's lock it fails the trials whose worker stopped beating (re-queued,
``max_retry`` times), then takes up to ``n_jobs`` trials (``study.next_trial``); it launches them as Hydra
jobs (job number = trial number, so job directories never collide across workers), beating for them while
they run, and tells the study each one's result: COMPLETE with the validation score, PRUNED (the pruner
stopped it, or it diverged: the reason in the user attr ``pruned``), FAIL (any other error;
``max_failure_rate`` as before). A job that died without a result (a launcher such as submitit raises for its
batch) leaves its trial to be told from its run directory: metrics.json's score (COMPLETE), its ``pruned``
record (PRUNED), else FAIL, re-queued. A worker with no budget left waits while other workers' trials run, so a
trial of a killed worker is re-run before the search ends. ``study.json`` names the study from its creation on
(a worker of another study is refused the sweep directory); after each batch it lists every trial and the best,
and the sweep summary is rewritten.

The config (``conf/hydra/sweeper/search.yaml``) documents every key.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from finetune.run.artifacts import write_json
from finetune.run.errors import FinetuneError, RunInterrupted, TrainingDiverged
from finetune.training.search import (
    PRUNED_REASON,
    STUDY_RECORD,
    TrialPruned,
    TrialWithoutScore,
    best_text,
    objective,
)

IDLE_POLL_S = 5  # a worker with no trial left looks this often whether the others' trials ended or went stale

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import Trial

log = logging.getLogger(__name__)


class TrialLost(RuntimeError):
    """A trial's job ended without a result and its run directory has none either (the job's process died): the
    trial is failed and re-queued."""


class SearchSweeper(Sweeper):
    """The sweeper; Hydra instantiates it from ``hydra.sweeper`` (keys: ``conf/hydra/sweeper/search.yaml``)."""

    def __init__(
        self,
        direction: str,
        n_trials: int,
        study_name: str | None = None,
        storage: str | None = None,
        sampler: Any = None,
        pruner: Any = None,
        n_jobs: int = 1,
        heartbeat_interval: int = 60,
        grace_period: int | None = None,
        max_retry: int | None = 3,
        max_failure_rate: float = 1.0,
        params: Any = None,
    ) -> None:
        def plain(node: Any) -> Any:
            return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

        self.direction, self.n_trials, self.n_jobs = str(direction), int(n_trials), max(1, int(n_jobs))
        self.study_name, self.storage = study_name, storage
        self.sampler = plain(sampler) or {"kind": "tpe"}
        self.pruner = plain(pruner) or {"kind": "none"}
        self.heartbeat_interval = int(heartbeat_interval)
        self.grace_period = int(grace_period) if grace_period is not None else 2 * self.heartbeat_interval
        self.max_retry, self.max_failure_rate = max_retry, float(max_failure_rate)
        self.params = plain(params) or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except FinetuneError as err:  # a config the search cannot run: one line, exit 2, as a job's error
            print(f"finetune: error: {err}", file=sys.stderr)
            sys.exit(2)

    def _sweep(self, arguments: list[str]) -> None:
        from finetune.training.search import check_search
        from finetune.training.search.space import parse_space
        from finetune.training.search.storage import open_storage, shown, storage_spec, study_lock
        from finetune.training.search.study import open_study

        check_search(self.config.hydra, self.config)
        space = parse_space(self.params, arguments)
        spec = storage_spec(self.storage, self.sweep_dir)
        name = str(self.study_name or self.sweep_dir.absolute().name)
        with study_lock(spec, name):  # workers that start together: one creates the tables and the study
            storage = open_storage(spec, self.heartbeat_interval, self.grace_period, self.max_retry)
            study = open_study(storage, name, self.direction, self.sampler, self.pruner, shown(spec))
            claim_record(self.sweep_dir, spec, name)
        log.info("search: study %r in %s, %d trials", name, shown(spec), self.n_trials)
        self.spec, self.storage_obj, self.study = spec, storage, study
        while True:
            trials, values = self._take(space)
            if not trials:
                if not self._others_running():
                    break
                time.sleep(min(self.heartbeat_interval, IDLE_POLL_S))  # their trial ends, or goes stale and comes back
                continue
            returns = self._launch(trials, [space.overrides(v) for v in values])
            failures = [err for trial, ret in zip(trials, returns) if (err := self._tell(trial, ret)) is not None]
            self._record()
            if failures and len(failures) / len(returns) > self.max_failure_rate:
                log.error(
                    "search: %d of %d trials failed (max_failure_rate=%s)",
                    len(failures),
                    len(returns),
                    self.max_failure_rate,
                )
                raise failures[0]
        self._record()
        log.info("%s", best_line(self.study, self.sweep_dir))

    def _take(self, space: Any) -> tuple[list[Trial], list[dict[str, Any]]]:
        """Under the lock: stale trials failed and re-queued, then up to ``n_jobs`` trials and their values."""
        from finetune.training.search.storage import fail_stale_trials, record_heartbeat, study_lock
        from finetune.training.search.study import next_trial

        trials, values = [], []
        with study_lock(self.spec, self.study.study_name):
            for number in fail_stale_trials(self.study, self.storage_obj, self.grace_period, self.max_retry):
                log.warning("search: trial %d stopped beating (its worker died?): failed and re-queued", number)
            while len(trials) < self.n_jobs:
                trial = next_trial(self.study, self.n_trials, self.sampler)
                if trial is None:
                    break
                record_heartbeat(self.storage_obj, self.study.study_name, trial.number)
                trials.append(trial)
                values.append(space.suggest(trial))
        return trials, values

    def _others_running(self) -> bool:
        from optuna.trial import TrialState

        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))

    def _launch(self, trials: list[Trial], overrides: list[list[str]]) -> list[JobReturn]:
        """Run the trials as Hydra jobs numbered by trial (consecutive numbers in one launch), beating for
        them; a trial interrupted (Ctrl-C, SIGTERM) is failed and re-queued, one a config error stopped failed.
        A launch that raised after its jobs started (one died): each of its trials from its run directory."""
        identity = [
            [
                f"search.storage={quoted(self.spec)}",
                f"search.study={quoted(self.study.study_name)}",
                f"search.trial={t.number}",
            ]
            for t in trials
        ]
        returns: list[JobReturn] = []
        try:
            with self._beating([t.number for t in trials]):
                for start, stop in consecutive([t.number for t in trials]):
                    batch = [o + i for o, i in zip(overrides[start:stop], identity[start:stop])]
                    try:
                        returns += self.launcher.launch(batch, initial_job_idx=trials[start].number)
                    except Exception as err:
                        returns += self._from_run_dirs(trials[start:stop], err)
        except BaseException as err:
            requeue = isinstance(err, (KeyboardInterrupt, RunInterrupted))
            for trial in trials[len(returns) :]:
                self._fail(trial, requeue)
            raise
        return returns

    def _from_run_dirs(self, trials: list[Trial], err: Exception) -> list[JobReturn]:
        """The results of a launch that raised (submitit: a job of the batch died), read from each trial's
        run directory; ``err`` again when no job of the batch started (the launcher itself failed)."""
        if not any((self.sweep_dir / str(t.number) / ".hydra").is_dir() for t in trials):
            raise err
        log.warning("search: a job of trials %s ended without a result (%s)", [t.number for t in trials], err)
        return [run_dir_result(self.sweep_dir / str(t.number), err) for t in trials]

    @contextmanager
    def _beating(self, numbers: list[int]) -> Iterator[None]:
        """Record the trials' heartbeats every ``heartbeat_interval`` seconds while their jobs run."""
        from finetune.training.search.storage import record_heartbeat

        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                for number in numbers:
                    try:
                        record_heartbeat(self.storage_obj, self.study.study_name, number)
                    except Exception as err:  # the trial finished meanwhile, or the storage hiccuped
                        log.debug("search: heartbeat of trial %d: %s", number, err)

        thread = threading.Thread(target=beat, name="finetune-search-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _tell(self, trial: Trial, ret: JobReturn) -> BaseException | None:
        """Tell the study the trial's result; the error of a FAILed trial (None otherwise). Reads the job's
        ``_return_value``: Hydra's ``return_value`` prints "Error executing job" for every pruned trial."""
        from optuna.trial import TrialState

        state, value, error = TrialState.COMPLETE, None, None
        result = ret._return_value
        if ret.status == JobStatus.COMPLETED:
            value = float(result)
        elif isinstance(result, TrialPruned):
            state = TrialState.PRUNED
            trial.set_user_attr(PRUNED_REASON, result.record)
        elif isinstance(result, TrainingDiverged):
            state = TrialState.PRUNED
            trial.set_user_attr(PRUNED_REASON, {"diverged": str(result)})
        else:  # any error of a trial fails that trial only (max_failure_rate)
            state, error = TrialState.FAIL, result
            log.warning("search: trial %d failed: %s: %s", trial.number, type(result).__name__, result)
        if isinstance(error, TrialLost):
            self._fail(trial, requeue=True)
            return error
        told = self.study.tell(trial.number, value, state=state, skip_if_finished=True)
        if told.state != state:
            log.warning("search: trial %d was already %s (its heartbeat lapsed)", trial.number, told.state.name)
        return error

    def _fail(self, trial: Trial, requeue: bool) -> None:
        import optuna

        from finetune.training.search.storage import retry_callback

        frozen = self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if requeue and frozen.state == optuna.trial.TrialState.FAIL:
            retry_callback(self.max_retry)(self.study, frozen)

    def _record(self) -> None:
        """``study.json`` and the sweep summary, from the study as it is now (written atomically)."""
        from finetune.training.sweep import write_summary

        write_json(self.sweep_dir / STUDY_RECORD, study_record(self.study, self.spec, self.n_trials))
        write_summary(self.sweep_dir)


def study_record(study: Study, spec: str, n_trials: int) -> dict[str, Any]:
    """What ``study.json`` holds: storage, name, direction, budget, every trial and the best."""
    from finetune.training.search.storage import storage_record
    from finetune.training.search.study import best_trial, retried

    trials = study.get_trials(deepcopy=False)
    requeued = retried(trials)
    best = best_trial(study)
    return {
        **storage_record(spec, study.study_name),
        "direction": study.direction.name.lower(),
        "n_trials": n_trials,
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": best.params},
        "trials": [
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "requeued": t.number in requeued,
                "retry_of": t.system_attrs.get("failed_trial"),
                **({PRUNED_REASON: t.user_attrs[PRUNED_REASON]} if PRUNED_REASON in t.user_attrs else {}),
            }
            for t in trials
        ],
    }


def best_line(study: Study, sweep_dir: Path) -> str:
    """The search's last line: its best trial (number, score by its metric's name, parameters rounded) and its
    run directory (the job of the same number), or that none completed."""
    from finetune.training.search.study import best_trial

    best = best_trial(study)
    if best is None:
        return f"search: no trial of study {study.study_name!r} completed, so there is no best trial"
    run_dir = sweep_dir / str(best.number)
    try:
        metric = json.loads((run_dir / "metrics.json").read_text())["checkpoint"]["monitor"]
    except (OSError, ValueError, KeyError, TypeError):  # its run is another machine's (a shared storage)
        metric = "value"
    return f"search: best {best_text(best.number, best.value, metric, best.params)}, run directory {run_dir}"


def claim_record(sweep_dir: Path, spec: str, name: str) -> None:
    """A sweep directory holds one study: the first worker records it in ``study.json`` as it opens it (made
    exclusively: a hard link of a complete file); a worker of another storage or study name is refused."""
    from finetune.training.search.storage import storage_record

    path, ours = sweep_dir / STUDY_RECORD, storage_record(spec, name)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    draft = sweep_dir / f".{STUDY_RECORD}.{uuid.uuid4().hex}"
    draft.write_text(json.dumps(ours, indent=2) + "\n")
    try:
        os.link(draft, path)
        return
    except FileExistsError:
        recorded = json.loads(path.read_text())
    finally:
        draft.unlink()
    if {k: recorded.get(k) for k in ours} != ours:
        raise FinetuneError(
            f"hydra.sweep.dir={sweep_dir} holds the search study {recorded.get('study_name')!r} in "
            f"{recorded.get('storage')}, not {name!r} in {ours['storage']}: give the same hydra.sweeper.storage and "
            "study_name to join it, or a new hydra.sweep.dir"
        )


def run_dir_result(run_dir: Path, err: Exception) -> JobReturn:
    """A trial's result as its run directory holds it: metrics.json's score, its pruned record, else lost."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    pruned = metrics.get(PRUNED_REASON)
    if pruned is not None:
        why = TrainingDiverged(pruned["diverged"]) if "diverged" in pruned else TrialPruned(pruned)
        return JobReturn(status=JobStatus.FAILED, _return_value=why)
    try:
        return JobReturn(status=JobStatus.COMPLETED, _return_value=objective(metrics))
    except TrialWithoutScore:  # no metrics.json (the job died before its end), or no score in it
        return JobReturn(status=JobStatus.FAILED, _return_value=TrialLost(f"{run_dir}: {err}"))


def quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value (paths and URLs hold ``:``, ``/``, ``@``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def consecutive(numbers: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` index ranges of runs of consecutive numbers: ``[3, 4, 7]`` → (0, 2), (2, 3)."""
    start = 0
    for i in range(1, len(numbers) + 1):
        if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
            yield start, i
            start = i
