"""A MariaDB server of the tests' own with binary logging on (the machine's server on 3306 has none).

`binlog_server` (session): `mariadb-install-db` into a temporary data directory, then `mariadbd` on a
free port with ROW logging, FULL row image and metadata, small buffers, no performance_schema;
stopped by its pid at the end. `bl_env`: an EtlEnv whose *source* lives on that server (the replica
and analytics stay on the machine's servers, so the replica copy takes the streamed path).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pymysql
import pytest

from tests.conftest import EtlEnv, _drop_everything, new_env


@dataclass(frozen=True)
class BinlogServer:
    port: int
    datadir: Path

    def connect(self, db: str | None = None, **kw) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=db,
                               charset="utf8mb4", autocommit=True, ssl_disabled=True, **kw)

    def sql(self, db: str | None, text: str) -> None:
        conn = self.connect(db, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(text)
                while cur.nextset():
                    pass
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def binlog_server() -> Iterator[BinlogServer]:
    if not shutil.which("mariadbd") and not os.path.exists("/usr/sbin/mariadbd"):
        pytest.skip("mariadbd is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="etl-binlog-"))
    data = tmp / "data"
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
                    "--skip-test-db"], check=True, capture_output=True)
    port = _free_port()
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(
        [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", "--user=root", f"--datadir={data}",
         f"--port={port}", "--bind-address=127.0.0.1", f"--socket={tmp}/sock", f"--pid-file={tmp}/pid",
         f"--log-bin={data}/binlog", "--server-id=7", "--binlog-format=ROW", "--binlog-row-image=FULL",
         "--binlog-row-metadata=FULL", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
         "--performance-schema=OFF", "--skip-name-resolve", "--max-allowed-packet=64M", "--default-time-zone=+00:00"],
        stdout=log, stderr=subprocess.STDOUT)
    server = BinlogServer(port=port, datadir=data)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.connect().close()
                break
            except pymysql.err.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"test MariaDB did not start: {(tmp / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


class BinlogEnv(EtlEnv):
    """EtlEnv with the source database on the binlog server."""

    server: BinlogServer

    @property
    def source_url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.server.port}/{self.source_db}"

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
    monkeypatch.setenv("ETL_SOURCE_URL", env.source_url)
    monkeypatch.setenv("ETL_REPLICA_URL", env.replica_url)
    monkeypatch.setenv("ETL_ANALYTICS_URL", env.analytics_url)
    monkeypatch.setenv("ETL_ANALYTICS_SCHEMA", env.pg_schema)
    monkeypatch.setenv("ETL_CONFIG", str(env.config_path))
    try:
        yield env
    finally:
        from tasks import faults

        faults.clear()
        binlog_server.sql(None, f"DROP DATABASE IF EXISTS `{env.source_db}`")
        _drop_everything(env)
