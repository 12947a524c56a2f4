"""The binlog tests' own MariaDB server with binary logging on (the machine's server on 3306 has none).

`binlog_server` (session): tests/binlog_server.start() (its own data directory and port, ROW logging,
FULL row image and metadata), stopped at the end. `bl_env`: an EtlEnv whose *source* lives on that
server (the replica and analytics stay on the machine's servers, so the replica copy takes the
streamed path); the ETL_* settings and the clean-up are etl_env's (tests/conftest.env_in_use).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests import binlog_server as server_mod
from tests.binlog_server import BinlogServer
from tests.conftest import EtlEnv, env_in_use, new_env, start_ahead, take_ahead


FOREIGN_TMP_FILE: dict[str, bool] = {}


def _start_server() -> BinlogServer:
    # A file named like the machine server's temporary tables, in /tmp: the start must leave it alone
    # (tests/binlog/test_test_server.py reads whether it did).
    marker = Path(tempfile.gettempdir()) / f"#sql-temptable-etlt-{os.urandom(4).hex()}.MAI"
    marker.touch()
    try:
        return server_mod.start()
    finally:
        FOREIGN_TMP_FILE["survived"] = marker.exists()
        marker.unlink(missing_ok=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The server (~15-30 s of mariadb-install-db and start-up) starts while the tests before tests/binlog
    run (tests/conftest.Ahead); it is a server of its own, so it touches nothing they read."""
    if server_mod.available():
        start_ahead(session, "binlog_server", _start_server, BinlogServer.stop)


@pytest.fixture(scope="session")
def binlog_server() -> Iterator[BinlogServer]:
    if not server_mod.available():
        pytest.skip("mariadbd is not installed")
    server = take_ahead("binlog_server", _start_server)
    try:
        yield server
    finally:
        server.stop()


class BinlogEnv(EtlEnv):
    """EtlEnv with the source database on the binlog server."""

    server: BinlogServer

    @property
    def source_url(self) -> str:
        return f"{self.server.url}/{self.source_db}"

    def mysql(self, db: str | None = None):  # noqa: ANN201
        if (db or self.source_db) == self.source_db:
            return self.server.connect(self.source_db)
        from tests.conftest import mysql_connect
        return mysql_connect(db)

    def source_sql(self, text: str) -> None:
        self.server.sql(self.source_db, text)


@pytest.fixture
def bl_env(binlog_server: BinlogServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BinlogEnv]:
    base = new_env(tmp_path)
    env = BinlogEnv(prefix=base.prefix, source_db=base.source_db, replica_db=base.replica_db, pg_db=base.pg_db,
                    config_path=base.config_path)
    env.server = binlog_server
    binlog_server.sql(None, f"CREATE DATABASE `{env.source_db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    try:
        yield from env_in_use(env, monkeypatch)
    finally:
        binlog_server.sql(None, f"DROP DATABASE IF EXISTS `{env.source_db}`")
