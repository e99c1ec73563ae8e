"""Tracking across runs: one MLflow store for every run, one MLflow (and W&B) run per finetune run with its
resolved config, a sweep as a parent MLflow run of its jobs, and a TensorBoard hparams session per run
(docs/tracking.md).

Where things live:

- MLflow's store: ``logger.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<runs>/mlflow.db``,
  ``<runs>`` being the folder that holds the run directory (for a ``-m`` job, the folder that holds the
  sweep directory): ``runs/mlflow.db`` for the default run directories. A SQLite store keeps its artifacts
  beside it, in ``mlartifacts/<experiment>``.
- ``<run dir>/tracking.json``: the ids of the run's MLflow run and W&B run; a resumed run continues them.
  ``<sweep dir>/tracking.json``: the sweep's parent MLflow run, made once (under a file lock) by the first
  job that starts. Both record the store's URI with its password masked (``storage.shown``); a password in
  ``logger.mlflow_uri`` is refused (the run's config records it), one in ``MLFLOW_TRACKING_URI`` is never written.

Each phase's Lightning logger writes into the run's MLflow / W&B run (``training.loggers``) with the phase as
the metric prefix (``probe/val/acc``); the test logs ``test/…``. At the end the run gets ``best/<monitor>``
(the validation score that picked the tested checkpoint), report.html, metrics.json, config.yaml and the
exports as artifacts, and ends FINISHED; an error ends it FAILED, an interrupt KILLED (the tag
``finetune.stopped`` says why). A search's trial that was pruned, or diverged, ends FINISHED with the tag
``finetune.pruned`` (why): the study records it PRUNED, no failure. A sweep's parent run is RUNNING while
a job runs; the job that ends last (no nested run RUNNING) ends it: KILLED when that job was interrupted,
else FINISHED.

Light at import (the config checks import ``training.loggers``, which imports this): MLflow, TensorBoard
and filelock are imported where they are used; W&B never is (its mode is decided from files and variables).
"""

from __future__ import annotations

import configparser
import json
import logging
import netrc
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse, urlsplit

import yaml
from omegaconf import DictConfig, OmegaConf

from finetune.run.artifacts import write_json
from finetune.run.console import console
from finetune.run.errors import ConfigError, FinetuneError, TrainingDiverged
from finetune.training.search import TrialPruned
from finetune.training.search.storage import shown

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TRACKING_FILE = "tracking.json"  # in a run directory and in a sweep directory
MLFLOW_DB = "mlflow.db"  # the default store, beside the run directories
DEFAULT_STORE = "the default MLflow store"  # store_key's name for it
MLFLOW_ARTIFACTS = "mlartifacts"  # a SQLite store's artifacts, beside its database
HPARAMS = "hparams"  # <run dir>/tensorboard/hparams: the run's TensorBoard hparams session
HPARAMS_SUFFIX = ".hparams"  # the session's event file ends so: a phase named "hparams" logs beside it
ARTIFACTS = ("report.html", "metrics.json", "config.yaml", "exports")  # what the run directory holds of them
WANDB_HOST = "https://api.wandb.ai"
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
STOPPED_TAG = "finetune.stopped"  # why a run ended FAILED or KILLED
PRUNED_TAG = "finetune.pruned"  # why a search's trial was pruned (it ended FINISHED)
# the schemes MLflow has a tracking store for (its tracking store registry), besides its plugins' entry points
MLFLOW_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
MLFLOW_PLUGINS = "mlflow.tracking_store"
DB_ENGINES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow reads "<engine>+<driver>://" as <engine>
log = logging.getLogger(__name__)


# --- where ------------------------------------------------------------------------------------------


def sweep_dir_of(run_dir: Path) -> Path | None:
    """The sweep directory of a ``-m`` job (Hydra's ``.hydra/hydra.yaml`` says MULTIRUN; a job's directory is
    ``<sweep dir>/<job>``); None for a single run."""
    try:
        hydra = (yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError):
        return None
    return run_dir.absolute().parent if hydra.get("mode") == "MULTIRUN" else None


def run_name(run_dir: Path) -> str:
    """``<run dir name>``, or ``<sweep dir name>/<job>`` for a ``-m`` job."""
    sweep = sweep_dir_of(run_dir)
    return f"{sweep.name}/{run_dir.name}" if sweep else run_dir.name


def mlflow_uri(configured: str | None, run_dir: Path, env: Mapping[str, str] = os.environ) -> str:
    """MLflow's store: ``logger.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` (SQLite) in
    the folder of the run directories."""
    if configured:
        return configured
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    runs = (sweep_dir_of(run_dir) or run_dir.absolute()).parent
    return f"sqlite:///{runs / MLFLOW_DB}"


def store_key(configured: str | None, env: Mapping[str, str] = os.environ) -> str:
    """Where ``mlflow_uri`` found the store: ``logger.mlflow_uri``, ``MLFLOW_TRACKING_URI`` or the default."""
    if configured:
        return "logger.mlflow_uri"
    return "MLFLOW_TRACKING_URI" if env.get("MLFLOW_TRACKING_URI") else DEFAULT_STORE


def check_mlflow_store(settings: Any, env: Mapping[str, str] = os.environ) -> None:
    """With ``logger.mlflow`` on: the store's URI names a scheme MLflow tracks to (before any work; MLflow is not
    imported), and ``logger.mlflow_uri`` holds no password (the run's config, its MLflow parameters and its
    W&B config record it). Else one ``ConfigError`` line."""
    if not settings.mlflow:
        return
    key, uri = store_key(settings.mlflow_uri, env), settings.mlflow_uri or env.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    scheme = urlparse(uri).scheme.lower()
    scheme = next((engine for engine in DB_ENGINES if scheme.startswith(engine)), scheme)
    scheme = "" if len(scheme) == 1 else scheme  # a Windows drive letter: a path
    if scheme not in MLFLOW_SCHEMES and scheme not in {e.name for e in entry_points(group=MLFLOW_PLUGINS)}:
        raise ConfigError(
            f"{key}={shown(uri)}: MLflow has no tracking store for {scheme}://; use sqlite:///<file>, "
            "postgresql://<user>@<host>/<db> (or mysql://, mssql://), http(s)://<tracking server> or databricks "
            "(docs/tracking.md)"
        )
    if key == "logger.mlflow_uri" and urlsplit(uri).password is not None:
        raise ConfigError(
            f"{key}={shown(uri)}: the URL holds a password, and the run's config records it (config.yaml, the "
            "MLflow parameters, the W&B config): leave logger.mlflow_uri out and set MLFLOW_TRACKING_URI instead "
            "(never recorded), or give the password to the driver (PGPASSWORD or ~/.pgpass for postgresql://, "
            "MLFLOW_TRACKING_PASSWORD for a tracking server)"
        )


@contextmanager
def store_errors(key: str, uri: str) -> Iterator[None]:
    """An error of the MLflow store at ``uri`` (MLflow's, or SQLAlchemy's for a database store) as one
    ``FinetuneError`` line naming ``key`` (``store_key``), the password masked."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # finetune[mlflow] installs it with MLflow

    try:
        yield
    except (MlflowException, SQLAlchemyError) as err:
        password = urlsplit(uri).password
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        reason = reason.replace(uri, shown(uri)).replace(password, "***") if password else reason
        where = f"{key}={shown(uri)}" if key != DEFAULT_STORE else f"the MLflow store {uri}"
        raise FinetuneError(
            f"{where}: MLflow cannot use this store: {reason} (fix the store, or turn MLflow off: logger.mlflow=false)"
        ) from None


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def read_record(directory: Path) -> dict[str, Any]:
    """``<directory>/tracking.json`` ({} when absent)."""
    try:
        return json.loads((directory / TRACKING_FILE).read_text())
    except FileNotFoundError:
        return {}


# --- what ---------------------------------------------------------------------------------------------


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": scalar}``: mappings and lists of mappings are walked (list items by
    index), lists of scalars stay one JSON value, None is ``"null"``."""
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, Mapping | list) for v in tree):
        items = enumerate(tree)
    else:
        value = json.dumps(tree) if tree is None or isinstance(tree, list) else tree
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flat_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def flat_params(tree: Any) -> dict[str, str]:
    """``flat_config`` as MLflow parameters: keys of the characters MLflow allows, keys and values cut to its
    limits (a cut value ends in ``...``), booleans as ``true`` / ``false``."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    params = {}
    for key, value in flat_config(tree).items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
        params[re.sub(r"[^\w.\- ]", "_", key)[:MAX_ENTITY_KEY_LENGTH]] = text
    return params


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A finished run's numbers to compare runs by: ``best/<monitor>`` and ``test/<metric>`` (metrics.json)."""
    out = {f"test/{k}": float(v) for k, v in (metrics.get("test") or {}).items() if _is_number(v)}
    checkpoint = metrics.get("checkpoint") or {}
    if _is_number(checkpoint.get("best")):
        out[f"best/{checkpoint['monitor']}"] = float(checkpoint["best"])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


# --- W&B ----------------------------------------------------------------------------------------------


def wandb_mode(env: Mapping[str, str] = os.environ, home: Path | None = None, cwd: Path | None = None) -> str:
    """``WANDB_MODE`` when the user set it, else ``online`` exactly when an API key is configured (as
    ``wandb login`` finds one: ``WANDB_API_KEY``, an identity token file, ``api_key`` in W&B's settings
    files, the W&B host in ``~/.netrc`` or ``$NETRC``), else ``offline``. Files and variables only: no network."""
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    home, cwd = home or Path.home(), cwd or Path.cwd()
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    config_dir = Path(env["WANDB_CONFIG_DIR"]) if env.get("WANDB_CONFIG_DIR") else home / ".config" / "wandb"
    for settings in (config_dir / "settings", cwd / "wandb" / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
        except configparser.Error:
            continue
        if parser.get("default", "api_key", fallback=None):
            return "online"
    host = urlparse(env.get("WANDB_BASE_URL") or WANDB_HOST).hostname
    for path in [Path(env["NETRC"])] if env.get("NETRC") else [home / ".netrc", home / "_netrc"]:
        try:
            if netrc.netrc(path).authenticators(host):
                return "online"
        except (OSError, netrc.NetrcParseError):
            continue
    return "offline"


def wandb_init_args(run_dir: Path, experiment: str) -> dict[str, Any]:
    """What every phase's WandbLogger of a run gets: the run's one W&B id (tracking.json; ``resume=allow``
    continues it), the resolved config (config.yaml), the sweep directory's name as the group of a ``-m``
    job, the mode of ``wandb_mode``."""
    sweep = sweep_dir_of(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except FileNotFoundError:
        config = None
    return {
        "project": experiment,
        "name": run_name(run_dir),
        "group": sweep.name if sweep else None,
        "id": (read_record(run_dir).get("wandb") or {}).get("id"),
        "resume": "allow",
        "mode": wandb_mode(),
        "save_dir": str(run_dir),
        "config": config,
    }


def _wandb_run(run_id: str) -> Any:
    """This run's W&B run, if this process started it (the loggers import wandb lazily), else None."""
    wandb = sys.modules.get("wandb")
    return wandb.run if wandb is not None and wandb.run is not None and wandb.run.id == run_id else None


def _finish_wandb(run_id: str, status: str) -> None:
    if _wandb_run(run_id) is not None:
        sys.modules["wandb"].finish(exit_code=0 if status == FINISHED else 1)


# --- MLflow ---------------------------------------------------------------------------------------------


class MlflowRun:
    """A finetune run's MLflow run in the store at ``uri`` (and a ``-m`` job's parent run)."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.sweep: Path | None = None
        with _store_lock(uri):  # a new SQLite store is created (migrated) by one process
            self.client = MlflowClient(uri)
            self.experiment_id = _experiment_id(self.client, experiment, uri)

    def start(self, run_dir: Path, record: Mapping[str, Any], params: dict[str, str]) -> str:
        """Continue the run ``record`` (the run's tracking.json) keeps, or create one; log the params it lacks."""
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        self.sweep = sweep = sweep_dir_of(run_dir)
        with self._sweep_lock():  # the parent RUNNING and this run RUNNING, as one step for the other jobs
            if sweep is not None:
                self.parent_id = self._sweep_parent(sweep)
            self.run_id = self._resume(record)
            if self.run_id is None:
                tags = {"finetune.run_dir": str(run_dir.absolute())}
                if self.parent_id:
                    tags |= {MLFLOW_PARENT_RUN_ID: self.parent_id, "finetune.sweep_dir": str(sweep)}
                created = self.client.create_run(self.experiment_id, run_name=run_name(run_dir), tags=tags)
                self.run_id = created.info.run_id
        logged = self.client.get_run(self.run_id).data.params  # a resume keeps what its first start logged
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        return self.run_id

    def log_results(self, summary: dict[str, float], run_dir: Path) -> None:
        """``best/<monitor>``, the test metrics the test's logger did not log, and the run's artifacts."""
        from mlflow.entities import Metric

        logged = self.client.get_run(self.run_id).data.metrics
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in summary.items() if k.startswith("best/") or k not in logged]
        self.client.log_batch(self.run_id, metrics=metrics)
        for name in ARTIFACTS:
            path = run_dir / name
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def end(self, status: str, tags: Mapping[str, str]) -> None:
        """The run ends ``status`` with ``tags`` (``STOPPED_TAG`` or ``PRUNED_TAG``: why; an earlier end's
        tag that no longer holds is removed). A sweep's parent ends with the last job that ends: KILLED when
        that job was interrupted, else FINISHED; it stays RUNNING while a nested run is RUNNING."""
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        if self.run_id is None:
            return
        with self._sweep_lock():
            old = self.client.get_run(self.run_id).data.tags
            for key in {STOPPED_TAG, PRUNED_TAG} & set(old) - set(tags):  # a resumed run that ended otherwise now
                self.client.delete_tag(self.run_id, key)
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value[:MAX_TAG_VAL_LENGTH])
            self.client.set_terminated(self.run_id, status)
            if self.parent_id is not None and not self._nested_running():
                self.client.set_terminated(self.parent_id, KILLED if status == KILLED else FINISHED)

    def _sweep_lock(self) -> AbstractContextManager:
        """The sweep directory's lock (a ``-m`` job): jobs start and end one at a time in the parent's eyes."""
        from filelock import FileLock

        return FileLock(self.sweep / ".tracking.lock") if self.sweep is not None else nullcontext()

    def _nested_running(self) -> bool:
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'",
            max_results=1,
        )
        return bool(found)

    def _sweep_parent(self, sweep: Path) -> str:
        """The sweep's parent run (made by the first job, inside ``_sweep_lock``), RUNNING while a job runs."""
        record = read_record(sweep)
        known = self._resume(record)
        if known is not None:
            return known
        tags = {"finetune.sweep_dir": str(sweep)}
        parent = self.client.create_run(self.experiment_id, run_name=sweep.name, tags=tags).info.run_id
        write_json(sweep / TRACKING_FILE, {**record, "mlflow": {"uri": shown(self.uri), "run_id": parent}})
        return parent

    def _resume(self, record: Mapping[str, Any]) -> str | None:
        """The run ``record`` (a tracking.json) keeps in this store, RUNNING again; None when it keeps none here
        or the run is gone."""
        from mlflow.exceptions import MlflowException

        known = record.get("mlflow") or {}
        run_id = known.get("run_id") if known.get("uri") == shown(self.uri) else None
        try:
            if not run_id or self.client.get_run(run_id).info.lifecycle_stage != "active":
                return None
        except MlflowException:
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """``logger.experiment``'s id, created (its artifacts beside a SQLite store) when new."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        db = _sqlite_file(uri)
        safe = re.sub(r"[^\w.-]", "_", name)
        where = (db.parent / MLFLOW_ARTIFACTS / safe).absolute().as_uri() if db else None
        try:
            return client.create_experiment(name, artifact_location=where)
        except MlflowException:  # another process's run (a tracking server's store) created it just now
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise FinetuneError(
            f"logger.experiment={name}: the MLflow experiment was deleted in {uri}; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or name another one"
        )
    return experiment.experiment_id


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """One process at a time opens a SQLite store (the first one creates its tables, which MLflow announces
    in INFO lines meant for its own users: kept quiet)."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    store_log = logging.getLogger("mlflow.store.db.utils")
    level = store_log.level
    store_log.setLevel(logging.WARNING)
    try:
        with FileLock(f"{db}.lock"):
            yield
    finally:
        store_log.setLevel(level)


# --- TensorBoard ------------------------------------------------------------------------------------------


def write_hparams(folder: Path, config: dict[str, Any], summary: dict[str, float]) -> None:
    """The run's hparams session in ``folder`` (replacing an earlier one of a re-tested run, never the curves
    of a phase named ``hparams`` that share the folder): the flat config and the summary metrics, so
    ``tensorboard --logdir runs`` compares runs in its HPARAMS tab."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for old in folder.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink()
    values = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat_config(config).items()}
    with SummaryWriter(log_dir=str(folder), filename_suffix=HPARAMS_SUFFIX) as writer:
        for summary_proto in hparams(values, summary):
            writer.file_writer.add_summary(summary_proto)
        for key, value in summary.items():
            writer.add_scalar(key, value)


# --- one run ------------------------------------------------------------------------------------------------


class Tracking:
    """A finetune run's tracking, on the process that writes the run (rank 0): ``start`` once the run directory
    holds its config (the MLflow run, W&B id, tracking.json), ``finish`` with metrics.json's record."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        check_mlflow_store(cfg.logger)  # before any work (the command line was checked too: ``precheck``)
        self.cfg, self.run_dir = cfg, run_dir
        self.mlflow: MlflowRun | None = None
        self.wandb_id: str | None = None
        self.ended = False

    def start(self) -> None:
        settings = self.cfg.logger
        record = read_record(self.run_dir)
        updated = dict(record)
        if settings.mlflow:
            uri = mlflow_uri(settings.mlflow_uri, self.run_dir)
            with store_errors(store_key(settings.mlflow_uri), uri):
                self.mlflow = MlflowRun(uri, settings.experiment)
                run_id = self.mlflow.start(self.run_dir, record, flat_params(resolved(self.cfg)))
            updated["mlflow"] = {"uri": shown(uri), "run_id": run_id}
        if settings.wandb:
            self.wandb_id = (record.get("wandb") or {}).get("id") or uuid.uuid4().hex[:8]
            updated["wandb"] = {"id": self.wandb_id}
        if updated != record:
            write_json(self.run_dir / TRACKING_FILE, updated)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Log the run's results (MLflow metrics + artifacts, W&B summary, TensorBoard hparams); end it FINISHED."""
        summary = summary_metrics(metrics)
        if self.mlflow is not None:
            uri = self.mlflow.uri
            with store_errors(store_key(self.cfg.logger.mlflow_uri), uri):
                self.mlflow.log_results(summary, self.run_dir)
            uri = shown(uri)
            console.print(f"mlflow: run {self.mlflow.run_id} in {uri} (mlflow ui --backend-store-uri {uri})")
        if self.wandb_id is not None and (wandb_run := _wandb_run(self.wandb_id)) is not None:
            wandb_run.summary.update(summary)
        if self.cfg.logger.tensorboard:
            write_hparams(self.run_dir / "tensorboard" / HPARAMS, resolved(self.cfg), summary)
        self.end(FINISHED)

    def end(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if self.mlflow is not None:
            self.mlflow.end(status, tags or {})
        if self.wandb_id is not None:
            _finish_wandb(self.wandb_id, status)


@contextmanager
def tracked(cfg: DictConfig, run_dir: Path) -> Iterator[Tracking]:
    """The run's ``Tracking`` for the block (a store MLflow cannot track to is refused here, before any work);
    leaving it ends what ``start`` began: ``ending`` says how."""
    tracking = Tracking(cfg, run_dir)
    try:
        yield tracking
    except BaseException as err:
        try:
            tracking.end(*ending(err, cfg.search.study is not None))
        except Exception as failure:  # the run's own error is the one to report
            log.warning("tracking could not record how the run ended: %s", failure)
        raise
    tracking.end(FINISHED)


def ending(err: BaseException, search_trial: bool) -> tuple[str, dict[str, str]]:
    """How a run that raised ``err`` ends, with the tag that says why: a search's trial that was pruned or
    diverged (the study records it PRUNED) FINISHED with ``finetune.pruned``; an interrupt (Ctrl-C, SIGTERM)
    KILLED and an error FAILED, with ``finetune.stopped``."""
    if isinstance(err, TrialPruned) or (search_trial and isinstance(err, TrainingDiverged)):
        return FINISHED, {PRUNED_TAG: str(err)}
    return (FAILED if isinstance(err, Exception) else KILLED), {STOPPED_TAG: str(err)}
