"""Replica MySQL -> analytics PostgreSQL: full refresh through a shadow table and COPY.

1. CREATE the shadow table `_etl_new_<table>` from the MySQL column types (type_mapping).
2. Read the replica in keyset chunks; MySQL prints each row as a COPY text line; each chunk is one
   `COPY ... FROM STDIN` committed together with its checkpoint, so a retry resumes after it.
3. Add the primary key once the rows are in (one index build instead of N index updates).
4. Swap in one transaction. A reader sees yesterday's table or today's, never a half-loaded one.
   When views depend on the table (dbt builds views on `raw`), the table is not renamed away from
   under them: its rows are replaced in place (TRUNCATE + INSERT from the shadow, one transaction).

A small table (tasks/replica_full.small_enough, from the replica's estimate) whose analytics table
already has exactly the columns, types, NOT NULLs and primary key this load would create is
refreshed in place instead: DELETE, COPY into the live table and the sync state in one
transaction, no DDL (no shadow table, key build, rename or drop). Readers see the old rows until
the commit. A retry (resume) always takes the shadow path.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from tasks import checkpoints, faults, once
from tasks.connections import Engines
from tasks.copy import copy_chunk, report_invalid_dates, report_nul_chars
from tasks.errors import SchemaError, is_retriable, redact
from tasks.identifiers import PG_MAX_IDENT, execute, mysql_ident, pg_ident, pg_qualified, pg_regclass, shadow_name
from tasks.job import PhaseStats, ProgressFn, TableJob
from tasks.mysql_schema import TableSchema, max_allowed_packet
from tasks.streaming import ChunkResult, LineQuery, group_rows_for
from tasks.replica_full import small_enough
from tasks.type_mapping import (
    INTEGER_TYPES, JSONB_REFUSED_REGEX, PgColumn, copy_line_select, invalid_date_count_expr, pg_create_table_sql,
    same_pg_type,
)

log = logging.getLogger("etl.analytics")

SWAP_LOCK_TIMEOUT = "60s"


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


def load_full(engines: Engines, job: TableJob, *, schema: TableSchema, resume: bool = False,
              progress: ProgressFn | None = None, streams: int = 2,
              in_swap: Callable[[Any], None] | None = None) -> PhaseStats:
    """Reload one table into PostgreSQL from the replica (see `_load_full`). `schema` is the replica
    table's, read by the analytics phase.

    A fatal error (disk full, a value PostgreSQL rejects, an injected fault) drops the shadow table
    and its checkpoints at once: its rows would only hold disk space until the next run, and a retry
    would not resume from it. A retriable error keeps both, so the retry resumes.
    """
    try:
        return _load_full(engines, job, schema=schema, resume=resume, progress=progress, streams=streams,
                          in_swap=in_swap)
    except BaseException as e:
        if not is_retriable(e):
            discard_shadow(engines, job.pg_schema, job.pg_name)
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


def _load_full(engines: Engines, job: TableJob, *, schema: TableSchema, resume: bool,
               progress: ProgressFn | None, streams: int, in_swap: Callable[[Any], None] | None) -> PhaseStats:
    """Reload one table into PostgreSQL from the replica. Returns what it moved.

    A big table with an integer key is split into `streams` key ranges, each read and copied by
    its own pair of connections, so MySQL's formatting and PostgreSQL's parsing use both cores.
    `in_swap(cursor)` runs inside the swap transaction (the sync state is written there).
    `job.loaded_at_column` (if set) is an extra timestamptz column stamped with the load time.
    """
    started = time.monotonic()
    stats = PhaseStats(method="copy")
    table, key, pg_schema, pg_name = job.table, job.key, job.pg_schema, job.pg_name
    shadow = shadow_name(pg_name)
    q_shadow = pg_qualified(pg_schema, shadow)
    table_sql = job.replica_sql

    with engines.replica.connect() as rc:
        parts = split_parts(rc, table_sql, schema, key, streams, schema.estimated_rows)
        group = group_rows_for(schema.avg_row_length, table.batch_size, max_allowed_packet(rc))
        int_key = len(key) == 1 and schema.column(key[0]).data_type in INTEGER_TYPES
        json_text = jsonb_refused_columns(rc, table_sql, schema)
    cols = job.pg_columns(schema, json_text_columns=json_text)
    for c in sorted(json_text):
        stats.notes.append(f"column {c} loaded as json, not jsonb: a document holds \\u0000 or a lone surrogate "
                           f"escape, which jsonb cannot store")
        log.warning("%s: %s", table.name, stats.notes[-1])
    date_count = invalid_date_count_expr(list(schema.columns))
    by_source = {c.source.name: c for c in cols}
    if not resume and len(parts) == 1 and small_enough(schema.estimated_rows, schema.data_length, table.batch_size):
        query = LineQuery(table_sql=table_sql, line_expr=copy_line_select(cols),
                          keyset=job.keyset(schema) if key else None, batch_size=table.batch_size,
                          group_rows=group, integer_key=int_key, count_expr=date_count)
        if _load_in_place(engines, job, cols=cols, query=query, stats=stats, progress=progress, in_swap=in_swap):
            report_nul_chars(engines, table_sql, table.name, cols, stats)
            report_invalid_dates(table.name, stats)
            stats.seconds = time.monotonic() - started
            return stats
    copy_sql = f"COPY {q_shadow} ({', '.join(pg_ident(c.name) for c in cols)}) FROM STDIN"
    line_expr = copy_line_select(cols)

    with engines.analytics.connect() as pc:
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        checkpoints.pg_ensure(cur)  # takes the DDL lock first: tables starting together must not race
        if once.first_time(pg, f"analytics:schema:{pg_schema}"):
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
            execute(cur, pg_create_table_sql(q_shadow, cols, loaded_at_column=job.loaded_at_column))
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
                              keyset=job.keyset(schema) if key else None,
                              batch_size=table.batch_size, where=part.where, where_params=part.params,
                              group_rows=group, integer_key=int_key, count_expr=date_count)
            _copy_part(engines, job, query=query, copy_sql=copy_sql, cols=cols, shadow=shadow, part=part.no,
                       after=after, rows_done=rows_done, shared=shared)

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


def live_shape_matches(cur: Any, job: TableJob, cols: list[PgColumn]) -> bool:
    """Does the live analytics table have exactly the columns (names, order, types, NOT NULL, defaults)
    and primary key that `pg_create_table_sql` and the key build would give it? (False when it is missing.)"""
    regclass = pg_regclass(job.pg_schema, job.pg_name)
    cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid) "
                "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
                "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (regclass,))
    have = cur.fetchall()
    want = [(c.name, c.pg_type, not c.nullable or c.source.name in job.key, None) for c in cols]
    if job.loaded_at_column:
        want.append((job.loaded_at_column, "timestamp with time zone", True, "now()"))
    if len(have) != len(want) or any(h[0] != w[0] or not same_pg_type(h[1], w[1]) or h[2] != w[2] or h[3] != w[3]
                                     for h, w in zip(have, want)):
        return False
    cur.execute("SELECT c.conname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint c "
                "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
                "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'p' GROUP BY c.conname", (regclass,))
    by_source = {c.source.name: c.name for c in cols}
    want_pk = [(_constraint_name(job.pg_name), [by_source[k] for k in job.key])] if job.key else []
    return [(r[0], list(r[1])) for r in cur.fetchall()] == want_pk


def _load_in_place(engines: Engines, job: TableJob, *, cols: list[PgColumn], query: LineQuery, stats: PhaseStats,
                   progress: ProgressFn | None, in_swap: Callable[[Any], None] | None) -> bool:
    """The small-table path (module docstring): False, having written nothing, when it does not apply."""
    q_live = pg_qualified(job.pg_schema, job.pg_name)
    copy_sql = f"COPY {q_live} ({', '.join(pg_ident(c.name) for c in cols)}) FROM STDIN"
    with engines.analytics.connect() as pc, engines.replica.connect() as rc:
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        live = _pg_exists(cur, job.pg_schema, job.pg_name)
        if live and not live_shape_matches(cur, job, cols):
            pg.rollback()
            return False
        my = rc.connection.driver_connection
        try:
            cur.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
            if live:
                execute(cur, f"DELETE FROM {q_live}")
            else:  # first load: created in this transaction, so nobody sees it before its rows
                if once.first_time(pg, f"analytics:schema:{job.pg_schema}"):
                    checkpoints.pg_ensure(cur)  # the DDL lock first, as the shadow path takes it
                    execute(cur, f"CREATE SCHEMA IF NOT EXISTS {pg_ident(job.pg_schema)}")
                # The key in the CREATE itself (the table is empty: nothing to build after a load).
                by_source = {c.source.name: c for c in cols}
                pk = (_constraint_name(job.pg_name), [by_source[k].name for k in job.key]) if job.key else None
                execute(cur, pg_create_table_sql(q_live, cols, loaded_at_column=job.loaded_at_column, primary_key=pk))
            after = None
            while True:
                try:
                    chunk = copy_chunk(pg, cur, my, copy_sql=copy_sql, query=query, after=after, table=job.name,
                                       cols=cols)
                except BaseException:
                    rc.invalidate()
                    raise
                if chunk.rows:
                    after = chunk.last_key
                    total, _ = _Shared(stats, progress).add(chunk)
                    if progress:
                        progress(total)
                if not job.keyed or chunk.rows < query.batch_size:
                    break
            faults.check("analytics", job.name, 1)
            checkpoints.pg_ensure(cur)
            checkpoints.pg_clear(cur, job.pg_schema, job.pg_name)
            if in_swap:
                in_swap(cur)
            pg.commit()
        except BaseException:
            pg.rollback()
            raise
    stats.notes.append("small table: refreshed in place in one transaction (no shadow table)" if live
                       else "small table: created and loaded in one transaction (no shadow table)")
    return True


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


def _copy_part(engines: Engines, job: TableJob, *, query: LineQuery, copy_sql: str, cols: list[PgColumn],
               shadow: str, part: int, after: tuple | None, rows_done: int, shared: _Shared) -> None:
    """Keyset chunks of one part: each chunk is one COPY committed with the part's checkpoint."""
    keyed = job.keyed
    with engines.analytics.connect() as pc, engines.replica.connect() as rc:
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        my = rc.connection.driver_connection
        while not shared.cancel.is_set():
            try:
                chunk = copy_chunk(pg, cur, my, copy_sql=copy_sql, query=query, after=after, table=job.name, cols=cols)
            except BaseException:
                rc.invalidate()
                raise
            last = chunk.rows < query.batch_size or not keyed
            if chunk.rows:
                after = chunk.last_key
                rows_done += chunk.rows
            if keyed:
                checkpoints.pg_save(cur, job.pg_schema, job.pg_name, part, shadow, after, rows_done, finished=last)
            pg.commit()
            if not chunk.rows:
                break
            total, chunks = shared.add(chunk)
            if shared.progress:
                shared.progress(total)
            faults.check("analytics", job.name, chunks)
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
