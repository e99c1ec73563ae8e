"""The suite's throwaway PostgreSQL server (tests/postgres.py): it answers on 127.0.0.1 inside its block and is
stopped, its files removed, after it; as root it changes no folder's mode; a port taken between its choice and the
server's bind is replaced by another."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
import sqlalchemy

from .. import postgres
from ..postgres import postgres_server, server_bindir

pytestmark = pytest.mark.skipif(server_bindir() is None, reason="the PostgreSQL server is not installed")


def answer(url: str) -> tuple:
    """The server's database, address and data directory, asked over a fresh connection."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        query = "select current_database(), inet_server_addr()::text, current_setting('data_directory')"
        return tuple(connection.execute(sqlalchemy.text(query)).one())


def test_the_server_answers_inside_its_block_and_is_gone_after(tmp_path):
    folders = {tmp_path, *tmp_path.parents, Path(tempfile.gettempdir()), *Path(tempfile.gettempdir()).parents}
    modes = {folder: folder.stat().st_mode for folder in folders}
    with postgres_server() as url:
        database, address, data = answer(url)
        assert (database, address) == ("finetune_test", "127.0.0.1/32") and Path(data).is_dir()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        answer(url)
    assert {folder: folder.stat().st_mode for folder in folders} == modes
    assert not Path(data).parent.exists()  # the server's folder is removed


def test_a_port_taken_before_the_server_binds_it_is_replaced(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        picks, pick = [taken.getsockname()[1]], postgres.free_port
        monkeypatch.setattr(postgres, "free_port", lambda: picks.pop() if picks else pick())
        with postgres_server() as url:
            assert answer(url)[0] == "finetune_test"
        assert picks == [] and sqlalchemy.engine.make_url(url).port != taken.getsockname()[1]
