"""Where a full refresh got to: the key of the last committed chunk, saved with the chunk itself.

Each chunk is committed in the same transaction as its checkpoint row, so after a dropped
connection the retry resumes right after the last committed chunk, never from zero and never
with a gap or a duplicate. Keys are stored as JSON with their Python type, so an int stays an int
and a datetime a datetime.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from typing import Any

from tasks import once
from tasks.identifiers import mysql_ident, pg_ident
from tasks.mysql_schema import NAME_COLUMN, ensure_exact_names

MYSQL_TABLE = "_etl_checkpoints"
PG_SCHEMA = "etl"
PG_TABLE = "load_checkpoints"


def encode_key(key: tuple | None) -> str | None:
    if key is None:
        return None
    out = []
    for v in key:
        if isinstance(v, bool) or v is None:
            out.append(["j", v])
        elif isinstance(v, int):
            out.append(["i", str(v)])
        elif isinstance(v, Decimal):
            out.append(["d", str(v)])
        elif isinstance(v, float):
            out.append(["f", repr(v)])
        elif isinstance(v, dt.datetime):
            out.append(["dt", v.isoformat()])
        elif isinstance(v, dt.date):
            out.append(["da", v.isoformat()])
        elif isinstance(v, dt.timedelta):
            out.append(["td", v.total_seconds()])
        elif isinstance(v, (bytes, bytearray, memoryview)):
            out.append(["b", base64.b64encode(bytes(v)).decode()])
        else:
            out.append(["s", str(v)])
    return json.dumps(out)


def decode_key(text: str | None) -> tuple | None:
    if text is None:
        return None
    out: list[Any] = []
    for kind, v in json.loads(text):
        out.append({
            "j": lambda x: x, "i": int, "d": Decimal, "f": float,
            "dt": dt.datetime.fromisoformat, "da": dt.date.fromisoformat,
            "td": lambda x: dt.timedelta(seconds=x), "b": base64.b64decode, "s": str,
        }[kind](v))
    return tuple(out)


# --- replica (MySQL) side: the table lives in the replica database -------------------------------

def mysql_ensure(cur: Any) -> None:
    if not once.first_time(cur.connection, "replica:checkpoints"):  # tasks/once.py: once per connection
        return
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {mysql_ident(MYSQL_TABLE)} ("
        f"table_name {NAME_COLUMN} PRIMARY KEY, shadow VARCHAR(64) NOT NULL, "
        "last_key TEXT NULL, rows_done BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
    ensure_exact_names(cur, MYSQL_TABLE, ("table_name",))


def mysql_save(cur: Any, table: str, shadow: str, key: tuple | None, rows_done: int) -> None:
    cur.execute(
        f"REPLACE INTO {mysql_ident(MYSQL_TABLE)} (table_name, shadow, last_key, rows_done, updated_at) "
        "VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))",
        (table, shadow, encode_key(key), rows_done),
    )


def mysql_load(cur: Any, table: str) -> tuple[str, tuple | None, int] | None:
    cur.execute(
        f"SELECT shadow, last_key, rows_done FROM {mysql_ident(MYSQL_TABLE)} WHERE table_name = %s", (table,)
    )
    row = cur.fetchone()
    return (row[0], decode_key(row[1]), int(row[2])) if row else None


def mysql_clear(cur: Any, table: str) -> None:
    cur.execute(f"DELETE FROM {mysql_ident(MYSQL_TABLE)} WHERE table_name = %s", (table,))


# --- analytics (PostgreSQL) side: etl.checkpoints -------------------------------------------------

def _pg_name() -> str:
    return f"{pg_ident(PG_SCHEMA)}.{pg_ident(PG_TABLE)}"


def pg_ensure(cur: Any) -> None:
    if not once.first_time(cur.connection, "analytics:checkpoints"):  # the callers commit at once
        return
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))")
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {pg_ident(PG_SCHEMA)}")
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {_pg_name()} ("
        "target_schema text NOT NULL, table_name text NOT NULL, part integer NOT NULL, shadow text NOT NULL, "
        "last_key text, rows_done bigint NOT NULL, finished boolean NOT NULL DEFAULT false, "
        "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (target_schema, table_name, part))"
    )


def pg_save(cur: Any, schema: str, table: str, part: int, shadow: str, key: tuple | None, rows_done: int,
            *, finished: bool = False) -> None:
    """Record one part's progress; call inside the transaction that committed its rows."""
    cur.execute(
        f"INSERT INTO {_pg_name()} (target_schema, table_name, part, shadow, last_key, rows_done, finished, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (target_schema, table_name, part) DO UPDATE SET "
        "shadow = EXCLUDED.shadow, last_key = EXCLUDED.last_key, rows_done = EXCLUDED.rows_done, "
        "finished = EXCLUDED.finished, updated_at = EXCLUDED.updated_at",
        (schema, table, part, shadow, encode_key(key), rows_done, finished),
    )


def pg_load(cur: Any, schema: str, table: str) -> dict[int, tuple[str, tuple | None, int, bool]]:
    """part -> (shadow, last key, rows done, finished) for every recorded part of a table."""
    cur.execute(
        f"SELECT part, shadow, last_key, rows_done, finished FROM {_pg_name()} "
        "WHERE target_schema = %s AND table_name = %s",
        (schema, table),
    )
    return {int(r[0]): (r[1], decode_key(r[2]), int(r[3]), bool(r[4])) for r in cur.fetchall()}


def pg_clear(cur: Any, schema: str, table: str) -> None:
    cur.execute(f"DELETE FROM {_pg_name()} WHERE target_schema = %s AND table_name = %s", (schema, table))
