"""Replica MySQL -> analytics PostgreSQL: full refresh through a shadow table and COPY.

1. CREATE the shadow table `_etl_new_<table>` from the MySQL column types (type_mapping).
2. Read the replica in keyset chunks; MySQL prints each row as a COPY text line; each chunk is one
   `COPY ... FROM STDIN` committed together with its checkpoint, so a retry resumes after it.
3. Add the primary key once the rows are in (one index build instead of N index updates).
4. Swap in one transaction. A reader sees yesterday's table or today's, never a half-loaded one.
   When views depend on the table (dbt builds views on `raw`), the table is not renamed away from
   under them: its rows are replaced in place (TRUNCATE + INSERT from the shadow, one transaction).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg2
import psycopg2.errors

from config.models import ResolvedTable
from tasks import checkpoints, faults
from tasks.connections import Engines
from tasks.errors import DataError, SchemaError
from tasks.identifiers import (
    mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_table_name, shadow_name, PG_MAX_IDENT,
)
from tasks.keyset import Keyset
from tasks.mysql_schema import TableSchema, choose_key, read_table_schema, unique_keys
from tasks.streaming import BLOCK_BYTES, BlockFile, ChunkResult, LineQuery, Prefetcher, read_chunk_blocks
from tasks.type_mapping import PgColumn, copy_line_select, pg_columns, pg_create_table_sql

log = logging.getLogger("etl.analytics")

SWAP_LOCK_TIMEOUT = "60s"


@dataclass
class PhaseStats:
    """Counters of one phase of one table (replica copy or analytics load)."""

    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    chunks: int = 0
    nul_chars_removed: int = 0
    resumed_at_rows: int = 0
    method: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[int], None]


def _constraint_name(table: str) -> str:
    name = f"{table}_pkey"
    return name if len(name.encode()) <= PG_MAX_IDENT else shadow_name(table, "pk")


def plan_pg_table(schema: TableSchema, table: ResolvedTable, *, column_case: str) -> tuple[list[PgColumn], tuple[str, ...]]:
    """PostgreSQL columns and the key columns (source names) of a table."""
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns)
    return cols, schema.primary_key


def _pg_exists(cur: Any, schema: str, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (pg_qualified(schema, table),))
    return bool(cur.fetchone()[0])


def dependent_views(cur: Any, schema: str, table: str) -> list[str]:
    """Views and materialized views that read `schema.table`."""
    cur.execute(
        """
        SELECT DISTINCT n.nspname || '.' || c.relname
        FROM pg_depend d
        JOIN pg_rewrite r ON r.oid = d.objid
        JOIN pg_class c ON c.oid = r.ev_class
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE d.refobjid = to_regclass(%s) AND c.oid <> d.refobjid
        ORDER BY 1
        """,
        (pg_qualified(schema, table),),
    )
    return [r[0] for r in cur.fetchall()]


def _column_signature(cur: Any, schema: str, table: str) -> list[tuple[str, str]]:
    cur.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (pg_qualified(schema, table),),
    )
    return [(r[0], r[1]) for r in cur.fetchall()]


def _wrap_copy_error(e: psycopg2.Error, table: str, cols: list[PgColumn]) -> Exception:
    first = (e.pgerror or str(e)).strip().splitlines()[0]
    context = (e.diag.context or "").strip().splitlines()[0] if e.diag and e.diag.context else ""
    hint = ""
    for c in cols:
        if c.as_boolean and f"column {c.name}:" in context:
            hint = f"; column {c.source.name!r} holds a value other than 0/1: remove it from boolean_columns or fix the data"
    return DataError(f"table {table!r}: PostgreSQL rejected a value: {first} ({context}){hint}")


def load_full(
    engines: Engines,
    table: ResolvedTable,
    *,
    replica_db: str,
    pg_schema: str,
    column_case: str,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> PhaseStats:
    """Reload one table into PostgreSQL from the replica. Returns what it moved."""
    started = time.monotonic()
    stats = PhaseStats(method="copy")
    pg_name = pg_table_name(table.name)
    shadow = shadow_name(pg_name)
    q_shadow = pg_qualified(pg_schema, shadow)

    with engines.replica.connect() as rc:
        schema = read_table_schema(rc, replica_db, table.name)
        key = choose_key(schema, table.primary_key, unique_keys(rc, replica_db, table.name))
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns)
    by_source = {c.source.name: c for c in cols}
    query = LineQuery(
        table_sql=mysql_qualified(replica_db, table.name),
        line_expr=copy_line_select(cols),
        keyset=Keyset(key, mysql_ident) if key else None,
        batch_size=table.batch_size,
    )
    copy_sql = f"COPY {q_shadow} ({', '.join(pg_ident(c.name) for c in cols)}) FROM STDIN"

    with engines.analytics.connect() as pc:
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {pg_ident(pg_schema)}")
        checkpoints.pg_ensure(cur)
        pg.commit()

        after: tuple | None = None
        cp = checkpoints.pg_load(cur, pg_schema, pg_name) if resume and key else None
        if cp and cp[0] == shadow and _pg_exists(cur, pg_schema, shadow):
            after, stats.resumed_at_rows = cp[1], cp[2]
            stats.rows = cp[2]
            log.info("%s: resuming analytics load after %d committed rows", table.name, cp[2])
            stats.notes.append(f"analytics load resumed after {cp[2]} committed rows")
        else:
            cur.execute(f"DROP TABLE IF EXISTS {q_shadow}")
            cur.execute(pg_create_table_sql(q_shadow, cols))
            checkpoints.pg_save(cur, pg_schema, pg_name, shadow, None, 0)
            pg.commit()

        with engines.replica.connect() as rc:
            my = rc.connection.driver_connection
            while True:
                chunk = ChunkResult()
                reader = Prefetcher(read_chunk_blocks(my, query, after, chunk, strip_nul=True))
                try:
                    cur.copy_expert(copy_sql, BlockFile(iter(reader)), size=BLOCK_BYTES)
                except psycopg2.DataError as e:
                    pg.rollback()
                    rc.invalidate()
                    raise _wrap_copy_error(e, table.name, cols) from e
                except BaseException:
                    pg.rollback()
                    rc.invalidate()
                    raise
                finally:
                    reader.close()
                if chunk.rows == 0:
                    pg.commit()
                    break
                stats.rows += chunk.rows
                stats.bytes += chunk.bytes
                stats.chunks += 1
                stats.nul_chars_removed += chunk.nul_chars_removed
                after = chunk.last_key
                if key:
                    checkpoints.pg_save(cur, pg_schema, pg_name, shadow, after, stats.rows)
                pg.commit()
                if progress:
                    progress(stats.rows)
                faults.check("analytics", table.name, stats.chunks)
                if not key or chunk.rows < table.batch_size:
                    break

        if key:
            pk_cols = ", ".join(pg_ident(by_source[k].name) for k in key)
            cur.execute(
                f"ALTER TABLE {q_shadow} ADD CONSTRAINT {pg_ident(shadow_name(pg_name, 'pk'))} PRIMARY KEY ({pk_cols})"
            )
            pg.commit()
        _swap(cur, pg_schema, pg_name, shadow, has_key=bool(key), notes=stats.notes)
        checkpoints.pg_clear(cur, pg_schema, pg_name)
        pg.commit()
        pg.autocommit = True
        cur.execute(f"ANALYZE {pg_qualified(pg_schema, pg_name)}")
        pg.autocommit = False
    if stats.nul_chars_removed:
        stats.notes.append(f"{stats.nul_chars_removed} NUL characters removed from text (PostgreSQL cannot store them)")
        log.warning("%s: removed %d NUL characters from text values", table.name, stats.nul_chars_removed)
    stats.seconds = time.monotonic() - started
    return stats


def _swap(cur: Any, schema: str, table: str, shadow: str, *, has_key: bool, notes: list[str]) -> None:
    """Make the shadow table the live one, atomically. Caller commits."""
    cur.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
    q_live = pg_qualified(schema, table)
    q_shadow = pg_qualified(schema, shadow)
    if not _pg_exists(cur, schema, table):
        cur.execute(f"ALTER TABLE {q_shadow} RENAME TO {pg_ident(table)}")
        if has_key:
            cur.execute(f"ALTER TABLE {q_live} RENAME CONSTRAINT {pg_ident(shadow_name(table, 'pk'))} "
                        f"TO {pg_ident(_constraint_name(table))}")
        return
    views = dependent_views(cur, schema, table)
    if not views:
        cur.execute(f"DROP TABLE {q_live}")
        cur.execute(f"ALTER TABLE {q_shadow} RENAME TO {pg_ident(table)}")
        if has_key:
            cur.execute(f"ALTER TABLE {q_live} RENAME CONSTRAINT {pg_ident(shadow_name(table, 'pk'))} "
                        f"TO {pg_ident(_constraint_name(table))}")
        return
    # Views depend on the live table: keep the table (and the views, grants and comments on it),
    # replace its rows in the same transaction. Only possible when the columns are unchanged.
    live_cols = _column_signature(cur, schema, table)
    new_cols = _column_signature(cur, schema, shadow)
    if live_cols != new_cols:
        raise SchemaError(
            f"table {schema}.{table} changed shape but views depend on it ({', '.join(views)}); "
            f"drop or adjust those views, or run with --full-refresh after recreating them"
        )
    cur.execute(f"TRUNCATE {q_live}")
    cur.execute(f"INSERT INTO {q_live} SELECT * FROM {q_shadow}")
    cur.execute(f"DROP TABLE {q_shadow}")
    notes.append(f"rows replaced in place because views depend on it: {', '.join(views)}")
