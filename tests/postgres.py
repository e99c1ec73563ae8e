"""A throwaway PostgreSQL server for a test module: Debian's server binaries (``apt-get install postgresql``,
which .ci/run does), its files in a fresh folder of its own under the system's temporary folder (removed after),
TCP on 127.0.0.1 only (a free port, another if that one is taken before the server binds it), the unix socket
beside it, trust authentication. PostgreSQL refuses to run as root: as root (CI) the server runs as the
``postgres`` system user the package creates, and its folder is that user's; no other folder's mode changes.
Stopped (``pg_ctl stop -m immediate``) whatever the test did.

A test module uses it with ``from ..postgres import postgres_url  # noqa: F401`` (a pytest fixture)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SUPERUSER, DATABASE = "finetune", "finetune_test"
SERVER_USER = "postgres"  # the system user Debian's postgresql package creates
PORT_TRIES = 5  # ports tried when another process takes the chosen one before the server binds it


def server_bindir() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` …: Debian's newest ``/usr/lib/postgresql/<version>/bin``, else PATH."""
    versions = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if versions:
        return max(versions, key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (asked of the kernel); taken again by anyone until it is bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(folder: Path) -> dict:
    """subprocess arguments that run a command as the server's user: nothing unless this is root; as root,
    ``folder`` (a fresh one in the temporary folder, which every user can reach) is given to the ``postgres`` user."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(SERVER_USER)
    os.chown(folder, user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run(command: list, **kwargs) -> None:
    """Run a server command; on failure an error with its output (and the server's log, if any)."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        log = Path(kwargs["cwd"]) / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stdout}{done.stderr}{tail}")


def _start(bindir: Path, data: Path, folder: Path, as_server: dict, tries: int = PORT_TRIES) -> int:
    """Start the server on a free port and return the port; a port another process bound first (the server's log
    says "could not bind") is replaced by a new one, ``tries`` ports in all."""
    port, log = free_port(), folder / "server.log"
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
    log.unlink(missing_ok=True)  # this try's log only
    try:
        _run([bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"], **as_server)
    except RuntimeError:
        if tries == 1 or "could not bind" not in log.read_text():
            raise
        return _start(bindir, data, folder, as_server, tries - 1)
    return port


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server with one database; yields its SQLAlchemy URL ``postgresql://<user>@127.0.0.1:<port>/<db>``
    (the plain URL a user writes: SQLAlchemy 2.1 reads it as psycopg 3, which the ``postgres`` extra installs);
    stopped, and its folder removed, on leaving the block."""
    bindir = server_bindir()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    with tempfile.TemporaryDirectory(prefix="finetune-postgres-") as name:
        folder = Path(name)
        data, as_server = folder / "data", {**_as_server_user(folder), "cwd": folder}
        _run(
            [bindir / "initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
            **as_server,
        )
        try:
            port = _start(bindir, data, folder, as_server)
            _run([bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, DATABASE], **as_server)
            yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
        finally:
            if (data / "postmaster.pid").exists():
                _run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **as_server)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for this test module (its URL). Without server binaries the test skips, except under
    CI=true, where .ci/run installs them and their absence is a failure."""
    if server_bindir() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but the PostgreSQL server is not installed (.ci/run installs it with apt-get)")
        pytest.skip("the PostgreSQL server is not installed (apt-get install postgresql)")
    with postgres_server() as url:
        yield url
