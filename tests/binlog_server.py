"""A private MariaDB server with binary logging on, for the binlog tests and the bench's binlog stage.

The machine's server on 3306 has no binary log and must stay as it is, so binlog mode is exercised
against a server of our own: `mariadb-install-db` into a temporary data directory, then `mariadbd`
on a free loopback port with ROW logging, FULL row image and metadata (everything binlog mode
needs, tasks/binlog_source.py), no performance_schema. `start()` returns once it answers;
`BinlogServer.stop()` stops it by its own process (SIGTERM, then SIGKILL) and removes the directory.
Plain functions: tests/binlog/conftest.py wraps it in a session fixture, bench/binlog_stage.py
uses it directly.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from tests.mysql_script import MULTI_STATEMENTS, execute_script


@dataclass
class BinlogServer:
    port: int
    datadir: Path
    root: Path = field(repr=False, default=Path())
    proc: Any = field(repr=False, default=None)

    @property
    def url(self) -> str:
        """The server's SQLAlchemy URL without a database (root, no password, loopback)."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def connect(self, db: str | None = None, **kw) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=db,
                               charset="utf8mb4", autocommit=True, ssl_disabled=True, **kw)

    def sql(self, db: str | None, text: str) -> None:
        execute_script(self.connect(db, client_flag=MULTI_STATEMENTS), text)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def available() -> bool:
    return bool(shutil.which("mariadbd")) or os.path.exists("/usr/sbin/mariadbd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*, buffer_pool: str = "32M", log_file_size: str = "16M", prefix: str = "etl-binlog-",
          timeout: float = 60) -> BinlogServer:
    """A fresh server with binary logging on; small buffers by default (the tests keep values small)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    data = tmp / "data"
    # Its own tmpdir, for the install's bootstrap server too: a MariaDB server starting up deletes every
    # `#sql*` file in its tmpdir, which in /tmp are the machine server's live temporary tables (queries
    # there failed with "Error on delete of '/tmp/#sql-temptable-….MAI'" whenever a test server started).
    (tmp / "tmp").mkdir()
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", f"--tmpdir={tmp}/tmp",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], check=True, capture_output=True)
    port = _free_port()
    with open(tmp / "server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", "--user=root", f"--datadir={data}",
             f"--port={port}", "--bind-address=127.0.0.1", f"--socket={tmp}/sock", f"--pid-file={tmp}/pid",
             f"--tmpdir={tmp}/tmp",
             f"--log-bin={data}/binlog", "--server-id=7", "--binlog-format=ROW", "--binlog-row-image=FULL",
             "--binlog-row-metadata=FULL", f"--innodb-buffer-pool-size={buffer_pool}",
             f"--innodb-log-file-size={log_file_size}", "--performance-schema=OFF", "--skip-name-resolve",
             "--max-allowed-packet=64M", "--default-time-zone=+00:00"],
            stdout=log, stderr=subprocess.STDOUT)
    server = BinlogServer(port=port, datadir=data, root=tmp, proc=proc)
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.connect().close()
            return server
        except pymysql.err.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (tmp / "server.log").read_text(errors="replace")[-2000:]
                server.stop()
                raise RuntimeError(f"the binlog MariaDB did not start: {text}") from None
            time.sleep(0.2)
