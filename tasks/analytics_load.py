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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg2
import psycopg2.errors

from config.models import ResolvedTable
from tasks import checkpoints, faults
from tasks.connections import Engines
from tasks.errors import DataError, SchemaError, is_retriable, redact
from tasks.identifiers import (
    PG_MAX_IDENT, copy_expert, execute, mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_regclass,
    pg_table_name, shadow_name,
)
from tasks.keyset import Keyset
from tasks.mysql_schema import TableSchema, choose_key, max_allowed_packet, read_table_schema, unique_keys
from tasks.streaming import (
    BLOCK_BYTES, BlockFile, ChunkResult, LineQuery, Prefetcher, group_rows_for, read_chunk_blocks,
)
from tasks.type_mapping import (
    INTEGER_TYPES, JSONB_REFUSED_REGEX, PgColumn, copy_line_select, invalid_date_count_expr, pg_columns,
    pg_create_table_sql,
)

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
    invalid_dates: int = 0  # DATE/DATETIME values outside the calendar, loaded as NULL
    resumed_at_rows: int = 0
    method: str = ""
    mode: str = "full"
    watermark_before: str | None = None
    watermark_after: str | None = None
    deleted: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[int], None]


def _constraint_name(table: str) -> str:
    name = f"{table}_pkey"
    return name if len(name.encode()) <= PG_MAX_IDENT else shadow_name(table, "pk")


def _pg_exists(cur: Any, schema: str, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (pg_regclass(schema, table),))
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
        (pg_regclass(schema, table),),
    )
    return [r[0] for r in cur.fetchall()]


def _column_signature(cur: Any, schema: str, table: str) -> list[tuple[str, str]]:
    cur.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (pg_regclass(schema, table),),
    )
    return [(r[0], r[1]) for r in cur.fetchall()]


def _not_null_columns(cur: Any, schema: str, table: str) -> set[str]:
    cur.execute("SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 "
                "AND NOT a.attisdropped AND a.attnotnull", (pg_regclass(schema, table),))
    return {r[0] for r in cur.fetchall()}


def copy_error(e: psycopg2.Error, table: str, cols: list[PgColumn]) -> Exception:
    first = (e.pgerror or str(e)).strip().splitlines()[0]
    context = (e.diag.context or "").strip().splitlines()[0] if e.diag and e.diag.context else ""
    hint = ""
    if "unsupported Unicode escape sequence" in first or "\\u0000 cannot be converted" in first \
            or (e.pgcode == "22P05"):
        hint = ("; a JSON document holds \\u0000 or a lone surrogate escape, which jsonb cannot store: reload the "
                "table with a full refresh (the column is then created as json)")
    for c in cols:
        if c.as_boolean and f"column {c.name}:" in context:
            hint = f"; column {c.source.name!r} holds a value other than 0/1: remove it from boolean_columns or fix the data"
    return DataError(f"table {table!r}: PostgreSQL rejected a value: {first} ({context}){hint}")


PARALLEL_MIN_ROWS = 200_000  # below this one COPY stream is as fast as two


@dataclass(frozen=True)
class Part:
    """A primary-key range of a table loaded by its own COPY stream."""

    no: int
    where: str | None
    params: tuple = ()


def split_parts(conn: Any, table_sql: str, schema: TableSchema, key: tuple[str, ...], streams: int,
                estimated_rows: int) -> list[Part]:
    """Split a big table with an integer key into `streams` key ranges of about equal width."""
    if streams <= 1 or len(key) != 1 or estimated_rows < PARALLEL_MIN_ROWS:
        return [Part(0, None)]
    if schema.column(key[0]).data_type not in INTEGER_TYPES:
        return [Part(0, None)]
    k = mysql_ident(key[0])
    lo, hi = conn.exec_driver_sql(f"SELECT MIN({k}), MAX({k}) FROM {table_sql}").one()
    if lo is None or int(hi) - int(lo) < streams * 2:
        return [Part(0, None)]
    lo, hi = int(lo), int(hi)
    bounds = [lo + (hi - lo + 1) * i // streams for i in range(1, streams)]
    parts = [Part(0, f"{k} < %s", (bounds[0],))]
    for i in range(1, streams - 1):
        parts.append(Part(i, f"{k} >= %s AND {k} < %s", (bounds[i - 1], bounds[i])))
    parts.append(Part(streams - 1, f"{k} >= %s", (bounds[-1],)))
    return parts


@dataclass
class _Shared:
    """Counters the COPY streams of one table update together."""

    stats: PhaseStats
    progress: ProgressFn | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)

    def add(self, chunk: ChunkResult) -> tuple[int, int]:
        with self.lock:
            self.stats.rows += chunk.rows
            self.stats.bytes += chunk.bytes
            self.stats.chunks += 1
            self.stats.nul_chars_removed += chunk.nul_chars_removed
            self.stats.invalid_dates += chunk.flagged
            return self.stats.rows, self.stats.chunks


def load_full(engines: Engines, table: ResolvedTable, *, replica_db: str, pg_schema: str, column_case: str,
              resume: bool = False, progress: ProgressFn | None = None, streams: int = 2,
              in_swap: Callable[[Any], None] | None = None,
              loaded_at_column: str | None = "_etl_loaded_at") -> PhaseStats:
    """Reload one table into PostgreSQL from the replica (see `_load_full`).

    A fatal error (disk full, a value PostgreSQL rejects, an injected fault) drops the shadow table
    and its checkpoints at once: its rows would only hold disk space until the next run, and a retry
    would not resume from it. A retriable error keeps both, so the retry resumes.
    """
    try:
        return _load_full(engines, table, replica_db=replica_db, pg_schema=pg_schema, column_case=column_case,
                          resume=resume, progress=progress, streams=streams, in_swap=in_swap,
                          loaded_at_column=loaded_at_column)
    except BaseException as e:
        if not is_retriable(e):
            discard_shadow(engines, pg_schema, pg_table_name(table.name))
        raise


def discard_shadow(engines: Engines, pg_schema: str, pg_name: str) -> None:
    """Drop a failed load's shadow table and checkpoints; a failure here is logged, never raised."""
    try:
        with engines.analytics.connect() as pc:
            pg = pc.connection.driver_connection
            pg.autocommit = False
            cur = pg.cursor()
            execute(cur, f"DROP TABLE IF EXISTS {pg_qualified(pg_schema, shadow_name(pg_name))}")
            checkpoints.pg_clear(cur, pg_schema, pg_name)
            pg.commit()
    except Exception as e:  # noqa: BLE001 - the original error is what the caller must see
        log.warning("%s: could not drop the shadow table after a failed load: %s", pg_name, redact(str(e)))


def _load_full(
    engines: Engines,
    table: ResolvedTable,
    *,
    replica_db: str,
    pg_schema: str,
    column_case: str,
    resume: bool = False,
    progress: ProgressFn | None = None,
    streams: int = 2,
    in_swap: Callable[[Any], None] | None = None,
    loaded_at_column: str | None = "_etl_loaded_at",
) -> PhaseStats:
    """Reload one table into PostgreSQL from the replica. Returns what it moved.

    A big table with an integer key is split into `streams` key ranges, each read and copied by
    its own pair of connections, so MySQL's formatting and PostgreSQL's parsing use both cores.
    `in_swap(cursor)` runs inside the swap transaction (the sync state is written there).
    `loaded_at_column` (if set) is an extra timestamptz column stamped with the load time.
    """
    started = time.monotonic()
    stats = PhaseStats(method="copy")
    pg_name = pg_table_name(table.name)
    shadow = shadow_name(pg_name)
    q_shadow = pg_qualified(pg_schema, shadow)
    table_sql = mysql_qualified(replica_db, table.name)

    with engines.replica.connect() as rc:
        schema = read_table_schema(rc, replica_db, table.name)
        key = choose_key(schema, table.primary_key, unique_keys(rc, replica_db, table.name))
        parts = split_parts(rc, table_sql, schema, key, streams, schema.estimated_rows)
        group = group_rows_for(schema.avg_row_length, table.batch_size, max_allowed_packet(rc))
        int_key = len(key) == 1 and schema.column(key[0]).data_type in INTEGER_TYPES
        json_text = jsonb_refused_columns(rc, table_sql, schema)
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns,
                      json_text_columns=json_text)
    for c in sorted(json_text):
        stats.notes.append(f"column {c} loaded as json, not jsonb: a document holds \\u0000 or a lone surrogate "
                           f"escape, which jsonb cannot store")
        log.warning("%s: %s", table.name, stats.notes[-1])
    date_count = invalid_date_count_expr(list(schema.columns))
    by_source = {c.source.name: c for c in cols}
    copy_sql = f"COPY {q_shadow} ({', '.join(pg_ident(c.name) for c in cols)}) FROM STDIN"
    line_expr = copy_line_select(cols)

    with engines.analytics.connect() as pc:
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        checkpoints.pg_ensure(cur)  # takes the DDL lock first: tables starting together must not race
        execute(cur, f"CREATE SCHEMA IF NOT EXISTS {pg_ident(pg_schema)}")
        pg.commit()

        saved = checkpoints.pg_load(cur, pg_schema, pg_name) if resume and key else {}
        starts: dict[int, tuple[tuple | None, int, bool]] = {}
        if (saved and set(saved) == {p.no for p in parts} and all(v[0] == shadow for v in saved.values())
                and _pg_exists(cur, pg_schema, shadow)):
            starts = {no: (v[1], v[2], v[3]) for no, v in saved.items()}
            done = sum(v[2] for v in saved.values())
            stats.rows = stats.resumed_at_rows = done
            log.info("%s: resuming analytics load after %d committed rows", table.name, done)
            stats.notes.append(f"analytics load resumed after {done} committed rows")
        else:
            execute(cur, f"DROP TABLE IF EXISTS {q_shadow}")
            execute(cur, pg_create_table_sql(q_shadow, cols, loaded_at_column=loaded_at_column))
            checkpoints.pg_clear(cur, pg_schema, pg_name)
            for p in parts:
                checkpoints.pg_save(cur, pg_schema, pg_name, p.no, shadow, None, 0)
            pg.commit()
            starts = {p.no: (None, 0, False) for p in parts}

        shared = _Shared(stats, progress)

        def run(part: Part) -> None:
            after, rows_done, finished = starts[part.no]
            if finished:
                return
            query = LineQuery(table_sql=table_sql, line_expr=line_expr,
                              keyset=Keyset.for_table(schema, key, mysql_ident) if key else None,
                              batch_size=table.batch_size, where=part.where, where_params=part.params,
                              group_rows=group, integer_key=int_key, count_expr=date_count)
            _copy_part(engines, query, copy_sql, cols, table.name, pg_schema, pg_name, shadow, part.no, after,
                       rows_done, shared, keyed=bool(key))

        if len(parts) == 1:
            run(parts[0])
        else:
            stats.notes.append(f"{len(parts)} parallel COPY streams")
            with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix=f"etl-copy-{pg_name}") as pool:
                futures = [pool.submit(run, p) for p in parts]
                errors = []
                for f in futures:
                    try:
                        f.result()
                    except BaseException as e:  # noqa: BLE001 - the first one is re-raised below
                        shared.cancel.set()
                        errors.append(e)
                if errors:
                    raise errors[0]

        if key:
            pk_cols = ", ".join(pg_ident(by_source[k].name) for k in key)
            execute(cur, f"ALTER TABLE {q_shadow} ADD CONSTRAINT {pg_ident(shadow_name(pg_name, 'pk'))} "
                         f"PRIMARY KEY ({pk_cols})")
            pg.commit()
        _swap(cur, pg_schema, pg_name, shadow, has_key=bool(key), notes=stats.notes)
        checkpoints.pg_clear(cur, pg_schema, pg_name)
        if in_swap:
            in_swap(cur)
        pg.commit()
        pg.autocommit = True
        execute(cur, f"ANALYZE {pg_qualified(pg_schema, pg_name)}")
        pg.autocommit = False
    report_nul_chars(engines, table_sql, table.name, cols, stats)
    report_invalid_dates(table.name, stats)
    stats.seconds = time.monotonic() - started
    return stats


def jsonb_refused_columns(conn: Any, table_sql: str, schema: TableSchema) -> set[str]:
    """JSON columns holding at least one document jsonb refuses (see type_mapping.JSONB_REFUSED_REGEX).

    One scan per JSON column, stopping at the first match; tables without JSON
    columns cost nothing. Such a column is loaded as `json`, so one document never blocks a table.
    """
    out: set[str] = set()
    cur = conn.connection.driver_connection.cursor()
    try:
        for c in schema.columns:
            if c.is_json:
                q = mysql_ident(c.name)
                cur.execute(f"SELECT 1 FROM {table_sql} WHERE {q} REGEXP %s LIMIT 1", (JSONB_REFUSED_REGEX,))
                if cur.fetchone():
                    out.add(c.name)
    finally:
        cur.close()
    return out


def report_invalid_dates(table: str, stats: PhaseStats) -> None:
    """Dates outside the calendar (2024-02-30) are loaded as NULL like zero dates; say how many."""
    if stats.invalid_dates:
        note = (f"{stats.invalid_dates} DATE/DATETIME values outside the calendar (e.g. 2024-02-30) loaded as NULL; "
                f"the replica keeps them as they are")
        stats.notes.append(note)
        log.warning("%s: %s", table, note)


def report_nul_chars(engines: Engines, table_sql: str, table: str, cols: list[PgColumn], stats: PhaseStats) -> None:
    """When a load removed NUL characters (PostgreSQL text cannot hold them), say so in the run's notes
    and log, naming the columns and how many replica rows hold one, so the source can be fixed."""
    if not stats.nul_chars_removed:
        return
    text_cols = [c.source.name for c in cols if c.source.data_type in _TEXT_TYPES]
    where = ""
    try:
        with engines.replica.connect() as rc:
            cur = rc.connection.driver_connection.cursor()
            execute(cur, "SELECT " + ", ".join(f"SUM(LOCATE(CHAR(0), {mysql_ident(c)}) > 0)" for c in text_cols)
                    + f" FROM {table_sql}")
            counts = cur.fetchone()
            found = [f"{c} ({int(n)} rows)" for c, n in zip(text_cols, counts) if n]
            if found:
                where = "; columns holding them: " + ", ".join(found)
    except Exception as e:  # noqa: BLE001 - the note is a courtesy; the load itself succeeded
        log.warning("%s: could not find the columns holding NUL characters: %s", table, redact(str(e)))
    note = f"{stats.nul_chars_removed} NUL characters removed from text (PostgreSQL cannot store them){where}"
    stats.notes.append(note)
    log.warning("%s: %s", table, note)


# Source types whose values reach PostgreSQL as text (where a NUL character is removed).
_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json"}


def _copy_part(engines: Engines, query: LineQuery, copy_sql: str, cols: list[PgColumn], table: str,
               pg_schema: str, pg_name: str, shadow: str, part: int, after: tuple | None, rows_done: int,
               shared: _Shared, *, keyed: bool) -> None:
    """Keyset chunks of one part: each chunk is one COPY committed with the part's checkpoint."""
    with engines.analytics.connect() as pc, engines.replica.connect() as rc:
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        my = rc.connection.driver_connection
        while not shared.cancel.is_set():
            chunk = ChunkResult()
            reader = Prefetcher(read_chunk_blocks(my, query, after, chunk, strip_nul=True))
            source = BlockFile(iter(reader))
            try:
                copy_expert(cur, copy_sql, source, size=BLOCK_BYTES)
            except psycopg2.Error as e:
                pg.rollback()
                rc.invalidate()
                if source.error is not None:  # the MySQL side failed (e.g. a row it cannot print)
                    raise source.error from None
                if isinstance(e, psycopg2.DataError):
                    raise copy_error(e, table, cols) from e
                raise
            except BaseException:
                pg.rollback()
                rc.invalidate()
                raise
            finally:
                reader.close()
            last = chunk.rows < query.batch_size or not keyed
            if chunk.rows:
                after = chunk.last_key
                rows_done += chunk.rows
            if keyed:
                checkpoints.pg_save(cur, pg_schema, pg_name, part, shadow, after, rows_done, finished=last)
            pg.commit()
            if not chunk.rows:
                break
            total, chunks = shared.add(chunk)
            if shared.progress:
                shared.progress(total)
            faults.check("analytics", table, chunks)
            if last:
                break


def _swap(cur: Any, schema: str, table: str, shadow: str, *, has_key: bool, notes: list[str]) -> None:
    """Make the shadow table the live one, atomically. Caller commits."""
    cur.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
    q_live = pg_qualified(schema, table)
    q_shadow = pg_qualified(schema, shadow)
    if not _pg_exists(cur, schema, table):
        execute(cur, f"ALTER TABLE {q_shadow} RENAME TO {pg_ident(table)}")
        if has_key:
            execute(cur, f"ALTER TABLE {q_live} RENAME CONSTRAINT {pg_ident(shadow_name(table, 'pk'))} "
                         f"TO {pg_ident(_constraint_name(table))}")
        return
    views = dependent_views(cur, schema, table)
    if not views:
        execute(cur, f"DROP TABLE {q_live}")
        execute(cur, f"ALTER TABLE {q_shadow} RENAME TO {pg_ident(table)}")
        if has_key:
            execute(cur, f"ALTER TABLE {q_live} RENAME CONSTRAINT {pg_ident(shadow_name(table, 'pk'))} "
                         f"TO {pg_ident(_constraint_name(table))}")
        return
    # Views depend on the live table: keep the table (and the views, grants and comments on it),
    # replace its rows in the same transaction. New columns are added in place first; a dropped or
    # retyped column would break the views, so that stops the table with a message instead.
    live_cols = dict(_column_signature(cur, schema, table))
    new_cols = _column_signature(cur, schema, shadow)
    dropped = [c for c in live_cols if c not in dict(new_cols)]
    retyped = [c for c, t in new_cols if c in live_cols and live_cols[c] != t]
    if dropped or retyped:
        what = ", ".join([f"{c} dropped" for c in dropped] + [f"{c} retyped" for c in retyped])
        raise SchemaError(
            f"table {schema}.{table} changed shape ({what}) but views depend on it ({', '.join(views)}); "
            f"drop or adjust those views, or run with --full-refresh after recreating them"
        )
    execute(cur, f"TRUNCATE {q_live}")
    for c, t in new_cols:
        if c not in live_cols:
            execute(cur, f"ALTER TABLE {q_live} ADD COLUMN {pg_ident(c)} {t}")
    # A column the source relaxed to NULL: the rows coming in may hold NULL (DROP NOT NULL works under views).
    for c in _not_null_columns(cur, schema, table) - _not_null_columns(cur, schema, shadow):
        if c in dict(new_cols):
            execute(cur, f"ALTER TABLE {q_live} ALTER COLUMN {pg_ident(c)} DROP NOT NULL")
            notes.append(f"column {c} relaxed to NULL in place (views depend on the table)")
            notes.append(f"column {c} added in place (views depend on the table)")
    names = ", ".join(pg_ident(c) for c, _ in new_cols)
    execute(cur, f"INSERT INTO {q_live} ({names}) SELECT {names} FROM {q_shadow}")
    execute(cur, f"DROP TABLE {q_shadow}")
    notes.append(f"rows replaced in place because views depend on it: {', '.join(views)}")
