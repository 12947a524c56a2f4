"""Per-table sync state: watermarks and full-load generations, one state table per target.

- replica (MySQL): `_etl_state` in the replica database describes what the replica holds of the
  source: one row per table and change column, with the high-water mark read from the source.
- analytics (PostgreSQL): `etl.table_state` describes what analytics holds of the replica.
Each stage reads its own state and writes it with the data it describes: the analytics state in
the same transaction as the merge (or the swap), the replica state in the transaction of the last
merged chunk. A crash can therefore never leave a watermark ahead of committed rows; at worst a
window is read twice, which the merge makes harmless.

Watermarks are typed (`wm_datetime` for DATE/DATETIME/TIMESTAMP columns, `wm_int` for integer
columns), never a string holding either. TIMESTAMP values are UTC (every session runs in UTC);
the source server's time zone is stored next to them. `generation` counts full loads of the
replica table: when analytics holds an older generation it reloads in full (e.g. after drift).
A reset (`--full-refresh`) first copies the rows into the `*_history` table. `_etl_pending_window`
holds the window a replica sync is reading until its state is saved, so a retry reuses it.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from tasks import once
from tasks.checkpoints import decode_key, encode_key
from tasks.identifiers import mysql_ident, mysql_qualified
from tasks.mysql_schema import NAME_COLUMN, ensure_exact_names
from tasks.type_mapping import INTEGER_TYPES, is_time_type

MYSQL_STATE = "_etl_state"
MYSQL_HISTORY = "_etl_state_history"
PG_STATE = "etl.table_state"
PG_HISTORY = "etl.table_state_history"


def watermark_kind(data_type: str) -> str:
    if is_time_type(data_type):
        return "datetime"
    if data_type in INTEGER_TYPES:
        return "int"
    raise ValueError(f"type {data_type!r} cannot be a change column (use a date/time or integer column)")


@dataclass
class TableState:
    """Watermarks by change column, plus the replica generation this state belongs to."""

    generation: int = 0
    watermarks: dict[str, Any] = field(default_factory=dict)
    run_count: int = 0
    source_time_zone: str | None = None

    def describe(self) -> str | None:
        if not self.watermarks:
            return None
        return ", ".join(f"{c}={_fmt(v)}" for c, v in sorted(self.watermarks.items()))


def _fmt(v: Any) -> str:
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    return str(v)


# --- replica side ----------------------------------------------------------------------------------

_MYSQL_COLUMNS = (
    f"table_name {NAME_COLUMN}, column_name {NAME_COLUMN}, "
    "wm_datetime DATETIME(6) NULL, wm_int BIGINT NULL, generation BIGINT NOT NULL, "
    "run_count BIGINT NOT NULL DEFAULT 0, source_time_zone VARCHAR(64) NULL, updated_at DATETIME(6) NOT NULL"
)


def mysql_ensure(cur: Any) -> None:
    if not once.first_time(cur.connection, "replica:state"):  # tasks/once.py: once per connection
        return
    cur.execute(f"CREATE TABLE IF NOT EXISTS {mysql_ident(MYSQL_STATE)} ({_MYSQL_COLUMNS}, "
                "PRIMARY KEY (table_name, column_name)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {mysql_ident(MYSQL_HISTORY)} ({_MYSQL_COLUMNS}, "
                "reset_at DATETIME(6) NOT NULL, KEY (table_name, reset_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
    for t in (MYSQL_STATE, MYSQL_HISTORY):
        ensure_exact_names(cur, t, ("table_name", "column_name"))
    mysql_pending_ensure(cur)


def mysql_load(cur: Any, table: str) -> TableState | None:
    cur.execute(f"SELECT column_name, wm_datetime, wm_int, generation, run_count, source_time_zone "
                f"FROM {mysql_ident(MYSQL_STATE)} WHERE table_name = %s", (table,))
    rows = cur.fetchall()
    if not rows:
        return None
    st = TableState(generation=int(rows[0][3]), run_count=int(rows[0][4]), source_time_zone=rows[0][5])
    for col, wdt, wint, *_ in rows:
        if col != "":
            st.watermarks[col] = wdt if wdt is not None else (int(wint) if wint is not None else None)
    return st


def mysql_incremental_tables(cur: Any, replica_db: str) -> set[str]:
    """Tables whose last replica sync saved a watermark (the next run will be incremental unless the
    config or the schema changed); empty when the replica has no state yet."""
    cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (replica_db, MYSQL_STATE))
    if not cur.fetchone()[0]:
        return set()
    cur.execute(f"SELECT DISTINCT table_name FROM {mysql_qualified(replica_db, MYSQL_STATE)} "
                "WHERE column_name <> '' AND (wm_datetime IS NOT NULL OR wm_int IS NOT NULL)")
    return {str(r[0]) for r in cur.fetchall()}


def mysql_save(cur: Any, table: str, st: TableState) -> None:
    """Replace the table's state rows (caller commits, with the data they describe).

    Only statements on exact keys: a DELETE over a key range that holds no row takes a gap lock, and two
    tables saving their first state at the same time then deadlock on each other's gap (InnoDB 1213, seen
    when tables of one group swap together). Stale columns are deleted by their key, the rest upserted.
    """
    # The row with an empty column name carries the generation even when there is no change column.
    rows = [("", None)] + sorted(st.watermarks.items())
    keep = {c for c, _ in rows}
    cur.execute(f"SELECT column_name FROM {mysql_ident(MYSQL_STATE)} WHERE table_name = %s", (table,))
    for (col,) in cur.fetchall():
        if col not in keep:
            cur.execute(f"DELETE FROM {mysql_ident(MYSQL_STATE)} WHERE table_name = %s AND column_name = %s",
                        (table, col))
    # Every row in one statement (a row per change column, plus the generation's).
    cur.execute(
        f"INSERT INTO {mysql_ident(MYSQL_STATE)} (table_name, column_name, wm_datetime, wm_int, generation, "
        "run_count, source_time_zone, updated_at) VALUES "
        + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(6))"] * len(rows))
        + " ON DUPLICATE KEY UPDATE wm_datetime = VALUES(wm_datetime), wm_int = VALUES(wm_int), "
        "generation = VALUES(generation), run_count = VALUES(run_count), "
        "source_time_zone = VALUES(source_time_zone), updated_at = VALUES(updated_at)",
        [x for col, v in rows for x in (table, col, v if isinstance(v, dt.datetime) else None,
                                         v if isinstance(v, int) else None, st.generation, st.run_count,
                                         st.source_time_zone)],
    )


def mysql_reset(cur: Any, table: str) -> None:
    """Keep the current state in the history table, then forget it."""
    cur.execute(f"INSERT INTO {mysql_ident(MYSQL_HISTORY)} SELECT *, UTC_TIMESTAMP(6) FROM {mysql_ident(MYSQL_STATE)} "
                "WHERE table_name = %s", (table,))
    cur.execute(f"DELETE FROM {mysql_ident(MYSQL_STATE)} WHERE table_name = %s", (table,))


# --- the window a run is reading (replica side) -------------------------------------------------------
# One row per table while a replica sync is under way: the passes and the watermarks to save, read
# from the source before the first row was copied. A retry (resume=True) reads them back instead of
# reading a new MAX; the row is deleted in the transaction that saves the state. `kind` says which
# path wrote it ("incremental" or "full"), so a retry that took the other path does not use it.

MYSQL_PENDING = "_etl_pending_window"


def mysql_pending_ensure(cur: Any) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {mysql_ident(MYSQL_PENDING)} (table_name {NAME_COLUMN} PRIMARY KEY, "
                "kind VARCHAR(16) NOT NULL, window_json MEDIUMTEXT NOT NULL, created_at DATETIME(6) NOT NULL"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
    ensure_exact_names(cur, MYSQL_PENDING, ("table_name",))


def mysql_save_pending(cur: Any, table: str, kind: str, passes: list[tuple[str, Any, Any]], save: dict[str, Any],
                       notes: list[str]) -> None:
    """Remember the window (caller commits, before the first row is read)."""
    doc = {"passes": [[c, encode_key((lo, hi))] for c, lo, hi in passes],
           "save": [[c, encode_key((v,))] for c, v in sorted(save.items())], "notes": list(notes)}
    cur.execute(f"REPLACE INTO {mysql_ident(MYSQL_PENDING)} (table_name, kind, window_json, created_at) "
                "VALUES (%s, %s, %s, UTC_TIMESTAMP(6))", (table, kind, json.dumps(doc)))


def mysql_load_pending(cur: Any, table: str, kind: str
                       ) -> tuple[list[tuple[str, Any, Any]], dict[str, Any], list[str]] | None:
    cur.execute(f"SELECT kind, window_json FROM {mysql_ident(MYSQL_PENDING)} WHERE table_name = %s", (table,))
    row = cur.fetchone()
    if not row or row[0] != kind:
        return None
    doc = json.loads(row[1])
    passes = [(c, *decode_key(k)) for c, k in doc["passes"]]
    save = {c: decode_key(k)[0] for c, k in doc["save"]}
    return passes, save, list(doc.get("notes", []))


def mysql_clear_pending(cur: Any, table: str) -> None:
    # Deleted by exact key only when there is a row: see mysql_save (a DELETE that matches nothing
    # takes a gap lock inside the caller's transaction).
    cur.execute(f"SELECT COUNT(*) FROM {mysql_ident(MYSQL_PENDING)} WHERE table_name = %s", (table,))
    if cur.fetchone()[0]:
        cur.execute(f"DELETE FROM {mysql_ident(MYSQL_PENDING)} WHERE table_name = %s", (table,))


# --- analytics side --------------------------------------------------------------------------------

_PG_COLUMNS = (
    "target_schema text NOT NULL, table_name text NOT NULL, column_name text NOT NULL, "
    "wm_timestamp timestamp(6), wm_int numeric(20,0), generation bigint NOT NULL, "
    "run_count bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now()"
)


def pg_ensure(cur: Any) -> None:
    if not once.first_time(cur.connection, "analytics:state"):  # the callers commit at once
        return
    # Tables of one run start together: CREATE ... IF NOT EXISTS alone races on a fresh database.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))")
    cur.execute("CREATE SCHEMA IF NOT EXISTS etl")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {PG_STATE} ({_PG_COLUMNS}, "
                "PRIMARY KEY (target_schema, table_name, column_name))")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {PG_HISTORY} ({_PG_COLUMNS}, reset_at timestamptz NOT NULL DEFAULT now())")


def pg_load(cur: Any, schema: str, table: str) -> TableState | None:
    cur.execute(f"SELECT column_name, wm_timestamp, wm_int, generation, run_count FROM {PG_STATE} "
                "WHERE target_schema = %s AND table_name = %s", (schema, table))
    rows = cur.fetchall()
    if not rows:
        return None
    st = TableState(generation=int(rows[0][3]), run_count=int(rows[0][4]))
    for col, wts, wint, *_ in rows:
        if col != "":
            st.watermarks[col] = wts if wts is not None else (int(wint) if wint is not None else None)
    return st


def pg_save(cur: Any, schema: str, table: str, st: TableState, *, cleared: bool = False) -> None:
    """Replace the table's state rows (caller commits); `cleared`: the caller deleted them in this
    transaction already (pg_reset), so only the INSERT is sent. All rows in one INSERT."""
    if not cleared:
        cur.execute(f"DELETE FROM {PG_STATE} WHERE target_schema = %s AND table_name = %s", (schema, table))
    rows = [("", None)] + sorted(st.watermarks.items())
    cur.execute(
        f"INSERT INTO {PG_STATE} (target_schema, table_name, column_name, wm_timestamp, wm_int, generation, "
        "run_count) VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(rows)),
        [x for col, v in rows for x in (schema, table, col, v if isinstance(v, dt.datetime) else None,
                                         v if isinstance(v, int) else None, st.generation, st.run_count)],
    )


def pg_reset(cur: Any, schema: str, table: str) -> None:
    cur.execute(f"INSERT INTO {PG_HISTORY} SELECT *, now() FROM {PG_STATE} WHERE target_schema = %s AND table_name = %s",
                (schema, table))
    cur.execute(f"DELETE FROM {PG_STATE} WHERE target_schema = %s AND table_name = %s", (schema, table))


def as_datetime(v: Any) -> Any:
    """MySQL DATE values come back as date; watermarks keep one type (datetime) for time columns."""
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return dt.datetime(v.year, v.month, v.day)
    return v
