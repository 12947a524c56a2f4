"""Counting the statements a piece of code sends to the servers: real ones, as the drivers send them.

The pipeline talks to the databases through SQLAlchemy *and* through the raw driver cursors
(`conn.connection.driver_connection.cursor()`), so SQLAlchemy's cursor events alone would miss most
of them. Every connection checked out of any pool while `recording()` is active gets a counting
cursor class (pymysql `cursorclass`, psycopg2 `cursor_factory`); the cursors SQLAlchemy itself
opens come from the same classes. Each statement is recorded with its server kind and the
connection's database.

Example:
    ```python
    with recording() as log:
        run_pipeline(...)
    assert not [s for s in log if s.writes and s.kind == "mysql" and s.database == replica_db]
    ```
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg2.extensions
import pymysql.cursors
from sqlalchemy import event
from sqlalchemy.pool import Pool

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|RENAME|TRUNCATE|LOAD|COPY\s.*FROM|"
                    r"MERGE|GRANT|COMMENT)\b", re.I | re.S)
_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE|COMMENT)\b", re.I)


@dataclass(frozen=True)
class Statement:
    kind: str  # "mysql" or "pg"
    database: str
    sql: str

    @property
    def writes(self) -> bool:
        return bool(_WRITE.match(self.sql))

    @property
    def ddl(self) -> bool:
        return bool(_DDL.match(self.sql))


_active: list[list[Statement]] = []
_lock = threading.Lock()


def _record(kind: str, database: str, sql) -> None:  # noqa: ANN001
    text = sql.decode(errors="replace") if isinstance(sql, (bytes, bytearray)) else str(sql)
    with _lock:
        for log in _active:
            log.append(Statement(kind, database, text))


def _mysql_db(conn) -> str:  # noqa: ANN001
    db = getattr(conn, "db", None)
    return db.decode() if isinstance(db, bytes) else (db or "")


class _MyCursor(pymysql.cursors.Cursor):
    def execute(self, query, args=None):  # noqa: ANN001, ANN201
        _record("mysql", _mysql_db(self.connection), query)
        return super().execute(query, args)


class _MySSCursor(pymysql.cursors.SSCursor):
    def execute(self, query, args=None):  # noqa: ANN001, ANN201
        _record("mysql", _mysql_db(self.connection), query)
        return super().execute(query, args)


class _PgCursor(psycopg2.extensions.cursor):
    def execute(self, query, vars=None):  # noqa: A002, ANN001, ANN201
        _record("pg", self.connection.info.dbname, query)
        return super().execute(query, vars)

    def executemany(self, query, vars_list):  # noqa: ANN001, ANN201
        _record("pg", self.connection.info.dbname, query)
        return super().executemany(query, vars_list)

    def copy_expert(self, sql, file, size=8192):  # noqa: ANN001, ANN201
        _record("pg", self.connection.info.dbname, sql)
        return super().copy_expert(sql, file, size)


_orig_cursor = pymysql.connections.Connection.cursor


def _counting_cursor(self, cursor=None):  # noqa: ANN001, ANN202
    if cursor is pymysql.cursors.SSCursor:
        cursor = _MySSCursor
    elif cursor is None or cursor is pymysql.cursors.Cursor:
        cursor = _MyCursor
    return _orig_cursor(self, cursor)


def _on_checkout(dbapi_conn, record, proxy) -> None:  # noqa: ANN001
    if isinstance(dbapi_conn, psycopg2.extensions.connection):
        dbapi_conn.cursor_factory = _PgCursor


@contextmanager
def recording() -> Iterator[list[Statement]]:
    """Every statement sent to MySQL or PostgreSQL by this process while active."""
    log: list[Statement] = []
    with _lock:
        first = not _active
        _active.append(log)
    if first:
        pymysql.connections.Connection.cursor = _counting_cursor
        event.listen(Pool, "checkout", _on_checkout)
    try:
        yield log
    finally:
        with _lock:
            _active.remove(log)
            last = not _active
        if last:
            pymysql.connections.Connection.cursor = _orig_cursor
            event.remove(Pool, "checkout", _on_checkout)
