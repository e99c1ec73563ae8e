"""Helpers shared by test modules (a test module never imports another test module).

Light at import, as conftest.py and the subprocess-only tests import it: the helpers that build or train a
model import torch, Lightning and finetune's model code inside the function."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import skimage.data
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from finetune.resources import conf_dir

if TYPE_CHECKING:
    import lightning as L
    import pytest
    import torch

    from finetune.data.transforms import Preprocessing
    from finetune.export.bundle import ModelBundle
    from finetune.models.freezing import FineTuneModel

# A CPU-sized classification run on digits: random-init resnet10t, 32 px, one epoch of two batches.
TINY = [
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "schedule=linear_probe",
    "schedule.epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
]

# The start of the modules' own several-epoch TINY lists: random-init resnet10t, 32 px, two validation batches.
SMALL_RESNET = [
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "trainer.progress_bar=false",
    "trainer.limit_val_batches=2",
]

# A CPU-sized linear probe of efficientnet_lite0 (pip ImageNet weights) on digits: one epoch of three batches.
DIGITS_LINEAR_PROBE = [
    "backbone=efficientnet_lite0",
    "schedule=linear_probe",
    "schedule.epochs=1",
    "dataset.image_size=32",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
]


def finetune_env() -> dict[str, str]:
    """The environment a ``finetune`` subprocess runs in: offline hub, one torch thread."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_finetune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m finetune <args>`` in ``cwd``; waits for it and captures its output."""
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=finetune_env(),
        timeout=timeout,
    )


def start_finetune(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m finetune <args>`` started in ``cwd`` without waiting (stdout/stderr piped); ``env`` is
    set over finetune_env()."""
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**finetune_env(), **(env or {})},
    )


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (names relative to it)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_refused(out: subprocess.CompletedProcess, message: str, code: int = 2) -> str:
    """Exit ``code``, one ``finetune: error:`` line holding ``message``, no traceback; the line."""
    assert out.returncode == code, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("finetune: error: "), out.stderr[-2000:]
    assert message in lines[0], lines[0]
    return lines[0]


def run_cli(*args: str, cwd: Path, module: str = "finetune", timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` (offline hub, the caller's thread settings); waits for it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def lightning_ranks(*ranks: int) -> tuple[int, ...]:
    """Lightning's two process-wide rank-zero ranks (its own ``rank_zero_only`` and lightning_utilities'), which a
    Trainer sets from its cluster environment (a SLURM task 1 makes every later logger of the process silent): set
    to ``ranks`` (one for both, or one each) when given; the values before are returned."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

    before = (rank_zero_only.rank, utils_rank_zero_only.rank)
    if ranks:
        rank_zero_only.rank, utils_rank_zero_only.rank = ranks * 2 if len(ranks) == 1 else ranks
    return before


def cli_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``finetune <args>`` run in this process (``finetune.cli.main``) in ``cwd``, as run_cli returns it: exit code
    (``sys.exit`` included), stdout, stderr. For a refusal, a plan or a check that only needs the command's
    output, not the process (no ~3 s start-up per command). The process-wide state a command sets (working
    directory, ``sys.argv``, environment variables, Hydra's logging set-up, warning filters, torch's
    deterministic-algorithms switch, Lightning's rank-zero rank) is restored after it; the command starts as the
    rank 0 a fresh process would be."""
    import io
    import logging
    import warnings

    from finetune.cli import main

    def loggers() -> list[logging.Logger]:
        known = logging.Logger.manager.loggerDict.values()
        return [logging.root, *(log for log in known if isinstance(log, logging.Logger))]

    saved = {log: (log.handlers[:], log.level, log.propagate, log.disabled) for log in loggers()}
    argv, here, environ, out, err = sys.argv[:], os.getcwd(), dict(os.environ), io.StringIO(), io.StringIO()
    deterministic = "torch" in sys.modules and sys.modules["torch"].are_deterministic_algorithms_enabled()
    ranks = lightning_ranks(0)
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # as the interpreter ends: None is 0, a message is printed with 1
                code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
                if not isinstance(exit_.code, int | None):
                    print(exit_.code, file=sys.stderr)
    finally:
        os.chdir(here)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        if "torch" in sys.modules:  # Lightning's trainer.deterministic=true switches it on for the process
            sys.modules["torch"].use_deterministic_algorithms(deterministic)
        lightning_ranks(*ranks)
        for log in loggers():
            if log in saved:
                handlers, log.level, log.propagate, log.disabled = saved[log]
            else:  # made during the command (an import's own handler kept): only what writes to its output goes
                handlers = [h for h in log.handlers if getattr(h, "stream", None) not in (out, err)]
                handlers = [h for h in handlers if not isinstance(h, logging.FileHandler)]
            for handler in set(log.handlers) - set(handlers):
                handler.close()
            log.handlers[:] = handlers
    return subprocess.CompletedProcess(["finetune", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, as in a ``finetune`` process of finetune_env(): a run made in this
    process (cli_in_process) then computes the same numbers as one made by a subprocess."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compose_config(*overrides: str) -> DictConfig:
    """Compose the real ``conf/`` exactly as ``python -m finetune`` would, with overrides."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


def group_option(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml``'s own keys as written there (its ``defaults`` list, which names the
    schema Hydra checks it against, left out)."""
    cfg = OmegaConf.load(conf_dir() / group / f"{name}.yaml")
    cfg.pop("defaults", None)
    return cfg


# --- segmentation data on disk ---------------------------------------------------------------------


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, split: str | None = None) -> None:
    """``image`` and ``mask`` as PNGs under ``root[/split]/images`` and ``root[/split]/masks``."""
    base = root / split if split else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(base / "images" / f"{stem}.png")
    Image.fromarray(mask).save(base / "masks" / f"{stem}.png")


def squares(root: Path, n: int = 12, size: int = 64, seed: int = 0, foreground: int = 255) -> None:
    """Bright squares on noise: a learnable binary segmentation set ({0, foreground} masks)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        top, left = rng.integers(0, size - 24, 2)
        side = int(rng.integers(12, 24))
        image[top : top + side, left : left + side] = rng.integers(170, 255, 3, dtype=np.uint8)
        mask[top : top + side, left : left + side] = foreground
        write_pair(root, f"img{i:02d}", image, mask)


# --- models: tiny resnet10t bundles, the freezing contract -----------------------------------------

CLASSES = ["cat", "dog", "bird", "fish"]  # the classes of trained_bundle's head


def imagenet_32px() -> Preprocessing:
    """32 px, bilinear, ImageNet mean and std, 3 channels: the preprocessing of trained_bundle."""
    from finetune.data.transforms import Preprocessing

    return Preprocessing((32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 3)


def real_images() -> list[np.ndarray]:
    """Photos shipped with scikit-image (one grayscale)."""
    return [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee(), skimage.data.camera()]


def resnet_cfg(weights_file: Path, freeze: str | int = "all") -> DictConfig:
    """resnet10t from ``weights_file`` with ``freeze`` stages frozen, 32 px images."""
    return compose_config(
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights_file}",
        f"backbone.freeze={freeze}",
        "dataset.image_size=32",
    )


def trained_bundle(weights_file: Path, freeze: str | int) -> ModelBundle:
    """resnet10t from the weights file, stages frozen by ``freeze``, a few SGD steps in train mode."""

    from finetune.export.bundle import ModelBundle
    from finetune.models.freezing import frozen_stages
    from finetune.models.weights import resolve_weights
    from finetune.tasks.registry import get_task

    cfg, task = resnet_cfg(weights_file, freeze), get_task("classification")
    record = resolve_weights("resnet10t", weights_file)
    model = task.build_model(cfg, record, 3, len(CLASSES))
    model.set_frozen(frozen_stages(model.stage_map, freeze), "frozen")
    sgd_steps(model, lr=0.1, steps=2)
    return ModelBundle(model.eval(), cfg, CLASSES, task, imagenet_32px(), 3, record.to_dict(), origin="test")


def sgd_steps(model: torch.nn.Module, lr: float, steps: int) -> None:
    """``steps`` plain SGD steps at ``lr`` in train mode on random 32 px batches of 4 (4 classes, seed 1)."""
    import torch

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(1)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 4, (4,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def tensor_hashes(model: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter and buffer (BatchNorm running stats included)."""
    state = model.state_dict()
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}


def train_steps(model: FineTuneModel, size: int, steps: int = 3) -> None:
    """``steps`` Lightning training steps of a 3-class classifier on random ``size`` px batches of 8."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from finetune.run.schedule import PhaseOptim
    from finetune.tasks.classification.module import ClassificationTask

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8 * steps, 3, size, size), torch.randint(0, 3, (8 * steps,)))
    task = ClassificationTask(model, 3, optim=PhaseOptim(lr=0.05, backbone_lr_mult=1.0, scheduler="constant"))
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, DataLoader(data, batch_size=8))


def write_png(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> Path:
    """A random RGB PNG of ``size`` (width, height) at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def class_folders(root: Path, per_class: int = 3, size: tuple[int, int] = (12, 10)) -> Path:
    """``root/ant`` and ``root/bee`` with ``per_class`` random PNGs of ``size`` each (seed ``10 * class + i``)."""
    for c, name in enumerate(("ant", "bee")):
        for i in range(per_class):
            write_png(root / name / f"{name}{i}.png", 10 * c + i, size)
    return root


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: L.Callback) -> None:
    """Every phase's Trainer (``finetune.training.phases.make_trainer``) gets ``callback`` too."""
    from finetune.training import phases

    make_trainer = phases.make_trainer

    def patched(cfg, run_dir, name, epochs, callbacks, strategy=None):
        return make_trainer(cfg, run_dir, name, epochs, [*callbacks, callback], strategy)

    monkeypatch.setattr(phases, "make_trainer", patched)


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (48, 64)) -> bytes:
    """The bytes of a random RGB JPEG of ``size`` (width, height), quality 90."""
    import io

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def export_tiny_resnet(base: Path, classes: list[str], formats: tuple[str, ...]) -> Path:
    """A resnet10t linear probe (random stand-in "pretrained" weights, random head) exported in ``formats``
    through the parity gate to ``base/exports``; that folder."""
    import timm
    import torch
    from safetensors.torch import save_file

    from finetune.export.bundle import ModelBundle
    from finetune.export.writing import export
    from finetune.models.weights import resolve_weights
    from finetune.tasks.registry import get_task

    torch.manual_seed(0)
    weights = base / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(weights))
    cfg = compose_config(
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights}",
        "backbone.freeze=all",
        "dataset.image_size=32",
    )
    record = resolve_weights("resnet10t", weights)
    task = get_task("classification")
    model = task.build_model(cfg, record, 3, len(classes))
    with torch.no_grad():
        model.head[-1].weight.normal_()
    bundle = ModelBundle(model.eval(), cfg, classes, task, imagenet_32px(), 3, record.to_dict(), origin="test")
    for fmt in formats:
        export(bundle, fmt, base / "exports", [skimage.data.chelsea(), skimage.data.coffee()])
    return base / "exports"


def flip_byte(path: Path, tensor: str) -> None:
    """Flip one byte in the middle of ``tensor``'s data in a safetensors file, leaving the header intact."""
    import json
    import struct

    data = bytearray(path.read_bytes())
    (header_size,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8 : 8 + header_size])[tensor]["data_offsets"]
    data[8 + header_size + (begin + end) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_embedded(path: Path, change) -> None:
    """Rewrite a safetensors export with the same tensors and ``change(metadata)`` applied to its metadata."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["finetune"])
    change(meta)
    save_file(load_file(path), str(path), metadata={"finetune": json.dumps(meta, sort_keys=True)})


# `python -m finetune` whose process sends itself SIGTERM at the start of batch 1 of the second phase (phase index 1):
# a fixed point after the first phase's checkpoints, mid-phase.
STOP_IN_PHASE_2 = """
import os, runpy, signal
import lightning as L
class StopInPhase2(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.phase_index == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)
init = L.Trainer.__init__
L.Trainer.__init__ = lambda self, *a, callbacks=(), **kw: init(self, *a, callbacks=[*callbacks, StopInPhase2()], **kw)
runpy.run_module("finetune", run_name="__main__", alter_sys=True)
"""


def stopped_in_phase_2(*args: str, cwd: Path) -> Path:
    """``finetune <args> hydra.run.dir=run`` (two phases or more) stopped by SIGTERM mid phase 2: exit 143, a
    ``last.ckpt`` and no ``metrics.json``; the run directory (``finetune resume=run`` continues it)."""
    out = subprocess.run(
        [sys.executable, "-c", STOP_IN_PHASE_2, *args, "hydra.run.dir=run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=finetune_env(),
        timeout=600,
    )
    assert out.returncode == 143, out.stderr[-3000:]
    run = cwd / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    return run


def step_losses(metrics_csv: Path) -> list[float]:
    """The per-step training losses (``train/loss_step``) a phase's ``metrics.csv`` logged."""
    with open(metrics_csv, newline="") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


# `python -m finetune` whose process sends itself SIG (argv[1]) at the start of batch BATCH (argv[3]) of epoch
# EPOCH (argv[2], from 0): a fixed point of the run, not a race with a timer.
INTERRUPT_AT_BATCH = """
import os, runpy, signal, sys
import lightning as L

SIG, EPOCH, BATCH = getattr(signal, sys.argv.pop(1)), int(sys.argv.pop(1)), int(sys.argv.pop(1))

class InterruptAt(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == EPOCH and batch_idx == BATCH:
            os.kill(os.getpid(), SIG)

init = L.Trainer.__init__
L.Trainer.__init__ = lambda self, *a, callbacks=(), **kw: init(self, *a, callbacks=[*callbacks, InterruptAt()], **kw)
runpy.run_module("finetune", run_name="__main__", alter_sys=True)
"""


def start_interrupted(
    *args: str, cwd: Path, signal_name: str, epoch: int, batch: int, log: Path | None = None
) -> subprocess.Popen:
    """``python -m finetune <args>`` started in ``cwd``, sending itself ``signal_name`` at ``batch`` of ``epoch``
    (from 0); stdout and stderr together on stdout, or in the file ``log`` (a pipe nobody reads while the test
    does other work could fill up and block the run)."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 (the child keeps its copy; ours is closed below)
    try:
        return subprocess.Popen(
            [sys.executable, "-c", INTERRUPT_AT_BATCH, signal_name, str(epoch), str(batch), *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=finetune_env(),
        )
    finally:
        if log:
            out.close()


# Two epochs of one phase ("finetune"), random-init resnet10t, batches of 4 (several per epoch), for the tests that
# interrupt a run mid-epoch and compare its resume with the uninterrupted run. The final weights are tested
# (checkpoints.keep=last): the best validation epoch could be epoch 1 in both runs, whose test metrics would then
# not show a difference in the replayed epoch 2.
RESUMABLE_TWO_EPOCHS = [
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "schedule=finetune",
    "schedule.epochs=2",
    "schedule.batch_size=4",
    "checkpoints.keep=last",
    "trainer.deterministic=true",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
]
