"""Who a database is: what the server says about itself, and whether two sessions share a server.

`tasks/guard.py` asks this before anything is written. A URL's host says little (`localhost`,
`127.0.0.1`, the socket and a forwarded port are one server), so the servers answer:

- `held_marker` / `sees_markers`: one session holds a user lock with a random name (`GET_LOCK`),
  another asks whether it is held (`IS_USED_LOCK`). Locks are per server, so the answer is exact,
  and nothing is written anywhere (the lock goes with the session).
- `mysql_server`: `@@server_uuid` (MySQL), `@@server_id`, `@@hostname`, `@@port`, `@@datadir`,
  `@@lower_case_table_names` in one `SHOW GLOBAL VARIABLES`; they decide when the lock cannot be
  used (MariaDB has no server_uuid: then id, host name, port and data directory together).
- `pg_database`: PostgreSQL's system identifier (`pg_control_system()`) and `current_database()`.

Example:
    ```python
    with server_cursor("replica", replica_url, {}) as rcur, source_cursor(source_url, {}) as scur:
        with held_marker(rcur) as name:
            [same] = sees_markers(scur, [name])
    ```
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import pymysql
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from tasks.connections import connection_error, create_engine


@dataclass(frozen=True)
class MysqlServer:
    """What a MySQL/MariaDB server says about itself (SHOW GLOBAL VARIABLES)."""

    server_uuid: str | None
    server_id: int
    hostname: str
    port: int
    datadir: str
    lower_case_names: int

    def same_as(self, other: MysqlServer) -> bool:
        if self.server_uuid and other.server_uuid:
            return self.server_uuid == other.server_uuid
        return ((self.server_id, self.hostname, self.port, self.datadir)
                == (other.server_id, other.hostname, other.port, other.datadir))

    def same_database(self, a: str, b: str) -> bool:
        return a.lower() == b.lower() if self.lower_case_names else a == b

    def describe(self) -> str:
        return f"{self.hostname}:{self.port}" + (f" uuid {self.server_uuid}" if self.server_uuid else
                                                 f" server_id {self.server_id}")


@dataclass(frozen=True)
class PgDatabase:
    system_identifier: str
    database: str


_VARIABLES = ("server_uuid", "server_id", "hostname", "port", "datadir", "lower_case_table_names")


def mysql_server(cur: Any) -> MysqlServer:
    """One `SHOW GLOBAL VARIABLES` (no privilege needed; works on MySQL and MariaDB alike)."""
    cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ", ".join(["%s"] * len(_VARIABLES)) + ")",
                _VARIABLES)
    v = {str(k).lower(): str(val) for k, val in cur.fetchall()}
    return MysqlServer(server_uuid=v.get("server_uuid") or None, server_id=int(v.get("server_id") or 0),
                       hostname=v.get("hostname", ""), port=int(v.get("port") or 0), datadir=v.get("datadir", ""),
                       lower_case_names=int(v.get("lower_case_table_names") or 0))


def pg_database(cur: Any) -> PgDatabase:
    """The cluster's system identifier (pg_control_system) and the database name."""
    try:
        cur.execute("SELECT system_identifier::text, current_database() FROM pg_control_system()")
        sysid, db = cur.fetchone()
    except Exception:  # noqa: BLE001 - a revoked function: the server address stands in
        cur.connection.rollback()
        cur.execute("SELECT coalesce(host(inet_server_addr()), 'socket') || ':' || "
                    "coalesce(inet_server_port()::text, ''), current_database()")
        sysid, db = cur.fetchone()
    return PgDatabase(str(sysid), str(db))


# --- the marker: a user lock seen (or not) from another session -------------------------------------

@contextmanager
def held_marker(cur: Any) -> Iterator[str | None]:
    """Hold a user lock with a random name on this session; yields its name (None: no lock possible).
    A lock is not a write: nothing is created on the server, and it goes with the session."""
    name = f"etl_guard_{uuid.uuid4().hex}"
    try:
        cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
        ok = cur.fetchone()[0] == 1
    except pymysql.Error:
        ok = False
    try:
        yield name if ok else None
    finally:
        if ok:
            cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
            cur.fetchall()


def sees_markers(cur: Any, names: list[str | None]) -> list[bool | None]:
    """Per marker: held on this session's server (True), not (False), unknown (None)."""
    asked = [n for n in names if n]
    if not asked:
        return [None] * len(names)
    try:
        cur.execute("SELECT " + ", ".join(["IS_USED_LOCK(%s)"] * len(asked)), asked)
        row = iter(cur.fetchone())
    except pymysql.Error:
        return [None] * len(names)
    return [None if not n else next(row) is not None for n in names]


def same_server(marker_seen: bool | None, a: MysqlServer, b: MysqlServer) -> bool:
    return marker_seen if marker_seen is not None else a.same_as(b)


# --- connections: short-lived, one each -------------------------------------------------------------

@contextmanager
def source_cursor(url: URL | str, connect_args: dict | None) -> Iterator[Any]:
    """A cursor on the source's read-only session (tasks/connections: the source can never be written)."""
    with _cursor("source", url, create_engine("source", url, pool_size=1, connect_args=connect_args)) as cur:
        yield cur


@contextmanager
def server_cursor(role: str, url: URL | str, connect_args: dict | None) -> Iterator[Any]:
    """A cursor on the replica's server without naming the database (it may not exist yet)."""
    create_engine(role, url, pool_size=1, connect_args=connect_args).dispose()  # a bad URL: ConfigError naming it
    u = make_url(url)
    engine = sa.create_engine(u.set(database=""), poolclass=sa.pool.NullPool,
                              connect_args={"charset": "utf8mb4", "connect_timeout": 10, **(connect_args or {})})
    with _cursor(role, url, engine) as cur:
        yield cur


@contextmanager
def _cursor(role: str, url: URL | str, engine: sa.engine.Engine) -> Iterator[Any]:
    """One short-lived DB-API cursor on `engine`, rolled back and disposed of afterwards; a failure to
    connect is one line naming `role` and the URL without its password (tasks/connections)."""
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            try:
                yield raw.cursor()
            finally:
                raw.rollback()
    except sa.exc.DBAPIError as e:
        raise connection_error(role, url, e) from None
    finally:
        engine.dispose()
