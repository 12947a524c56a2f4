"""One run at a time per table: a named lock held in the database for each phase.

Two pipeline runs started together on the same tables (a schedule overlapping a manual repair)
must never load a table twice at once. The replica phase holds a MySQL `GET_LOCK` on the replica
server, the analytics phase a PostgreSQL advisory lock; a second run waits for the first to
finish that phase (up to `wait_seconds`), then fails that table with a message naming the lock.
The locks belong to a connection, so a crashed run releases them with its connections.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa

from tasks.connections import Engines
from tasks.errors import EtlError

DEFAULT_WAIT_SECONDS = 600


class TableBusy(EtlError):
    """Another run holds the table's lock."""


def _name(database: str, table: str) -> str:
    # GET_LOCK names are limited to 64 characters; a digest keeps long names unique.
    raw = f"etl:{database}.{table}"
    return raw if len(raw) <= 64 else "etl:" + hashlib.sha1(raw.encode()).hexdigest()


@contextmanager
def replica_lock(engines: Engines, database: str, table: str, *, wait_seconds: int = DEFAULT_WAIT_SECONDS) -> Iterator[None]:
    name = _name(database, table)
    with engines.replica.connect() as conn:
        got = conn.execute(sa.text("SELECT GET_LOCK(:n, :w)"), {"n": name, "w": wait_seconds}).scalar()
        if got != 1:
            raise TableBusy(f"table {table!r}: another run is copying it to the replica (lock {name!r} held for "
                            f"more than {wait_seconds}s); it was skipped this run")
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            conn.rollback()


@contextmanager
def analytics_lock(engines: Engines, schema: str, table: str, *, wait_seconds: int = DEFAULT_WAIT_SECONDS) -> Iterator[None]:
    key = int.from_bytes(hashlib.sha1(f"etl:{schema}.{table}".encode()).digest()[:8], "big", signed=True)
    with engines.analytics.connect() as conn:
        raw = conn.connection.driver_connection
        raw.autocommit = True
        try:
            with raw.cursor() as cur:
                # One round trip each way (two statements in one query): the timeout holds for the wait,
                # and is reset with the unlock (the phase works on connections of its own).
                try:
                    cur.execute("SET lock_timeout = %s; SELECT pg_advisory_lock(%s)", (f"{int(wait_seconds)}s", key))
                except Exception as e:  # noqa: BLE001 - lock_timeout
                    raise TableBusy(f"table {table!r}: another run is loading it into analytics (advisory lock "
                                    f"{key} held for more than {wait_seconds}s); it was skipped this run") from e
            try:
                yield
            finally:
                with raw.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s); RESET lock_timeout", (key,))
        finally:
            raw.autocommit = False
