"""Tracking across runs (issue 28, part 2): one MLflow store beside the runs with one MLflow run per
finetune run (every phase and the test in it, the resolved config as parameters, the results as
artifacts), a sweep as a parent run with nested trials, TensorBoard's hparams session per run, and
W&B's online/offline decision made without the network. Real runs (digits, random test_resnet, 32 px,
two batches) read back through MLflow's own client and TensorBoard's event reader."""

from __future__ import annotations

import json
import shutil
import signal
import socket
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from finetune.commands import train as run_module
from finetune.run.errors import ConfigError, FinetuneError, RunInterrupted, TrainingDiverged
from finetune.training.loggers import LogContext, mlflow_logger
from finetune.training.search import TrialPruned
from finetune.training.tracking import (
    TRACKING_FILE,
    flat_params,
    tracked,
    wandb_init_args,
    wandb_mode,
    write_hparams,
)

from ..conftest import compose_config
from ..helpers import TINY, assert_refused, cli_in_process, one_torch_thread
from ..postgres import postgres_url  # noqa: F401

# TINY on timm's 0.5M-parameter test model; features not cached (a head-only phase would first run the backbone
# over every training image).
TRAINED = [*(a for a in TINY if not a.startswith("backbone.name=")), "backbone.name=test_resnet"]
TRAINED += ["data.cache_features=false"]
TWO_PHASES = [
    *TRAINED,
    "schedule.phases=[{name: probe, epochs: 1, freeze: all}, {name: top, epochs: 1, freeze: 0}]",
    "schedule.backbone_lr_mult=0.1",
]
PARENT = "mlflow.parentRunId"


def _client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _runs(client: MlflowClient, experiment: str = "finetune") -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, its tables made once (MLflow's schema migrations take a second or two): the
    tests after two_runs (which has finetune make its store) start from a copy of it."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    _client(path.parent).search_experiments()
    return path


def _store_from(empty_store: Path, folder: Path) -> None:
    """``folder/mlflow.db``: a copy of the empty store (folders made)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, folder / "mlflow.db")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Two finetune runs of two phases each (CSV + TensorBoard + MLflow), in ``<tmp>/runs/a`` and ``b``;
    no MLFLOW_TRACKING_URI, so the store is the default one beside them."""
    root = tmp_path_factory.mktemp("tracking") / "runs"
    runs = [root / "a", root / "b"]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for run_dir, lr in zip(runs, ("1.0e-3", "2.0e-3")):
            run_module.train(compose_config(*TWO_PHASES, "logger=many", f"schedule.lr={lr}"), run_dir)
    return root, runs


def test_two_runs_are_two_rows_of_one_store_with_config_metrics_and_artifacts(two_runs):
    root, runs = two_runs
    client = _client(root)
    found = _runs(client)
    assert len(found) == 2 and not any(PARENT in r.data.tags for r in found)  # one top-level row per run
    by_dir = {r.data.tags["finetune.run_dir"]: r for r in found}
    assert set(by_dir) == {str(r.absolute()) for r in runs}
    for run_dir in runs:
        run = by_dir[str(run_dir.absolute())]
        config = OmegaConf.load(run_dir / "config.yaml")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
        assert run.data.params["schedule.lr"] == str(config.schedule.lr)
        assert run.data.params["schedule.phases.1.name"] == "top" and run.data.params["backbone.name"] == "test_resnet"
        for key, value in metrics["test"].items():
            assert run.data.metrics[f"test/{key}"] == pytest.approx(value, abs=1e-6)
        monitor = metrics["checkpoint"]["monitor"]
        assert run.data.metrics[f"best/{monitor}"] == pytest.approx(metrics["checkpoint"]["best"], abs=1e-6)
        for phase in ("probe", "top"):  # both phases in the one run, prefixed with the phase
            assert len(client.get_metric_history(run.info.run_id, f"{phase}/{monitor}")) == 1
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.html", "metrics.json", "config.yaml", "exports"} <= artifacts
        assert client.list_artifacts(run.info.run_id, "exports")
        assert json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]["run_id"] == run.info.run_id
        assert not (run_dir / "mlflow.db").exists() and not (run_dir / "mlruns").exists()
    assert (root / "mlartifacts").is_dir()  # the artifacts beside the store, not in a run


def test_tensorboard_hparams_session_holds_the_config_and_final_metrics(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, runs = two_runs
    for run_dir in runs:
        events = EventAccumulator(str(run_dir / "tensorboard" / "hparams"))
        events.Reload()
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        config = OmegaConf.load(run_dir / "config.yaml")
        hparams = start.session_start_info.hparams
        assert hparams["schedule.lr"].number_value == pytest.approx(config.schedule.lr)
        assert hparams["backbone.name"].string_value == "test_resnet"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        best = f"best/{metrics['checkpoint']['monitor']}"
        names = {m.name.tag for m in experiment.experiment.metric_infos}
        assert {best, *(f"test/{k}" for k in metrics["test"])} <= names
        assert events.Scalars(best)[0].value == pytest.approx(metrics["checkpoint"]["best"], abs=1e-6)


def test_a_grid_sweep_is_one_parent_run_with_a_nested_run_per_job(tmp_path, monkeypatch, empty_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _store_from(empty_store, tmp_path / "runs")
    sweep = tmp_path / "runs" / "sweep"
    with one_torch_thread():
        out = cli_in_process(
            "-m", *TRAINED, "logger=mlflow", "schedule.lr=1e-3,1e-2", f"hydra.sweep.dir={sweep}", cwd=tmp_path
        )
    assert out.returncode == 0, out.stderr[-3000:]
    found = _runs(_client(tmp_path / "runs"))
    parents = [r for r in found if PARENT not in r.data.tags]
    assert len(found) == 3 and len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    children = {r.data.params["schedule.lr"]: r for r in found if r.data.tags.get(PARENT) == parent.info.run_id}
    assert set(children) == {"0.001", "0.01"}
    assert all(r.info.status == "FINISHED" and "test/acc" in r.data.metrics for r in children.values())
    assert json.loads((sweep / TRACKING_FILE).read_text())["mlflow"]["run_id"] == parent.info.run_id


def test_a_resumed_run_continues_its_mlflow_run_and_the_status_says_how_it_ended(tmp_path, monkeypatch, empty_store):
    """The run lifecycle alone (no training): KILLED on an interrupt, FAILED on an error, and a resume of the
    same run directory continues the same MLflow run to FINISHED; a store chosen with logger.mlflow_uri."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store" / "mlflow.db"
    _store_from(empty_store, store.parent)
    cfg = compose_config(*TINY, "logger=mlflow", f"logger.mlflow_uri=sqlite:///{store}")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{store}")
    with pytest.raises(RunInterrupted), tracked(cfg, run_dir) as tracking:
        tracking.start()
        raise RunInterrupted("stopped", signal.SIGTERM)
    (run,) = _runs(client)
    assert run.info.status == "KILLED" and run.data.tags["finetune.stopped"] == "stopped"
    with pytest.raises(ValueError), tracked(cfg, run_dir) as tracking:
        tracking.start()
        raise ValueError("boom")
    failed = client.get_run(run.info.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["finetune.stopped"] == "boom"
    with tracked(cfg, run_dir) as tracking:
        tracking.start()
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        tracking.finish({"test": {"acc": 0.5}, "checkpoint": {"monitor": "val/acc", "best": 0.25}})
    (again,) = _runs(client)  # still one run
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert "finetune.stopped" not in again.data.tags
    assert again.data.metrics["best/val/acc"] == 0.25 and again.data.params["schedule.lr"] == str(cfg.schedule.lr)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # logger.mlflow_uri wins over the default


def _sweep_job(sweep: Path, job: str, cfg) -> Path:
    """A ``-m`` job's run directory as Hydra leaves it (``.hydra/hydra.yaml`` says MULTIRUN)."""
    run_dir = sweep / job
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def test_pruned_and_diverged_trials_end_finished_tagged_pruned_and_the_sweep_ends_with_its_last_job(
    tmp_path, monkeypatch, empty_store
):
    """Two trials of a search run at once: the first is pruned while the second still runs (the sweep's parent
    stays RUNNING), the second diverges (a search prunes it too) and, the last job to end, finishes the parent.
    The same divergence outside a search is a FAILED run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trial = compose_config(*TINY, "logger=mlflow", "search.study=s", "search.trial=0")
    sweep = tmp_path / "runs" / "search"
    first, second = _sweep_job(sweep, "0", trial), _sweep_job(sweep, "1", trial)
    _store_from(empty_store, tmp_path / "runs")
    client = _client(tmp_path / "runs")
    record = {"epoch": 1, "phase": "probe", "monitor": "val/acc", "value": 0.1}

    def status(run_dir: Path) -> str:
        return client.get_run(json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"]["run_id"]).info.status

    with pytest.raises(TrainingDiverged), tracked(trial, second) as running:
        running.start()
        with pytest.raises(TrialPruned), tracked(trial, first) as pruned:
            pruned.start()
            raise TrialPruned(record)
        assert status(first) == "FINISHED" and status(sweep) == "RUNNING"  # the other trial still runs
        raise TrainingDiverged("loss is nan")
    runs = {r.info.run_name: r for r in _runs(client)}
    assert {name: r.info.status for name, r in runs.items()} == dict.fromkeys(
        ["search", "search/0", "search/1"], "FINISHED"
    )
    assert runs["search/0"].data.tags["finetune.pruned"] == str(TrialPruned(record))
    assert runs["search/1"].data.tags["finetune.pruned"] == "loss is nan"
    assert not any("finetune.stopped" in r.data.tags for r in runs.values())
    plain = tmp_path / "runs" / "plain"
    plain.mkdir()
    with pytest.raises(TrainingDiverged), tracked(compose_config(*TINY, "logger=mlflow"), plain) as tracking:
        tracking.start()
        raise TrainingDiverged("loss is nan")
    (diverged,) = [r for r in _runs(client) if r.info.run_name == "plain"]
    assert diverged.info.status == "FAILED" and diverged.data.tags["finetune.stopped"] == "loss is nan"
    assert "finetune.pruned" not in diverged.data.tags


def test_a_store_mlflow_cannot_use_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    typo = cli_in_process(*TINY, "logger=mlflow", "logger.mlflow_uri=sqllite:///x.db", cwd=tmp_path)
    assert_refused(typo, "logger.mlflow_uri=sqllite:///x.db: MLflow has no tracking store for sqllite://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqllite:///x.db")
    from_env = cli_in_process(*TINY, "logger=mlflow", cwd=tmp_path)
    assert_refused(from_env, "MLFLOW_TRACKING_URI=sqllite:///x.db: MLflow has no tracking store")
    assert cli_in_process(*TINY, "logger=csv", "plan=true", cwd=tmp_path).returncode == 0  # MLflow off: not asked
    assert not (tmp_path / "runs").exists()  # refused before Hydra made a run directory
    run_dir = tmp_path / "api"
    run_dir.mkdir()
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI=sqllite:///x.db"):  # the API and resume= path
        run_module.train(compose_config(*TINY, "logger=mlflow"), run_dir)
    assert list(run_dir.iterdir()) == []  # before the weights, the data and the run record
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "mlruns").as_uri()  # a scheme MLflow knows, a store it refuses when opened
    with (
        pytest.raises(FinetuneError) as refused,
        tracked(compose_config(*TINY, "logger=mlflow", f"logger.mlflow_uri={store}"), run_dir) as tracking,
    ):
        tracking.start()
    message = str(refused.value)
    assert message.startswith(f"logger.mlflow_uri={store}: MLflow cannot use this store: ") and "\n" not in message
    assert "MLFLOW_ALLOW_FILE_STORE" in message  # MLflow's own reason


def test_a_store_password_is_never_recorded_or_printed(tmp_path, monkeypatch, capsys, postgres_url):  # noqa: F811
    secret = "s3cret-pw"
    with_password = postgres_url.replace("@", f":{secret}@", 1)  # the test server trusts any password
    shown = postgres_url.replace("@", ":***@", 1)
    refused = cli_in_process(*TINY, "logger=mlflow", f"logger.mlflow_uri={with_password}", cwd=tmp_path)
    line = assert_refused(refused, f"logger.mlflow_uri={shown}: the URL holds a password")
    assert secret not in refused.stderr + refused.stdout and "MLFLOW_TRACKING_URI" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_password)
    monkeypatch.chdir(tmp_path)  # a database store keeps its artifacts in ./mlruns (MLflow's default)
    cfg = compose_config(*TINY, "logger=mlflow")
    run_dir = _sweep_job(tmp_path / "runs" / "sweep", "0", cfg)
    with tracked(cfg, run_dir) as tracking:
        tracking.start()
        context = LogContext(run_dir, "probe", "probe", cfg.logger)
        mlflow_logger(context).log_metrics({"val/acc": 0.5}, step=0)  # a phase's logger reaches the store
        tracking.finish({"test": {"acc": 0.5}, "checkpoint": {"monitor": "val/acc", "best": 0.25}})
    printed = capsys.readouterr()
    assert f"in {shown}" in printed.out and secret not in printed.out + printed.err
    for folder in (run_dir, run_dir.parent):
        assert json.loads((folder / TRACKING_FILE).read_text())["mlflow"]["uri"] == shown
    client = MlflowClient(postgres_url)
    runs = _runs(client)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    (job,) = [r for r in runs if PARENT in r.data.tags]
    assert client.get_metric_history(job.info.run_id, "probe/val/acc")[0].value == 0.5
    for run in runs:
        assert not any(secret in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])


def test_a_phase_named_hparams_keeps_its_tensorboard_curves(tmp_path):
    """The run's hparams session shares ``tensorboard/hparams`` with a phase of that name: writing it again
    (a re-tested run) replaces the session only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "tensorboard" / "hparams"
    with SummaryWriter(log_dir=str(folder)) as phase:
        phase.add_scalar("val/acc", 0.5, 0)
    for best in (0.25, 0.75):
        write_hparams(folder, {"schedule": {"lr": 0.1}}, {"best/val/acc": best})
    events = EventAccumulator(str(folder))
    events.Reload()
    assert [e.value for e in events.Scalars("val/acc")] == [0.5]
    assert [e.value for e in events.Scalars("best/val/acc")] == [0.75]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_params_are_flat_within_mlflow_limits():
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    params = flat_params({"a": {"b": 1, "c": [1, 2], "d": [{"e": None}], "f": "x" * 10_000, "g h?": True}})
    assert params["a.b"] == "1" and params["a.c"] == "[1, 2]" and params["a.d.0.e"] == "null"
    assert params["a.g h_"] == "true"
    assert len(params["a.f"]) == MAX_PARAM_VAL_LENGTH and params["a.f"].endswith("...")
    assert all(len(k) <= MAX_ENTITY_KEY_LENGTH for k in flat_params({"k" * 400: 1}))


def test_wandb_is_online_exactly_when_a_key_is_configured_without_asking_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the W&B mode was decided over the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    assert wandb_mode({}, home, work) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "k" * 40}, home, work) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, home, work) == "disabled"  # the user's own
    netrc = home / ".netrc"
    netrc.write_text("machine example.org login user password p\n")
    assert wandb_mode({}, home, work) == "offline"  # a key for another host
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_mode({}, home, work) == "online"  # `wandb login`
    assert wandb_mode({"WANDB_BASE_URL": "https://wandb.example.org"}, home, work) == "offline"
    other = tmp_path / "netrc"
    other.write_text("machine wandb.example.org login user password k\n")
    other.chmod(0o600)
    assert wandb_mode({"WANDB_BASE_URL": "https://wandb.example.org", "NETRC": str(other)}, home, work) == "online"
    netrc.unlink()
    settings = home / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text("[default]\napi_key = " + "k" * 40 + "\n")
    assert wandb_mode({}, home, work) == "online"


def test_wandb_is_one_run_per_finetune_run_grouped_by_sweep(tmp_path, monkeypatch):
    """The arguments every phase's WandbLogger gets: one id for all phases (kept in the run directory for
    a resume), the resolved config, and the sweep directory's name as the group of a ``-m`` job."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = compose_config(*TINY, "logger=csv", "logger.wandb=true", "logger.experiment=digits")
    run_dir = _sweep_job(tmp_path / "runs" / "multirun_x", "3", cfg)
    with tracked(cfg, run_dir) as tracking:
        tracking.start()
    args = wandb_init_args(run_dir, "digits")
    assert args["id"] == json.loads((run_dir / TRACKING_FILE).read_text())["wandb"]["id"]
    with tracked(cfg, run_dir) as tracking:  # resumed: the same W&B run
        tracking.start()
    assert wandb_init_args(run_dir, "digits")["id"] == args["id"]
    assert args["group"] == "multirun_x" and args["project"] == "digits" and args["name"] == "multirun_x/3"
    assert args["mode"] == "offline" and args["resume"] == "allow" and Path(args["save_dir"]) == run_dir
    assert args["config"]["schedule"]["lr"] == cfg.schedule.lr
    single = tmp_path / "runs" / "single"
    single.mkdir()
    with tracked(cfg, single) as tracking:
        tracking.start()
    assert wandb_init_args(single, "digits")["group"] is None
