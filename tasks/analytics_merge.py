"""Incremental analytics phase: merge the changed replica rows into PostgreSQL.

Each chunk of the change window (read on the replica, tasks/watermarks.read_window) is COPied into
a temporary stage table (tasks/copy.py) and merged with `INSERT ... ON CONFLICT (key) DO UPDATE ...
WHERE (...) IS DISTINCT FROM (...)`, so an unchanged row is not rewritten. Keys respelled in the
source under their collation (recorded by tasks/replica_merge.py) are a different key to
PostgreSQL, which compares text byte by byte: their old spellings are deleted first.
"""
from __future__ import annotations

import time
from typing import Any

import psycopg2.extras

from tasks import faults
from tasks.connections import Engines
from tasks.copy import copy_chunk, report_nul_chars
from tasks.identifiers import execute, mysql_ident, mysql_qualified, pg_ident, shadow_name
from tasks.job import PhaseStats, ProgressFn, TableJob, column_types
from tasks.load_data import packet_size
from tasks.mysql_schema import TableSchema
from tasks.replica_merge import respelled_table
from tasks.state import TableState
from tasks.streaming import LineQuery, group_rows_for
from tasks.type_mapping import copy_line_select
from tasks.watermarks import Window, read_window


def _stale_spellings(mcur: Any, replica_db: str, table: str, key: tuple[str, ...]) -> tuple[int, list[tuple]]:
    """(last id read, old key spellings no longer present byte for byte in the replica)."""
    side = mysql_qualified(replica_db, respelled_table(table))
    mcur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                 (replica_db, respelled_table(table)))
    if not mcur.fetchone()[0]:
        return 0, []
    cols = ", ".join(f"s.{mysql_ident(k)}" for k in key)
    exact = " AND ".join(f"CAST(r.{mysql_ident(k)} AS BINARY) = CAST(s.{mysql_ident(k)} AS BINARY)" for k in key)
    # Bounded: one entry per key respelled since the last analytics merge.
    execute(mcur, f"SELECT MAX(`_etl_id`) FROM {side}")
    last = mcur.fetchone()[0] or 0
    execute(mcur, f"SELECT DISTINCT {cols} FROM {side} AS s WHERE s.`_etl_id` <= %s AND NOT EXISTS "
                  f"(SELECT 1 FROM {mysql_qualified(replica_db, table)} AS r WHERE {exact})", (last,))
    return int(last), [tuple(r) for r in mcur.fetchall()]


def _delete_stale_spellings(cur: Any, live: str, key_cols: list[str], stale: list[tuple]) -> None:
    cols = ", ".join(key_cols)
    match = " AND ".join(f"{live}.{c} = d.{c}" for c in key_cols)
    psycopg2.extras.execute_values(cur, f"DELETE FROM {live} USING (VALUES %s) AS d({cols}) WHERE {match}",
                                   stale, page_size=1000)


def load_incremental(engines: Engines, job: TableJob, *, schema: TableSchema, state: TableState, save_state: Any,
                     progress: ProgressFn | None = None, window: Window | None = None) -> PhaseStats:
    """Merge the changed replica rows into the analytics table (COPY into a temp stage, then upsert).
    `schema` is the replica table's (read by the analytics phase); `window`, when given, is the one
    the caller read from the replica (see tasks/sync._load)."""
    started = time.monotonic()
    table, key, replica_db = job.table, job.key, job.replica_db
    stats = PhaseStats(method="copy+merge", mode="incremental", watermark_before=state.describe())
    rep_sql = job.replica_sql
    pg_name = job.pg_name
    live = job.pg_sql
    cols = job.pg_columns(schema)
    by_source = {c.source.name: c for c in cols}
    names = [pg_ident(c.name) for c in cols]
    key_cols = [pg_ident(by_source[k].name) for k in key]
    non_key = [pg_ident(c.name) for c in cols if c.source.name not in key]
    sets = [f"{n} = EXCLUDED.{n}" for n in non_key]
    if job.loaded_at_column:
        sets.append(f"{pg_ident(job.loaded_at_column)} = now()")
    if non_key:
        # JSON compared as text: a column kept as `json` (tasks/analytics_full) has no equality operator.
        def cmp(prefix: str, c: Any) -> str:
            return f"{prefix}.{pg_ident(c.name)}" + ("::text" if c.source.is_json else "")
        others = [c for c in cols if c.source.name not in key]
        changed = (f" WHERE ({', '.join(cmp(live, c) for c in others)}) IS DISTINCT FROM "
                   f"({', '.join(cmp('EXCLUDED', c) for c in others)})")
        conflict = f"DO UPDATE SET {', '.join(sets)}{changed}"
    else:
        conflict = "DO NOTHING"
    line = copy_line_select(cols)
    with engines.replica.connect() as rc, engines.analytics.connect() as pc:
        my = rc.connection.driver_connection
        mcur = my.cursor()
        if window is None:
            window = read_window(mcur, rep_sql, table.incremental_columns, state.watermarks, table.lookback,
                                 column_types(schema), late_commits=False)
        passes, new_wm = window.passes, window.save
        stale_upto, stale = _stale_spellings(mcur, replica_db, table.name, key)
        my.commit()
        group = group_rows_for(schema.avg_row_length, table.batch_size, packet_size(my))
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        stage = pg_ident(shadow_name(pg_name, "stage"))
        execute(cur, f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {live} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        pg.commit()
        copy_sql = f"COPY {stage} ({', '.join(names)}) FROM STDIN"
        merge_sql = (f"INSERT INTO {live} ({', '.join(names)}) SELECT {', '.join(names)} FROM {stage} "
                     f"ON CONFLICT ({', '.join(key_cols)}) {conflict}")
        try:
            if stale:
                # The new spellings are in this window (their rows changed), merged below; a stop in
                # between leaves the watermark unsaved, so the next run merges them again.
                _delete_stale_spellings(cur, live, key_cols, stale)
                pg.commit()
                stats.notes.append(f"{len(stale)} keys respelled in the source (case, accents or trailing "
                                   f"spaces) replaced")
            for p in passes:
                wcond, wparams = p.condition()
                query = LineQuery(table_sql=rep_sql, line_expr=line, keyset=job.keyset(schema, leading=p.column),
                                  batch_size=table.batch_size, where=wcond, where_params=wparams, group_rows=group)
                after: tuple | None = None
                while True:
                    chunk = copy_chunk(pg, cur, my, copy_sql=copy_sql, query=query, after=after, table=table.name,
                                       cols=cols)
                    if chunk.rows:
                        execute(cur, merge_sql)
                        stats.rows += cur.rowcount
                        stats.bytes += chunk.bytes
                        stats.chunks += 1
                        stats.nul_chars_removed += chunk.nul_chars_removed
                    pg.commit()
                    if progress:
                        progress(stats.rows)
                    faults.check("analytics", table.name, stats.chunks)
                    if chunk.rows < table.batch_size:
                        break
                    after = chunk.last_key
            save_state(cur, new_wm)
            pg.commit()
        except BaseException:
            pg.rollback()
            rc.invalidate()
            raise
        if stale_upto:
            execute(mcur, f"DELETE FROM {mysql_qualified(replica_db, respelled_table(table.name))} "
                          f"WHERE `_etl_id` <= %s", (stale_upto,))
            my.commit()
    report_nul_chars(engines, rep_sql, table.name, cols, stats)
    stats.watermark_after = TableState(watermarks=new_wm).describe()
    stats.seconds = time.monotonic() - started
    return stats
