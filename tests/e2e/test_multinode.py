"""Several nodes, simulated on this machine (issue 27): two torchrun launchers (``--nnodes=2``) and two SLURM
tasks started as ``srun`` would, each rendezvousing on 127.0.0.1, running ``finetune.commands.worker`` as
docs/guides/scale.md and docs/multinode.md show. No real cluster, no GPU: gloo on CPU, one process per "node".

Which process writes what is recorded by an audit hook (``sitecustomize``, ``sys.addaudithook``) in every
process of a node: each file opened for writing, each directory made, each rename or removal under the test's
folder. The hook is checked to see rank 0's writes, so "rank 1 wrote nothing" can fail."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ..helpers import cli_in_process, compose_config, finetune_env, lightning_ranks, one_torch_thread

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "docs" / "examples" / "finetune.sbatch"

# Records every write under WRITES_UNDER to WRITES_LOG ("<event> <path>" lines), in every process it is loaded
# in (torchrun's agent and its workers inherit PYTHONPATH). os.write to an fd opened first: not audited itself.
SITECUSTOMIZE = r"""
import os
import sys

if os.environ.get("WRITES_LOG"):
    _under = os.path.realpath(os.environ["WRITES_UNDER"]) + os.sep
    _log = os.open(os.environ["WRITES_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def _record(event, path):
        try:
            path = os.path.realpath(os.path.join(os.getcwd(), os.fsdecode(path)))
        except (TypeError, ValueError):
            return
        if path.startswith(_under):
            os.write(_log, f"{event} {path}\n".encode())

    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & _writing):
                _record(event, args[0])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.symlink", "shutil.rmtree"):
            _record(event, args[0])
        elif event == "os.rename":
            _record(event, args[1])

    sys.addaudithook(_hook)
"""

# The two processes of a run compared with one process on the same global batch: float64, SGD, live backbone (no
# feature cache). Two phases: the head alone, then every stage unfrozen. convnext_atto, not resnet10t: its
# LayerNorms work per sample, so a batch split over ranks computes what the whole batch does (a trained
# BatchNorm normalises each rank's half batch by its own statistics, and SyncBatchNorm needs a GPU).
EPOCHS, BATCHES, LR, MOMENTUM, GLOBAL_BATCH = 1, 2, 1e-2, 0.9, 8
RUN = [
    "backbone=convnext_tiny",
    "backbone.name=convnext_atto",
    "dataset.image_size=32",
    "trainer.progress_bar=false",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "schedule=fastai_like",
    f"schedule.epochs={EPOCHS}",
    "schedule.optimizer=sgd",
    "schedule.scheduler=cosine",
    "schedule.warmup_epochs=0",
    f"schedule.lr={LR}",
    f"schedule.momentum={MOMENTUM}",
    f"trainer.limit_train_batches={BATCHES}",
    "trainer.limit_test_batches=4",
    "trainer.deterministic=true",
    "trainer.precision=64-true",
    "data.cache_features=false",
    "checkpoints.keep=both",
]
PHASES = ("frozen", "unfrozen")

# One entry per kind of data a multi-node run is tested with: its overrides ({pack}: the path of SIXTEEN's pack).
# The stream: no loader workers, so each rank's share is LitData's per-rank split alone.
DATASETS = {"digits": [], "streaming": ["dataset=streaming", "dataset.uri={pack}", "dataset.num_workers=0"]}
# Digits carved to 16 training images: one epoch is 2 ranks x BATCHES x GLOBAL_BATCH / 2, nothing left over.
SIXTEEN = ["dataset=digits", "dataset.val_fraction=0.95", "dataset.test_fraction=0.0412"]

# Tolerance of the one-vs-two-process comparison, from the numbers (as tests/e2e/test_distributed.py): summing n
# terms in another order moves a sum by at most n * eps * sum|terms| (Higham, ch. 4). The longest sums here are
# convnext_atto's last MLP layers (4 x 320 inputs). A step passes its errors through at most 2 * DEPTH such sums
# (forward and backward through its 40 weighted layers and as many LayerNorms); they add up over the steps, and
# momentum carries each step's for up to 1 / (1 - momentum) steps. Each tensor is off relative to its own size
# plus its update, lr * |grad| per step (|grad| <~ 1 here). Measured: |delta| <= 3e-17, tolerances ~3e-10.
EPS64 = torch.finfo(torch.float64).eps
LONGEST_SUM, DEPTH = 4 * 320, 2 * 40
STEPS, GAIN = len(PHASES) * EPOCHS * BATCHES, 1 / (1 - MOMENTUM)


@pytest.fixture(scope="module")
def atto_weights(tmp_path_factory) -> Path:
    """Stand-in "pretrained" convnext_atto weights (random init, seed 0), as backbone.weights=<file>."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "convnext_atto.safetensors"
    save_file(timm.create_model("convnext_atto").state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def sixteen_pack(tmp_path_factory) -> Path:
    """SIXTEEN packed by ``finetune pack`` (16 train images), for dataset=streaming."""
    from finetune.commands.pack import pack_command

    out = tmp_path_factory.mktemp("pack") / "digits16"
    pack_command([*SIXTEEN, f"out={out}"])
    assert json.loads((out / "finetune-pack.json").read_text())["splits"]["train"]["size"] == 2 * BATCHES * 4
    return out


def samples_read(record: Path) -> dict[int, list[int]]:
    """Rank -> the training sample indices it read (every phase), from the streams' debug record."""
    seen: dict[int, list[int]] = {}
    for file in record.iterdir():
        for line in file.read_text().splitlines():
            rank, _, index = map(int, line.split())
            seen.setdefault(rank, []).append(index)
    return seen


WORKER = ("-m", "finetune.commands.worker", "run_dir=runs/exp", "config=exp.yaml")  # as docs/guides/scale.md shows


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(base: Path, node: int, **extra: str) -> dict[str, str]:
    """The environment of "node" ``node``: offline, one thread, its writes recorded in ``base/node<n>.writes``."""
    inject = base / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))
    log = base / f"node{node}.writes"
    return {**finetune_env(), "PYTHONPATH": path, "WRITES_UNDER": str(base), "WRITES_LOG": str(log), **extra}


def compose(base: Path, *overrides: str) -> Path:
    """``finetune --cfg job --resolve <overrides> > exp.yaml`` (docs/guides/scale.md), in ``base``."""
    out = cli_in_process("--cfg", "job", "--resolve", *overrides, cwd=base)  # its output only: in this process
    assert out.returncode == 0, out.stderr[-3000:]
    (base / "exp.yaml").write_text(out.stdout)
    return base / "exp.yaml"


def finish(processes: list[subprocess.Popen], timeout: float = 150) -> list[str]:
    """Wait for every process; fail with their output if any failed. Their stdout."""
    outputs = [p.communicate(timeout=timeout) for p in processes]
    if any(p.returncode for p in processes):
        report = "\n".join(
            f"--- process {i}: exit {p.returncode}\n{err[-4000:]}\n{out[-1000:]}"
            for i, (p, (out, err)) in enumerate(zip(processes, outputs))
        )
        pytest.fail(report, pytrace=False)
    return [out for out, _ in outputs]


def writes(base: Path, node: int) -> list[str]:
    log = base / f"node{node}.writes"
    return log.read_text().splitlines() if log.exists() else []


def assert_rank_zero_alone_wrote(base: Path, run: Path) -> None:
    """Rank 0's node wrote the run (the hook sees it), rank 1's node wrote nothing under ``base``."""
    run = run.resolve()
    assert f"os.rename {run / 'metrics.json'}" in writes(base, 0), writes(base, 0)[-20:]  # written atomically
    assert writes(base, 1) == []


def checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_two_torchrun_nodes_match_one_process_and_rank_zero_alone_writes(tmp_path, atto_weights, dataset, request):
    """docs/guides/scale.md: compose once, then one ``torchrun --nnodes=2`` per node running the worker; here both
    "nodes" are this machine (127.0.0.1, a free port, static rendezvous with --node_rank). Streaming: each
    node reads its own half of the pack, together the epoch once; the digits variant compares with one process."""
    documented = (REPO / "docs" / "multinode.md").read_text()
    assert "--nproc_per_node=8 --node_rank=$NODE_RANK" in documented and " ".join(WORKER) in documented
    streaming = dataset == "streaming"
    pack = request.getfixturevalue("sixteen_pack") if streaming else None
    run_args = [*RUN, f"backbone.weights={atto_weights}", *(o.format(pack=pack) for o in DATASETS[dataset])]
    if not streaming:  # the stream's order depends on the number of ranks: no one-process twin (in this process)
        with one_torch_thread():
            one = cli_in_process(*run_args, f"schedule.batch_size={GLOBAL_BATCH}", "hydra.run.dir=one", cwd=tmp_path)
        assert one.returncode == 0, one.stderr[-3000:]
    record = tmp_path / "read"  # outside nodes/: not a write of the run
    record.mkdir()
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    compose(
        nodes,
        *run_args,
        "trainer=ddp",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        f"schedule.batch_size={GLOBAL_BATCH // 2}",
    )
    port = free_port()
    launchers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"),
                *(f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}"),
                *WORKER,
            ],
            cwd=nodes,
            env=node_env(nodes, node, FINETUNE_STREAM_RECORD=str(record)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    stdout = finish(launchers)
    two = nodes / "runs" / "exp"
    assert "test results" in stdout[0] and "test results" not in stdout[1]  # rank 0 alone reports
    assert sorted(p.name for p in nodes.iterdir()) == ["exp.yaml", "inject", "node0.writes", "node1.writes", "runs"]
    assert [p.name for p in (nodes / "runs").iterdir()] == ["exp"]  # one run directory
    assert_rank_zero_alone_wrote(nodes, two)

    ranks = json.loads((two / "metrics.json").read_text())["ddp"]["param_checksums_per_rank"]
    assert set(ranks) == set(PHASES)
    for phase, checksums in ranks.items():  # bitwise (RANKS_IDENTICAL in test_distributed.py)
        assert len(checksums) == 2 and checksums[0] == checksums[1], phase
    assert ranks["frozen"] != ranks["unfrozen"]
    if streaming:
        seen = samples_read(record)
        assert sorted(seen) == [0, 1], seen  # each node read the stream
        shares = [set(seen[rank]) for rank in (0, 1)]
        assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(16)), seen  # disjoint; one epoch
        for rank in (0, 1):  # every sample of its share once per phase (one epoch each)
            assert sorted(seen[rank]) == sorted(list(shares[rank]) * len(PHASES)), seen
        return
    assert not any(record.iterdir())  # nothing recorded without a stream

    single, double = checkpoint(tmp_path / "one"), checkpoint(two)
    assert single.keys() == double.keys()
    floats = [k for k, v in single.items() if v.is_floating_point()]
    assert all(single[k].dtype == torch.float64 for k in floats)
    for key in floats:
        scale = single[key].abs().max().item() + LR * GAIN
        tolerance = STEPS * GAIN * 2 * DEPTH * LONGEST_SUM * EPS64 * scale  # ~2e-9 x scale
        # A real divergence is lr-sized: gradients summed over 2 ranks instead of averaged move a tensor by ~1e-3.
        torch.testing.assert_close(double[key], single[key], atol=tolerance, rtol=0, msg=key)
    stem = load_file(atto_weights)["stem.0.weight"].double()
    assert (single["model.backbone.stem.0.weight"] - stem).abs().max() > 1e-6  # the backbone trained, and compared
    # Accuracy is k / N: one prediction more or less changes it by 1/N, so it is identical.
    tests = [json.loads((d / "metrics.json").read_text())["test"] for d in (tmp_path / "one", two)]
    assert tests[0]["acc"] == tests[1]["acc"]


# What srun sets in task 1 of a job of 2 nodes x 1 task (sbatch --nodes=2 --ntasks-per-node=1).
SRUN_TASK_1 = {
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NAME": "finetune",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODELIST": "gpu[07-08]",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
}
# What torchrun adds in its worker of local rank 0 on the second of 2 nodes of 4 processes each.
TORCHRUN_NODE_1 = {
    "TORCHELASTIC_RUN_ID": "job",
    "RANK": "4",
    "LOCAL_RANK": "0",
    "GROUP_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
LAUNCHER_VARIABLES = re.compile(r"(SLURM_|TORCHELASTIC_|MASTER_|GROUP_|LOCAL_)\w*|RANK|WORLD_SIZE|LOCAL_RANK")


def clear_launcher_variables(monkeypatch) -> None:
    """No launcher's variables, for this test only: also those Lightning sets itself (SLURMEnvironment sets
    MASTER_ADDR and MASTER_PORT), which later subprocesses would inherit."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # recorded, so removed again after the test
    for name in [n for n in os.environ if LAUNCHER_VARIABLES.fullmatch(n)]:
        monkeypatch.delenv(name)


def cluster_environment(monkeypatch, env: dict[str, str], devices: int, num_nodes: int):
    """The cluster environment a phase's Trainer (``make_trainer``'s plugins) runs in under ``env`` alone."""
    import lightning as L

    from finetune.training.interrupts import slurm_plugins

    clear_launcher_variables(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ranks = lightning_ranks()  # the Trainer sets the process's rank-zero rank from env: later tests need theirs
    try:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            num_nodes=num_nodes,
            strategy="ddp",
            plugins=slurm_plugins(),
            logger=False,
        )
    finally:
        lightning_ranks(*ranks)
    return trainer.strategy.cluster_environment


def test_srun_tasks_run_in_lightnings_slurm_environment(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from finetune.training.distributed import is_global_zero, launched_by_a_launcher

    env = cluster_environment(monkeypatch, SRUN_TASK_1, devices=1, num_nodes=2)
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue  # our SIGUSR1 handler requeues
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (2, 1, 0, 1)
    assert (env.main_address, env.main_port) == ("gpu07", 15000 + 3456)  # first node; port from the job id
    assert launched_by_a_launcher() and not is_global_zero()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert is_global_zero()
    with pytest.raises(ValueError, match="ntasks-per-node=1"):  # exp.yaml composed for another layout
        env.validate_settings(num_devices=4, num_nodes=2)


def test_torchrun_inside_a_slurm_job_runs_in_torchruns_environment(monkeypatch):
    """``srun --ntasks-per-node=1 torchrun …``: SLURM's variables count the torchrun launchers, not the
    workers; Lightning prefers torchrun's environment there, and our plugins must not override it."""
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    from finetune.training.distributed import is_global_zero, launched_by_a_launcher

    env = cluster_environment(monkeypatch, {**SRUN_TASK_1, **TORCHRUN_NODE_1}, devices=4, num_nodes=2)
    assert isinstance(env, TorchElasticEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 4, 0, 1)
    assert launched_by_a_launcher() and not is_global_zero()


# A stand-in srun: starts the job's SLURM_NTASKS tasks on this machine with the variables srun gives each task
# (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID), each node's writes recorded apart; its arguments go to SRUN_CALLS.
# With SRUN_RECORD_ONLY set it starts nothing.
SRUN = r"""#!/bin/bash
echo "$*" >> "$SRUN_CALLS"
[ -n "${SRUN_RECORD_ONLY:-}" ] && exit 0
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  node=$((i / SLURM_NTASKS_PER_NODE))
  SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) SLURM_NODEID=$node \
    WRITES_LOG="$WRITES_DIR/node$node.writes" "$@" > "$SRUN_OUT/task$i.out" 2> "$SRUN_OUT/task$i.err" &
  pids+=($!)
done
code=0
for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
exit $code
"""
WORKER_LINE = re.compile(r"srun python -m finetune\.commands\.worker(?: \w+=\S+)+")


def sbatch_options() -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", SBATCH.read_text(), re.M))


def worker_lines(text: str) -> set[str]:
    """The ``srun … worker key=value …`` command lines in ``text``, each value replaced by ``…``."""
    return {re.sub(r'=("[^"]*"|\S+)', "=…", m.group(0)) for m in WORKER_LINE.finditer(text.replace('"', ""))}


def test_the_sbatch_example_asks_one_task_per_gpu_and_its_trainer_overrides_compose():
    options = sbatch_options()
    assert options["ntasks-per-node"] == options["gpus-per-node"]
    assert options["signal"] == "SIGUSR1@90" and "#SBATCH --requeue" in SBATCH.read_text()
    cfg = compose_config(
        "trainer=ddp", f"trainer.devices={options['ntasks-per-node']}", f"trainer.num_nodes={options['nodes']}"
    )
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)
    documented = worker_lines((REPO / "docs/guides/scale.md").read_text()) | worker_lines(
        (REPO / "docs/multinode.md").read_text()
    )
    first_start = "srun python -m finetune.commands.worker run_dir=… config=…"
    assert first_start in worker_lines(SBATCH.read_text()) and documented >= {first_start}, documented


@pytest.mark.slow
def test_the_sbatch_example_trains_two_srun_tasks_then_resumes_when_requeued(tmp_path, weights_file):
    """docs/examples/finetune.sbatch run by bash as SLURM would on a job of 2 nodes x 1 task: its srun is a
    stand-in starting both tasks here, so the SLURM path (Lightning's SLURMEnvironment, rank 0 from
    SLURM_PROCID) really trains; then its requeued start, recorded only."""
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    (bin_dir / "srun").write_text(SRUN)
    (bin_dir / "srun").chmod(0o755)
    job = tmp_path / "job"
    job.mkdir()
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "finetune",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SRUN_CALLS": str(tmp_path / "srun.calls"),
        "SRUN_OUT": str(out),
        "WRITES_DIR": str(tmp_path),
    }
    env = {**node_env(job, 0), **slurm}
    env.pop("WRITES_LOG")  # the stand-in srun names each node's log
    env.pop("MASTER_ADDR", None)  # the rendezvous address comes from SLURM_NODELIST
    overrides = [
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights_file}",
        "dataset.image_size=32",
        "schedule=linear_probe",
        "schedule.epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.progress_bar=false",
    ]
    first = subprocess.run(
        ["bash", str(SBATCH), *overrides], cwd=job, env=env, capture_output=True, text=True, timeout=150
    )
    tasks = [(out / f"task{i}.err").read_text()[-3000:] for i in (0, 1) if (out / f"task{i}.err").exists()]
    assert first.returncode == 0, (first.stderr[-3000:], tasks)
    run = job / "runs" / "slurm-4242"
    assert "first start of job 4242" in first.stdout
    worker = "python -m finetune.commands.worker run_dir=runs/slurm-4242 config=runs/slurm-4242.yaml"
    assert (tmp_path / "srun.calls").read_text().splitlines() == [worker]
    assert sorted(p.name for p in (job / "runs").iterdir()) == ["slurm-4242", "slurm-4242.yaml"]
    assert "test results" in (out / "task0.out").read_text() and "test results" not in (out / "task1.out").read_text()
    # node 1 wrote nothing under the job's folder (its log is outside it: WRITES_DIR is the test's folder)
    assert f"os.rename {(run / 'metrics.json').resolve()}" in writes(tmp_path, 0)
    assert writes(tmp_path, 1) == []
    ranks = json.loads((run / "metrics.json").read_text())["ddp"]["param_checksums_per_rank"]["probe"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]

    # Requeued (same SLURM_JOB_ID, so the same run directory): the workers continue it from its last checkpoint.
    again = subprocess.run(
        ["bash", str(SBATCH), *overrides],
        cwd=job,
        env={**env, "SRUN_RECORD_ONLY": "1", "SLURM_RESTART_COUNT": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "start 1 of job 4242" in again.stdout
    assert (tmp_path / "srun.calls").read_text().splitlines() == [worker, f"{worker} resume=runs/slurm-4242"]


@pytest.mark.parametrize(
    "launcher, started",
    [
        ({"LOCAL_RANK": "0", "RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2"}, "torchrun started 1 process"),
        ({**SRUN_TASK_1, "SLURM_PROCID": "0", "SLURM_NODEID": "0"}, "SLURM started 1 process"),
    ],
    ids=["torchrun", "srun"],
)
def test_a_worker_refuses_a_config_composed_for_another_layout_before_claiming_the_run(
    tmp_path, monkeypatch, capsys, launcher, started
):
    """exp.yaml says 2 processes on 1 node; the launcher started 1 process on each of 2 nodes."""
    from finetune.commands import train, worker

    def train_anyway(*args, **kwargs):
        raise AssertionError("the worker trained (and would wait for the ranks that never come)")

    monkeypatch.setattr(train, "train", train_anyway)
    clear_launcher_variables(monkeypatch)
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "exp.yaml").write_text(OmegaConf.to_yaml(compose_config("trainer=ddp", "trainer.devices=2")))
    assert worker.main([f"run_dir={tmp_path / 'run'}", f"config={tmp_path / 'exp.yaml'}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        f"finetune: error: trainer.devices=2 trainer.num_nodes=1 in {tmp_path / 'exp.yaml'}, but {started} per "
        "node on 2 node(s): compose the config again with trainer.devices=1 trainer.num_nodes=2"
    ), line
    assert not (tmp_path / "run").exists()


def test_a_worker_resumes_only_a_run_directory_of_ours(tmp_path, monkeypatch, capsys):
    """``resume=<dir>`` (the sbatch's requeued start) needs the run marker a run's start wrote there: a folder of
    something else, without checkpoints, is refused in one line and left as it was, not trained into from scratch."""
    from finetune.commands import train, worker
    from finetune.run.rundir import RUN_MARKER

    trained = []
    monkeypatch.setattr(train, "train", lambda cfg, run_dir, resume_from=None: trained.append(resume_from))
    clear_launcher_variables(monkeypatch)
    (tmp_path / "exp.yaml").write_text(OmegaConf.to_yaml(compose_config()))
    stranger = tmp_path / "results"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a run\n")
    args = [f"run_dir={stranger}", f"config={tmp_path / 'exp.yaml'}", f"resume={stranger}"]
    assert worker.main(args) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        f"finetune: error: resume={stranger}: not a finetune run directory (no {RUN_MARKER}, which a run's first "
        "start writes); resume= a run directory finetune made, or leave resume= out to start a new run in a new "
        "directory"
    ), line
    assert trained == [] and [p.name for p in stranger.iterdir()] == ["notes.txt"]
    (stranger / RUN_MARKER).write_text("token\n")  # a run of ours stopped before its first checkpoint: phase 1 again
    assert worker.main(args) == 0 and trained == [None]
