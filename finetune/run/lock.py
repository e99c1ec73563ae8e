"""One process at a time works in a run directory: ``<dir>/.finetune-lock``.

Training, resume, ``export``, ``report`` and ``explain`` hold the lock of the directories they write
for as long as they run. The lock file is created with O_CREAT|O_EXCL (``open(…, "x")``: the kernel
lets exactly one creator succeed) and says who holds it (pid, host, command, start time); it is
removed when the command ends, normally, with an error or on Ctrl-C. A second process is refused
with one line naming the holder, before it writes anything.

A process killed with SIGKILL leaves its lock behind. On the same host the next command sees that
the pid is gone (or now belongs to a process started later) and takes the lock over, saying so; of
several commands that find one stale lock, exactly one takes it. A lock from another host cannot be
checked from here and is refused with how to remove it.

Whoever takes a lock removes the temporaries (``.<name>.<random>.tmp``) that an interrupted atomic
write left in the directory: nobody else can be writing them then.

``.finetune-run`` (``run/rundir.py``) says which run a directory belongs to, for good; this lock
says which process works in it now, so it is a file of its own that comes and goes.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from finetune.run.artifacts import remove_temporaries
from finetune.run.errors import FinetuneError

LOCK_FILE = ".finetune-lock"
_HELD: dict[Path, str] = {}  # lock file (resolved) -> token, for every lock this process holds


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: what its lock file says."""

    pid: int
    host: str
    command: str
    started: str
    token: str
    process_start: str | None = None  # the kernel's start time of ``pid`` (Linux): tells a reused pid apart

    @classmethod
    def this_process(cls, command: str) -> Holder:
        return cls(
            os.getpid(),
            socket.gethostname(),
            command,
            time.strftime("%Y-%m-%d %H:%M:%S"),
            uuid.uuid4().hex,
            _process_start(os.getpid()),
        )

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} ({self.command}, started {self.started})"

    def is_gone(self) -> bool:
        """True when this host can tell the holder has ended: its pid no longer runs, or runs a newer process."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():  # our pid, but not a lock we hold: an earlier process had this pid
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        now = _process_start(self.pid)
        return self.process_start is not None and now is not None and now != self.process_start


def _process_start(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@contextmanager
def run_lock(directories: Sequence[str | Path], command: str, out_dirs: Sequence[str | Path] = ()) -> Iterator[None]:
    """Hold the lock of every run directory and output folder (made if missing) while the block runs;
    FinetuneError naming the holder if another process holds one. Temporaries are removed from a run
    directory and everything in it, but only from the top of an output folder (``out=``: the user's). A
    lock this process already holds is kept (train exports and reports in-process) and left to the
    block that took it."""
    taken: list[Path] = []
    try:
        for directory, recursive in [*((d, True) for d in directories), *((d, False) for d in out_dirs)]:
            if _lock_file(directory) not in _HELD:
                taken.append(_acquire(Path(directory), command, recursive))
        yield
    finally:
        for lock in reversed(taken):
            _release(lock)


def outside(run_dir: Path, *folders: str | Path | None) -> list[Path]:
    """The output folders (``out=``) a command must lock besides ``run_dir``: those not inside it."""
    paths = [Path(f).expanduser() for f in folders if f]
    return [p for p in paths if not p.resolve().is_relative_to(run_dir.resolve())]


def held_token(directory: str | Path) -> str | None:
    """The token of ``directory``'s lock if this process holds it (a launcher hands it to its workers)."""
    return _HELD.get(_lock_file(directory))


def check_holder(directory: str | Path, token: str) -> None:
    """A worker started by a launcher: the launcher must hold ``directory``'s lock under ``token``."""
    holder = _read(Path(directory))
    if holder is None or holder.token != token:
        whom = holder.describe() if holder else "nobody"
        raise FinetuneError(
            f"{directory} is locked by {whom}, not by the launcher that started this worker; "
            "start multi-process runs with `finetune trainer=ddp …` or torchrun without lock="
        )


def _lock_file(directory: str | Path) -> Path:
    return Path(directory).expanduser().resolve() / LOCK_FILE


def _acquire(directory: Path, command: str, recursive: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lock, me, replaced = _lock_file(directory), Holder.this_process(command), None
    while not _create(lock, me):
        holder = _read(directory)
        if holder is None:  # released between our try and our look: try again
            continue
        if not holder.is_gone():
            raise FinetuneError(_refusal(directory, holder))
        if _remove_stale(directory, holder):
            replaced = holder
    _HELD[lock] = me.token
    if replaced is not None:
        print(
            f"took over the lock of {directory}: pid {replaced.pid} on this host ({replaced.command}, "
            f"started {replaced.started}) is no longer running"
        )
    try:
        _report_removed(directory, remove_temporaries(directory, recursive))
    except BaseException:  # the caller never learns of this lock: give it back
        _release(lock)
        raise
    return lock


def _create(lock: Path, holder: Holder) -> bool:
    """Create the lock file exclusively with ``holder``'s record; False if it exists."""
    try:
        f = open(lock, "x")
    except FileExistsError:
        return False
    try:
        with f:
            f.write(json.dumps(asdict(holder)) + "\n")
    except BaseException:  # e.g. a full disk: leave no lock that names nobody
        lock.unlink(missing_ok=True)
        raise
    return True


def _read(directory: Path) -> Holder | None:
    """The holder a lock file names; None when there is no lock. FinetuneError for a file that names
    nobody (its writer was killed between creating and writing it, or someone else wrote it)."""
    lock = _lock_file(directory)
    try:
        holder = Holder(**json.loads(lock.read_text()))
        if not isinstance(holder.pid, int):
            raise TypeError("pid")
        return holder
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        raise FinetuneError(
            f"{directory} is locked, but {lock} does not say by whom (a finetune command is "
            f"taking it right now, or was killed while taking it); wait a moment and try "
            f"again, or, if no finetune command works in {directory}, delete {lock}"
        ) from None


def _remove_stale(directory: Path, stale: Holder) -> bool:
    """Remove the lock file of a holder that is gone; True if this process removed it. Of several processes
    that find the same stale lock, only the one that creates ``.finetune-lock.<its token>.takeover``
    (exclusively) may remove it, so none can remove a lock another one has just taken instead."""
    lock = _lock_file(directory)
    takeover = lock.with_name(f"{LOCK_FILE}.{stale.token}.takeover")
    try:
        open(takeover, "x").close()
    except FileExistsError:
        raise FinetuneError(
            f"{directory} is locked by {stale.describe()}, which is no longer running, and another "
            f"finetune command is taking the lock over right now; try again in a moment, or, if "
            f"no finetune command works in {directory}, delete {takeover}"
        ) from None
    try:
        current = _read(directory)
        if current is None or current.token != stale.token:  # already taken over (tokens are never reused)
            return False
        lock.unlink()
        return True
    finally:
        takeover.unlink()


def _release(lock: Path) -> None:
    """Remove our lock file (only if it is still ours)."""
    token = _HELD.pop(lock, None)
    try:
        still_ours = json.loads(lock.read_text()).get("token") == token
    except (OSError, ValueError):
        return
    if still_ours:
        lock.unlink(missing_ok=True)


def _refusal(directory: Path, holder: Holder) -> str:
    if holder.host == socket.gethostname():
        return f"{directory} is locked by {holder.describe()}; wait for it or stop it"
    return (
        f"{directory} is locked by {holder.describe()}, which cannot be checked from this host; wait for "
        f"it or stop it there, or, if you are sure no finetune command on {holder.host} works in "
        f"{directory}, delete {_lock_file(directory)}"
    )


def _report_removed(directory: Path, removed: list[Path]) -> None:
    if not removed:
        return
    names = [str(p.relative_to(directory)) for p in removed]
    listed = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    what = (
        "temporary file left by an interrupted write"
        if len(names) == 1
        else "temporary files left by interrupted writes"
    )
    print(f"removed {len(names)} {what} in {directory} ({listed})")
