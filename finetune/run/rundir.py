"""Run directories are owned by one run, and keep every attempt's log.

A run directory belongs to the process that created ``<dir>/.finetune-run`` with O_EXCL
(``open(…, "x")``): the kernel lets exactly one creator succeed, so two runs can never share a
directory, whatever the clock.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

from finetune.run.errors import FinetuneError

RUN_MARKER = ".finetune-run"
RESUME_CHECKPOINTS = ("last.ckpt", "best.ckpt")  # what `finetune resume=<run>` continues from, in this order
SEARCH_MARKER = ".finetune-search"  # a search's sweep directory: every worker of the search may join it
HYDRA_FILES = (".hydra", "multirun.yaml", RUN_MARKER, SEARCH_MARKER, ".finetune-launch.yaml")  # bookkeeping
STUDY_LOG = "study.log"  # a search's journal: results (the study), though it ends in .log
CLAIMED: dict[str, str] = {}  # absolute run directory -> token, claimed by this process


def _write_marker(directory: Path) -> str:
    """Create ``directory/.finetune-run`` exclusively (FileExistsError if it is there); return its token."""
    token = f"{uuid.uuid4().hex} pid={os.getpid()} host={socket.gethostname()}"
    with open(directory / RUN_MARKER, "x") as f:
        f.write(token + "\n")
    CLAIMED[str(directory.absolute())] = token
    return token


def marker_token(directory: str | Path) -> str | None:
    """The token of the run that owns ``directory`` (None: no finetune run owns it)."""
    try:
        return (Path(directory) / RUN_MARKER).read_text().strip()
    except FileNotFoundError:
        return None


def unique_run_dir(path: str | Path) -> str:
    """Create a new directory named ``path`` (or ``path-2``, ``path-3`` … when taken) and claim it.

    ``os.mkdir`` without ``exist_ok`` is atomic: of two processes that ask for one name in the same
    second, one gets it and the other the next name. Idempotent within a process (Hydra may resolve
    ``hydra.run.dir`` more than once)."""
    key = str(path)
    if key in _UNIQUE:
        return _UNIQUE[key]
    base = Path(path).expanduser()
    if not base.parent.exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        _MADE_PARENTS.add(base.parent.absolute())
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _write_marker(candidate)
        _UNIQUE[key] = str(candidate)
        return str(candidate)
    raise FileExistsError(f"{base}: 10000 run directories of this name exist")


_UNIQUE: dict[str, str] = {}
_MADE_PARENTS: set[Path] = set()  # e.g. runs/, made for a directory: removed again with it when empty


def forget_claims() -> None:
    """Start a new command in this process: names and claims of an earlier one no longer count."""
    _UNIQUE.clear()
    CLAIMED.clear()
    _MADE_PARENTS.clear()


def claim_run_dir(path: str | Path, *, hydra_files_allowed: bool = False) -> str:
    """Claim ``path`` (made if missing) for this run; FinetuneError if another run owns it or, unless
    ``hydra_files_allowed`` (Hydra has just written its own files there), it already holds files."""
    directory = Path(path).expanduser()
    if str(directory.absolute()) in CLAIMED:
        return CLAIMED[str(directory.absolute())]
    directory.mkdir(parents=True, exist_ok=True)
    others = [p.name for p in directory.iterdir() if not (hydra_files_allowed and _is_bookkeeping(p))]
    taken = f"{directory} already holds a run"
    how = "pick a new hydra.run.dir (or leave it out: every run gets a directory of its own)"
    if (directory / RUN_MARKER).exists() or others:
        what = f" ({', '.join(sorted(others)[:4])}{', …' if len(others) > 4 else ''})" if others else ""
        raise FinetuneError(f"{taken}{what}: it is never overwritten; {how}, or resume={directory} to continue it")
    try:
        return _write_marker(directory)
    except FileExistsError:  # another run claimed it between our look and our claim
        raise FinetuneError(f"{taken} (claimed by another process just now); {how}") from None


def claim_search_dir(path: str | Path) -> str | None:
    """Claim ``path`` for a search (``-m`` with ``hydra/sweeper=search``), or join it: a directory a search
    made (``SEARCH_MARKER``, created first and exclusively) takes every worker of that search, whose sweeper
    then checks it is the same study; a directory holding anything else is refused as ``claim_run_dir``
    refuses it. Returns the token when this process made the directory (None when it joined)."""
    directory = Path(path).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in directory.iterdir()}
    if SEARCH_MARKER in names:
        return None
    if names:
        claim_run_dir(directory)  # refused: it holds another run's files
    try:
        with open(directory / SEARCH_MARKER, "x") as f:
            f.write(f"pid={os.getpid()} host={socket.gethostname()}\n")
    except FileExistsError:  # another worker of the search made it just now
        return None
    return _write_marker(directory)


def _is_bookkeeping(path: Path) -> bool:
    return path.name in HYDRA_FILES or (path.suffix == ".log" and path.name != STUDY_LOG)


def holds_results(directory: str | Path) -> bool:
    """True when ``directory`` holds anything but Hydra's files, its log and the run marker."""
    directory = Path(directory)
    return directory.is_dir() and any(not _is_bookkeeping(p) for p in directory.iterdir())


def release_if_unused(directory: str | Path) -> bool:
    """Remove a run directory this process claimed if the run wrote nothing of its own (plan, a run
    refused before training); True when removed."""
    directory = Path(directory)
    key = str(directory.absolute())
    if key not in CLAIMED or not directory.is_dir() or holds_results(directory):
        return False
    if marker_token(directory) != CLAIMED[key]:
        return False
    shutil.rmtree(directory, ignore_errors=True)
    CLAIMED.pop(key, None)
    if directory.absolute().parent in _MADE_PARENTS:
        try:
            directory.absolute().parent.rmdir()  # only when empty
        except OSError:
            pass
    return True


def log_version(logs: str | Path, name: str) -> str:
    """Logger version of phase ``name`` under ``logs``: ``name`` the first time, then
    ``name/attempt-2``, ``name/attempt-3`` … so a resumed phase never overwrites an earlier attempt's log."""
    first = Path(logs) / name
    if not (first / "metrics.csv").exists():
        return name
    n = 2
    while (first / f"attempt-{n}").exists():
        n += 1
    return f"{name}/attempt-{n}"


def log_attempts(phase_logs: str | Path) -> list[Path]:
    """``metrics.csv`` of every attempt of one phase (``logs/<phase>``), oldest first."""
    phase_logs = Path(phase_logs)
    attempts = [
        (int(p.parent.name.removeprefix("attempt-")), p)
        for p in phase_logs.glob("attempt-*/metrics.csv")
        if p.parent.name.removeprefix("attempt-").isdigit()
    ]
    first = [phase_logs / "metrics.csv"] if (phase_logs / "metrics.csv").exists() else []
    return first + [p for _, p in sorted(attempts)]


def is_run(path: Path) -> bool:
    """A run directory (its ``config.yaml``) or a checkpoint in one (else an export); no torch import."""
    return (path / "config.yaml").is_file() or path.suffix == ".ckpt"
