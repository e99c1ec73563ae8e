"""Where a study lives, and the lock its workers take to count and ask.

``hydra.sweeper.storage``: null → the journal file ``<sweep dir>/study.log``; ``journal:<path>`` or a path →
a journal file; ``sqlite:///…`` or ``postgresql://…`` → Optuna's RDB storage. A storage is named in one
normalised string (the *spec*) that the sweeper hands each trial (``search.storage``), so the trial reports
to the same study.

The lock makes "count the trials, then ask one" atomic across processes and machines: a journal file or a
SQLite database → Optuna's ``JournalFileOpenLock`` on a lock file beside it; PostgreSQL →
``pg_advisory_lock`` in the database.

Heartbeats: the RDB storage has Optuna's (``record_heartbeat``, ``fail_stale_trials``); the journal storage
has none in Optuna 5, so a trial's heartbeat is its system attr ``HEARTBEAT`` (a Unix time).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from finetune.run.errors import ConfigError
from finetune.run.rundir import STUDY_LOG

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.study import Study

JOURNAL = "journal:"
RDB_SCHEMES = ("sqlite", "postgresql")
HEARTBEAT = "finetune:heartbeat"  # a journal trial's last sign of life (time.time())
LOCK_STALE_S = 60  # a lock file older than this (its holder was killed inside the lock) is broken


def retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that re-queues a failed trial (``max_retry`` times at most), without its
    experimental-API warning (finetune pins the Optuna it is tested with)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)


def storage_spec(storage: str | None, sweep_dir: str | Path) -> str:
    """``hydra.sweeper.storage`` as its normalised spec: ``journal:<absolute path>`` or a database URL."""
    if storage is None or str(storage).strip() == "":
        return JOURNAL + str((Path(sweep_dir) / STUDY_LOG).absolute())
    storage = str(storage)
    if storage.startswith(JOURNAL) or "://" not in storage:
        return JOURNAL + str(Path(storage.removeprefix(JOURNAL)).expanduser().absolute())
    scheme = storage.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise ConfigError(
            f"hydra.sweeper.storage={shown(storage)}: a search stores its study in a journal file (null: "
            "<sweep dir>/study.log, or journal:<path>), sqlite:///<file> or postgresql://<user>@<host>/<db>; "
            f"{scheme}:// is not one of those"
        )
    if urlsplit(storage).password is not None:
        raise ConfigError(
            f"hydra.sweeper.storage={shown(storage)}: the URL holds a password, and every trial's config records "
            "its storage URL: leave the password out and give it to the driver instead (PGPASSWORD or "
            "~/.pgpass for postgresql://)"
        )
    return storage


def shown(spec: str) -> str:
    """``spec`` without a password, for messages and records."""
    parts = urlsplit(spec) if "://" in spec else None
    if parts is None or parts.password is None:
        return spec
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_journal(spec: str) -> bool:
    return spec.startswith(JOURNAL)


def open_storage(
    spec: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int | None = None
) -> BaseStorage:
    """The Optuna storage of ``spec``; an RDB storage with Optuna's heartbeat, whose stale trials are failed
    and re-queued (at most ``max_retry`` times) by ``RetryHeartbeatStaleTrialCallback``."""
    import optuna

    if is_journal(spec):
        path = Path(spec.removeprefix(JOURNAL))
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = optuna.storages.journal.JournalFileOpenLock(str(path), grace_period=LOCK_STALE_S)  # study.log.lock
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))
    if spec.startswith("sqlite:///"):
        Path(spec.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    stale = StaleTrials(retry_callback(max_retry)) if heartbeat_interval else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                spec,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale,
            )
    except Exception as err:  # the database cannot be reached or its driver is missing: one line
        raise unreachable(spec, err) from None


def unreachable(spec: str, err: Exception) -> ConfigError:
    """The one line of a database the study cannot open (no server, a wrong URL, no driver)."""
    return ConfigError(
        f"hydra.sweeper.storage={shown(spec)}: cannot open the study's database "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the URL and that the "
        "server runs (postgresql:// needs pip install 'finetune[postgres]')"
    )


class StaleTrials:
    """Optuna's heartbeat callback for the trials it failed as stale: re-queues each (``retry``) and keeps
    its number, so the sweeper names exactly those (not a trial that failed on its own meanwhile)."""

    def __init__(self, retry: Any) -> None:
        self.retry, self.failed = retry, []

    def __call__(self, study: Study, trial: Any) -> None:
        self.failed.append(trial.number)
        self.retry(study, trial)


@contextmanager
def study_lock(spec: str, study_name: str) -> Iterator[None]:
    """Hold the study's cross-process lock (see the module note)."""
    if spec.startswith("postgresql"):
        with _advisory_lock(spec, study_name):
            yield
        return
    from optuna.storages.journal import JournalFileOpenLock

    path = spec.removeprefix(JOURNAL) if is_journal(spec) else spec.removeprefix("sqlite:///")
    lock = JournalFileOpenLock(f"{Path(path).expanduser()}.{_safe(study_name)}.ask-lock", grace_period=LOCK_STALE_S)
    lock.acquire()  # waits; breaks a lock its holder left LOCK_STALE_S ago
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _advisory_lock(url: str, study_name: str) -> Iterator[None]:
    """PostgreSQL's session-level advisory lock, keyed by the study's name."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(f"finetune-search:{study_name}".encode()).digest()[:8], "big", signed=True)
    try:
        engine = create_engine(url, poolclass=NullPool)
        connection = engine.connect()
    except Exception as err:  # no server, a wrong URL, no driver: one line, as open_storage says it
        raise unreachable(url, err) from None
    try:
        with connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def record_heartbeat(storage: BaseStorage, study_name: str, number: int) -> None:
    """Trial ``number`` is alive: Optuna's RDB heartbeat, or the journal system attr."""
    trial_id = trial_id_of(storage, study_name, number)
    if has_heartbeat(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


def has_heartbeat(storage: BaseStorage) -> bool:
    """True for an RDB storage opened with Optuna's heartbeat."""
    return hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None


def trial_id_of(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` (BaseStorage's public look-ups)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def is_running(spec: str, study_name: str, number: int) -> bool:
    """True while the study has trial ``number`` RUNNING (not finished, nor failed and re-queued)."""
    from optuna.trial import TrialState

    storage = open_storage(spec)
    try:
        return storage.get_trial(trial_id_of(storage, study_name, number)).state == TrialState.RUNNING
    except KeyError:  # no such study or trial in this storage
        return False


def fail_stale_trials(study: Study, storage: BaseStorage, grace_period: float, max_retry: int | None) -> list[int]:
    """Fail RUNNING trials whose worker stopped beating and re-queue them (``max_retry`` times at most), the
    way Optuna's heartbeat does for RDB storages (which this calls there). Returns the numbers failed."""
    import optuna
    from optuna.trial import TrialState

    if has_heartbeat(storage):
        stale = storage.get_heartbeat_stale_trial_callback()  # a StaleTrials (open_storage)
        stale.failed.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return sorted(stale.failed)
    failed, now = [], time.time()
    retry = retry_callback(max_retry)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - float(trial.system_attrs.get(HEARTBEAT, start)) <= grace_period:
            continue
        trial_id = trial_id_of(storage, study.study_name, trial.number)
        try:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another worker failed it) just now
        retry(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    return failed


def storage_record(spec: str, study_name: str) -> dict[str, Any]:
    """What a sweep directory records about its study (``study.json``), password hidden."""
    return {"storage": shown(spec), "study_name": study_name}
