"""Shared fixtures: the real data in ../shared/data, stand-in weights, real runs made once per session (plain
helpers, Hydra composition of the real configs included, live in helpers.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest

from .helpers import DIGITS_LINEAR_PROBE, TINY, cli_in_process, one_torch_thread, squares
from .helpers import compose_config as compose_config  # re-exported: test modules import it from here

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def own_inspect_store(tmp_path_factory):
    """What ``finetune inspect`` filed on this machine (``~/.cache/finetune/inspect``) never reaches the suite: a
    dataset inspected there would add its leak warning to every run on it, the runs session fixtures build too."""
    from finetune.data.inspection.store import own_store

    with own_store(tmp_path_factory.getbasetemp() / "inspect" / "session"):
        yield


@pytest.fixture(autouse=True)
def own_inspect_cache(monkeypatch, tmp_path_factory):
    """Each test files inspect findings in its own folder (made only when inspect writes): what one test
    inspects never adds a leak warning to another's runs."""
    from finetune.data.inspection.store import ENV

    monkeypatch.setenv(ENV, str(tmp_path_factory.getbasetemp() / "inspect" / uuid4().hex))


@pytest.fixture
def shared_data() -> Path:
    """The read-only real data folder; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """Stand-in "pretrained" resnet10t weights (random init, seed 0), given to a run as backbone.weights=<file>."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(path))
    return path


def tiny_overrides(*extra: str) -> list[str]:
    """A CPU-sized run: tiny images, few batches, no progress bar."""
    return ["dataset.image_size=32", "trainer.progress_bar=false", "trainer.log_every_n_steps=1", *extra]


FINISHED_RUN_ARGS = [*DIGITS_LINEAR_PROBE, "hydra.run.dir=run"]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(folder)`` (it returns a run directory inside ``folder``) made once for the whole session, across
    pytest-xdist workers (pytest-xdist's recipe: a FileLock on the session's shared base folder), then copied
    into this worker's own temporary folder: each worker works in its own copy, as if it had built it, so a
    command one worker runs in the run (its lock, a report it rewrites) never meets another worker's."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing to share
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / f"built-once-{name}"
    with FileLock(f"{shared}.lock"):
        made = shared.with_name(f"{shared.name}.done")  # holds the run's path inside ``shared``
        if not made.is_file():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            made.write_text(str(build(shared).relative_to(shared)))
    copy = tmp_path_factory.mktemp(name) / "copy"
    shutil.copytree(shared, copy, symlinks=True)
    return copy / made.read_text()


def _built_by_cli(args: list[str]) -> Callable[[Path], Path]:
    """A build for built_once: ``finetune <args>`` (with ``hydra.run.dir=run``) in the folder, run in this process
    (an interpreter start less; the run directory is the same); its run."""

    def build(base: Path) -> Path:
        with one_torch_thread():
            out = cli_in_process(*args, "hydra.run.dir=run", cwd=base)
        assert out.returncode == 0, out.stderr[-3000:]
        return base / "run"

    return build


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A real run directory (digits, pip ImageNet weights, 3 training batches), made once per session."""
    return built_once(tmp_path_factory, "finished_run", _built_by_cli(DIGITS_LINEAR_PROBE))


@pytest.fixture(scope="session")
def tiny_finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (``TINY``: random-init resnet10t, 2 training batches, ``checkpoints.keep=best``),
    made once per session; a test that writes into it (or runs a command in it) copies it first."""
    return built_once(tmp_path_factory, "tiny_finished_run", _built_by_cli(TINY))


SEG_CLASSES = ["background", "thing"]


@pytest.fixture(scope="session")
def tiny_seg_run(tmp_path_factory) -> Path:
    """A real segmentation run (index masks of two named classes, random-init resnet10t under a U-Net,
    2 training batches, 2 test images), made once per session."""
    return built_once(tmp_path_factory, "tiny_seg_run", _build_tiny_seg_run)


def _build_tiny_seg_run(base: Path) -> Path:
    squares(base / "data", n=10, foreground=1)
    args = [
        "task=segmentation",
        "dataset=seg_folder",
        f"dataset.root={base / 'data'}",
        f"dataset.class_names=[{','.join(SEG_CLASSES)}]",
        "dataset.test_fraction=0.2",
        "dataset.crop_size=64",
        "dataset.num_workers=0",
        "head=unet",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "schedule=linear_probe",
        "schedule.epochs=1",
        "schedule.batch_size=2",
        "trainer.limit_train_batches=2",
        "trainer.progress_bar=false",
        "segmentation.overlays=2",
    ]
    return _built_by_cli(args)(base)


# The test files that take longest, longest first (CPU seconds of their tests, each file run alone, 2026-12-05,
# after that day's second round of cuts: ~100, 75, 65, 65, 64, 60, 48, 48, 44, 35, 35, 28, 27, 26), started first:
# `make test` hands each file to one of two pytest-xdist workers in collection order (`--no-loadscope-reorder`: by
# default xdist orders the files by their number of tests, and a long file started last kept one worker busy
# minutes after the other had finished).
LONGEST_FILES = (
    "test_distributed.py",
    "test_multinode.py",
    "test_faults_signals.py",
    "test_resume_kinds.py",
    "test_faults_concurrency.py",
    "test_phases.py",
    "test_search_study.py",
    "test_cli.py",
    "test_peers_smoke.py",
    "test_streaming.py",
    "test_submitit.py",
    "test_gpu_paths.py",
    "test_export_formats.py",
    "test_segmentation.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first (the order within a file is kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))
