"""Incremental sync: move only rows whose change columns advanced, merged by primary key.

The change window of each change column c is [watermark(c) - lookback, MAX(c) read at the start].
A row changed when ANY change column is inside its window (OR semantics), so the window is read as
one pass per column; a row caught by two passes is merged twice, which changes nothing. Inside a
pass the rows are paged with a composite keyset on (c, primary key), so thousands of rows sharing
one timestamp are neither skipped nor read twice. The next run starts at `>=` the saved maximum:
rows that arrive later with a timestamp equal to it are still picked up, and the merge makes the
re-read boundary harmless. The watermark saved may be held below MAX (late commits, DST, see
tasks/watermarks.py), and a retry reuses the window its first attempt read. NULL change values never match a window (a nullable column alone cannot
be trusted; `etl discover` only chooses incremental where a server-maintained column exists).

Merges: MySQL `INSERT ... ON DUPLICATE KEY UPDATE` (`VALUES()` on MariaDB and MySQL < 8.0.20, the
row-alias form on newer MySQL); PostgreSQL `INSERT ... ON CONFLICT DO UPDATE ... WHERE (...) IS
DISTINCT FROM (...)`, so an unchanged row is not rewritten.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import psycopg2

from config.models import LookbackWindow, ResolvedTable, parse_lookback_seconds
from tasks import faults, watermarks
from tasks.analytics_load import PhaseStats, ProgressFn, copy_error, report_nul_chars
from tasks.connections import Engines
from tasks.errors import SchemaError
from tasks.identifiers import (
    copy_expert, execute, mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_table_name, readable, shadow_name,
)
from tasks.keyset import Keyset
from tasks.mysql_schema import ServerIdentity, TableSchema, relax_unique_sql
from tasks.load_data import fifo_path, load_chunk, load_data_plan, packet_size
from tasks.state import TableState
from tasks.streaming import BLOCK_BYTES, BlockFile, ChunkResult, LineQuery, Prefetcher, group_rows_for, read_chunk_blocks
from tasks.type_mapping import copy_line_select, pg_columns
from tasks.watermarks import Pass, Window

log = logging.getLogger("etl.incremental")


def column_max(cur: Any, table_sql: str, column: str) -> Any:
    return watermarks.column_max(cur, table_sql, column)


def _now_caps(cur: Any) -> tuple[dt.datetime, dt.datetime]:
    """Latest plausible TIMESTAMP (UTC now) and DATETIME (now in any time zone) on the server."""
    return watermarks.now_caps(cur)


def read_window(cur: Any, table_sql: str, columns: tuple[str, ...], saved: dict[str, Any],
                lookback: str | LookbackWindow | None, types: dict[str, str] | None = None, *,
                late_commits: bool = True) -> Window:
    """The passes to read now and the watermarks to save once they are merged (tasks/watermarks.py
    says how the saved watermark is held back so no late-committed or DST-repeated row falls behind).

    A saved watermark never passes the server's clock: a row stamped in the future (bad data, a
    skewed application clock) would otherwise push it ahead and hide every real change until then.
    Such rows are simply read again each run until the clock catches up.

    `lookback` as a duration moves each change column's window start back by it; as date columns
    with a window it adds one pass per date column over [now - window, MAX(column)], re-reading rows
    edited without touching a change column. Those passes save no watermark.
    """
    back = dt.timedelta(seconds=parse_lookback_seconds(lookback)) if isinstance(lookback, str) else None
    types = types or {}
    maxima, save, notes = watermarks.capture(cur, table_sql, columns, types, saved, late_commits=late_commits)
    passes: list[Pass] = []
    for c in columns:
        high, low = maxima[c], saved.get(c)
        if high is None:
            continue
        if low is not None and back is not None and isinstance(low, dt.datetime):
            low = low - back
        if low is not None and isinstance(low, dt.datetime) and low.year < 1:
            low = None
        passes.append(Pass(c, low, high))
    if isinstance(lookback, LookbackWindow):
        ts_cap, _ = watermarks.now_caps(cur)
        passes.extend(date_window_passes(cur, table_sql, lookback, types, utc_now=ts_cap))
    return Window(passes=passes, save=save, protection=notes)


def change_window(cur: Any, table_sql: str, columns: tuple[str, ...], watermarks: dict[str, Any],
                  lookback: str | LookbackWindow | None,
                  types: dict[str, str] | None = None) -> tuple[list[Pass], dict[str, Any]]:
    """(passes, watermarks to save): `read_window` as a pair."""
    w = read_window(cur, table_sql, columns, watermarks, lookback, types)
    return w.passes, w.save


def date_window_passes(cur: Any, table_sql: str, lookback: LookbackWindow, types: dict[str, str], *,
                       utc_now: dt.datetime) -> list[Pass]:
    """One pass per lookback date column: rows dated within the window up to the column's maximum.

    TIMESTAMP columns are read in UTC, so their window starts at UTC now - window. DATE and DATETIME
    hold the application's local time, which may be up to 12 hours behind UTC: their window starts
    12 hours earlier, and DATE windows start at midnight. Re-reading a little more is harmless.
    """
    span = dt.timedelta(seconds=parse_lookback_seconds(lookback.window))
    out: list[Pass] = []
    for c in lookback.columns:
        kind = check_window_column(readable(table_sql), c, types)
        low = utc_now - span if kind == "timestamp" else utc_now - span - dt.timedelta(hours=12)
        if kind == "date":
            low = dt.datetime.combine(low.date(), dt.time())
        high = column_max(cur, table_sql, c)
        if high is not None and high >= low:
            out.append(Pass(c, low, high))
    return out


def check_window_column(where: str, column: str, types: dict[str, str], *, fix: str = "lookback.columns") -> str:
    """The column's type for a lookback window, or a SchemaError naming `where`, the column and `fix`."""
    kind = types.get(column)
    if kind is None:
        import difflib

        m = difflib.get_close_matches(column, list(types), n=1)
        hint = f" (did you mean {m[0]!r}?)" if m else ""
        raise SchemaError(f"{where}: lookback column {column!r} does not exist{hint}; fix {fix}")
    if kind not in ("date", "datetime", "timestamp"):
        raise SchemaError(f"{where}: lookback column {column!r} is {kind}; a lookback window needs a DATE, "
                          f"DATETIME or TIMESTAMP column; fix {fix}")
    return kind


def odku_clause(columns: list[str], key: tuple[str, ...], *, row_alias: str | None) -> str:
    """ON DUPLICATE KEY UPDATE for every column, the key columns included.

    The key too: under a case-insensitive or PAD SPACE collation 'abc' -> 'ABC' or 'zz' -> 'zz ' is
    the same key to the server, so the row matches, and only setting the key column carries the
    source's new spelling. The replica has no other unique index to match (see relax_unique).
    """
    del key  # every column is set; kept in the signature for the callers' readability
    sets = list(columns)
    if row_alias:
        return "ON DUPLICATE KEY UPDATE " + ", ".join(f"{mysql_ident(c)} = {row_alias}.{mysql_ident(c)}" for c in sets)
    return "ON DUPLICATE KEY UPDATE " + ", ".join(f"{mysql_ident(c)} = VALUES({mysql_ident(c)})" for c in sets)


# Key column types whose spelling can change while the server still sees the same key (collation:
# case, accents, trailing spaces under PAD SPACE).
_TEXT_KEY_TYPES = ("char", "varchar", "tinytext", "text", "mediumtext", "longtext")


def respellable_key(schema: TableSchema, key: tuple[str, ...]) -> bool:
    return any(schema.column(k).data_type in _TEXT_KEY_TYPES and schema.column(k).collation for k in key)


def respelled_table(table: str) -> str:
    """Replica side table of old key spellings the analytics merge must delete (see record_respelled)."""
    return shadow_name(table, "respelled")


def _ensure_respelled(cur: Any, table: str, key: tuple[str, ...]) -> None:
    # CREATE ... SELECT copies the key columns' types and collations from the replica table.
    cols = ", ".join(mysql_ident(k) for k in key)
    execute(cur, f"CREATE TABLE IF NOT EXISTS {mysql_ident(respelled_table(table))} "
                 f"(`_etl_id` BIGINT AUTO_INCREMENT PRIMARY KEY) SELECT {cols} FROM {mysql_ident(table)} LIMIT 0")


def record_respelled(cur: Any, table: str, key: tuple[str, ...], incoming_sql: str, params: list[Any]) -> int:
    """Save the replica keys that the incoming rows (`incoming_sql`, a SELECT of at least the key
    columns) will respell: equal under the column's collation, different bytes.

    MySQL updates such a row in place; PostgreSQL compares text byte by byte, so for it the old
    spelling is another key, which the analytics merge deletes before inserting the new one.
    """
    same = " AND ".join(f"r.{mysql_ident(k)} = s.{mysql_ident(k)}" for k in key)
    exact = " AND ".join(f"CAST(r.{mysql_ident(k)} AS BINARY) = CAST(s.{mysql_ident(k)} AS BINARY)" for k in key)
    cols = ", ".join(mysql_ident(k) for k in key)
    rcols = ", ".join(f"r.{mysql_ident(k)}" for k in key)
    execute(cur, f"INSERT INTO {mysql_ident(respelled_table(table))} ({cols}) SELECT {rcols} "
                 f"FROM {mysql_ident(table)} AS r JOIN ({incoming_sql}) AS s ON {same} WHERE NOT ({exact})", params)
    return cur.rowcount


def _relax_replica_uniques(cur: Any, table: str, schema: TableSchema, key: tuple[str, ...]) -> None:
    """Make a replica table created before relax_unique merge by its key alone (once; then a no-op)."""
    execute(cur, f"SHOW CREATE TABLE {mysql_ident(table)}")
    ddl = str(cur.fetchone()[1])
    sql = relax_unique_sql(ddl, table, keep_unique=key if key != schema.primary_key else ())
    if sql:
        log.info("%s: replica's secondary UNIQUE indexes made plain (rows are merged by key alone)", table)
        execute(cur, sql)


def _boundary(cur: Any, table_sql: str, ks: Keyset, where: str, params: list[Any], n: int) -> tuple | None:
    """Key of the n-th row of the window after the current position, or None if fewer remain."""
    cur.execute(f"SELECT {ks.select_list} FROM {table_sql} WHERE {where} ORDER BY {ks.order_by} "
                f"LIMIT 1 OFFSET {int(n) - 1}", params)
    row = cur.fetchone()
    return tuple(row) if row else None


def replicate_incremental(engines: Engines, table: ResolvedTable, schema: TableSchema, key: tuple[str, ...], *,
                          source_db: str, replica_db: str, method: str, state: TableState,
                          replica_server: ServerIdentity, save_state: Any,
                          progress: ProgressFn | None = None, window: Window | None = None) -> PhaseStats:
    """Merge the changed source rows into the replica table. `save_state(cursor, new_watermarks)`
    is called in the transaction of the last merged chunk. `window` (read and persisted by the
    caller before the first attempt) is used as is, so a retry reads no new MAX."""
    started = time.monotonic()
    stats = PhaseStats(method=method, mode="incremental", watermark_before=state.describe())
    src_sql = mysql_qualified(source_db, table.name)
    with engines.source.connect() as sc, engines.replica.connect() as rc:
        src = sc.connection.driver_connection
        rep = rc.connection.driver_connection
        scur, cur = src.cursor(), rep.cursor()
        execute(cur, f"USE {mysql_ident(replica_db)}")
        _relax_replica_uniques(cur, table.name, schema, key)
        if respellable_key(schema, key):
            _ensure_respelled(cur, table.name, key)
        rep.commit()
        if window is None:
            window = read_window(scur, src_sql, table.incremental_columns, state.watermarks, table.lookback,
                                 {c.name: c.data_type for c in schema.columns})
        passes, new_wm = window.passes, window.save
        try:
            if method == "server":
                _merge_server(cur, rep, scur, table, schema, key, passes, src_sql, replica_db, replica_server,
                              stats, progress)
            else:
                _merge_streamed(src, cur, rep, table, schema, key, passes, src_sql, replica_server, stats, progress)
        except BaseException:
            sc.invalidate()
            raise
        save_state(cur, new_wm)
        rep.commit()
        src.rollback()
    stats.watermark_after = TableState(watermarks=new_wm).describe()
    stats.seconds = time.monotonic() - started
    return stats


def _merge_server(cur: Any, rep: Any, scur: Any, table: ResolvedTable, schema: TableSchema, key: tuple[str, ...],
                  passes: list[Pass], src_sql: str, replica_db: str, server: ServerIdentity, stats: PhaseStats,
                  progress: ProgressFn | None) -> None:
    cols = ", ".join(mysql_ident(c) for c in schema.column_names)
    dst = mysql_qualified(replica_db, table.name)
    alias = "`_etl_new`" if server.mysql8_alias_upsert else None
    update = odku_clause(schema.column_names, key, row_alias=alias)
    respell = respellable_key(schema, key)
    key_list = ", ".join(mysql_ident(k) for k in key)
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    try:
        for p in passes:
            ks = Keyset.for_table(schema, (p.column, *key), mysql_ident)
            wcond, wparams = p.condition()
            after: tuple | None = None
            while True:
                acond, aparams = ks.after(after)
                where, params = f"({wcond}) AND {acond}", [*wparams, *aparams]
                end = _boundary(scur, src_sql, ks, where, params, table.batch_size)
                if end is not None:
                    econd, eparams = ks.after(end)
                    where, params = f"{where} AND NOT {econd}", [*params, *eparams]
                select = f"SELECT {cols} FROM {src_sql} WHERE {where}"
                if respell:  # keys only: the join must not carry whole rows
                    record_respelled(cur, table.name, key, f"SELECT {key_list} FROM {src_sql} WHERE {where}", params)
                if alias:
                    sql = f"INSERT INTO {dst} ({cols}) SELECT * FROM ({select}) AS {alias} {update}"
                else:
                    sql = f"INSERT INTO {dst} ({cols}) {select} {update}"
                cur.execute(sql, params)
                stats.chunks += 1
                # affected rows: 1 per insert, 2 per changed row, 0 per identical row
                stats.rows += cur.rowcount
                rep.commit()
                if progress:
                    progress(stats.rows)
                faults.check("replica", table.name, stats.chunks)
                if end is None:
                    break
                after = end
    finally:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def _merge_streamed(src: Any, cur: Any, rep: Any, table: ResolvedTable, schema: TableSchema, key: tuple[str, ...],
                    passes: list[Pass], src_sql: str, server: ServerIdentity, stats: PhaseStats,
                    progress: ProgressFn | None) -> None:
    stage = shadow_name(table.name, "stage")
    cols = ", ".join(mysql_ident(c) for c in schema.column_names)
    alias = "`_etl_new`" if server.mysql8_alias_upsert else None
    update = odku_clause(schema.column_names, key, row_alias=alias)
    respell = respellable_key(schema, key)
    key_list = ", ".join(mysql_ident(k) for k in key)
    execute(cur, f"DROP TABLE IF EXISTS {mysql_ident(stage)}")
    execute(cur, f"CREATE TABLE {mysql_ident(stage)} LIKE {mysql_ident(table.name)}")
    cur.execute("SET SESSION max_error_count = 65535")
    plan = load_data_plan(schema, stage)
    group = group_rows_for(schema.avg_row_length, table.batch_size, packet_size(src))
    with src.cursor() as c:
        c.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    try:
        with fifo_path() as fifo:
            for p in passes:
                wcond, wparams = p.condition()
                query = LineQuery(table_sql=src_sql, line_expr=plan.line_expr,
                                  keyset=Keyset.for_table(schema, (p.column, *key), mysql_ident), batch_size=table.batch_size,
                                  where=wcond, where_params=wparams, group_rows=group)
                after: tuple | None = None
                while True:
                    chunk = ChunkResult()
                    load_chunk(src, cur, fifo, plan.load_sql, query, after, chunk, set(plan.enum_columns))
                    if chunk.rows:
                        select = f"SELECT {cols} FROM {mysql_ident(stage)}"
                        if respell:
                            record_respelled(cur, table.name, key, f"SELECT {key_list} FROM {mysql_ident(stage)}", [])
                        if alias:
                            execute(cur, f"INSERT INTO {mysql_ident(table.name)} ({cols}) SELECT * FROM ({select}) "
                                         f"AS {alias} {update}")
                        else:
                            execute(cur, f"INSERT INTO {mysql_ident(table.name)} ({cols}) {select} {update}")
                        execute(cur, f"DELETE FROM {mysql_ident(stage)}")
                        stats.rows += chunk.rows
                        stats.bytes += chunk.bytes
                        stats.chunks += 1
                    rep.commit()
                    if progress:
                        progress(stats.rows)
                    faults.check("replica", table.name, stats.chunks)
                    if chunk.rows < table.batch_size:
                        break
                    after = chunk.last_key
    finally:
        execute(cur, f"DROP TABLE IF EXISTS {mysql_ident(stage)}")


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
    import psycopg2.extras

    cols = ", ".join(key_cols)
    match = " AND ".join(f"{live}.{c} = d.{c}" for c in key_cols)
    psycopg2.extras.execute_values(cur, f"DELETE FROM {live} USING (VALUES %s) AS d({cols}) WHERE {match}",
                                   stale, page_size=1000)


def load_incremental(engines: Engines, table: ResolvedTable, schema: TableSchema, key: tuple[str, ...], *,
                     replica_db: str, pg_schema: str, column_case: str, state: TableState, save_state: Any,
                     loaded_at_column: str | None = "_etl_loaded_at",
                     progress: ProgressFn | None = None, window: Window | None = None) -> PhaseStats:
    """Merge the changed replica rows into the analytics table (COPY into a temp stage, then upsert).
    `window`, when given, is the one the caller read from the replica (see tasks/sync._load)."""
    started = time.monotonic()
    stats = PhaseStats(method="copy+merge", mode="incremental", watermark_before=state.describe())
    rep_sql = mysql_qualified(replica_db, table.name)
    pg_name = pg_table_name(table.name)
    live = pg_qualified(pg_schema, pg_name)
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns)
    by_source = {c.source.name: c for c in cols}
    names = [pg_ident(c.name) for c in cols]
    key_cols = [pg_ident(by_source[k].name) for k in key]
    non_key = [pg_ident(c.name) for c in cols if c.source.name not in key]
    sets = [f"{n} = EXCLUDED.{n}" for n in non_key]
    if loaded_at_column:
        sets.append(f"{pg_ident(loaded_at_column)} = now()")
    if non_key:
        # JSON compared as text: a column kept as `json` (tasks/analytics_load) has no equality operator.
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
                                 {c.name: c.data_type for c in schema.columns}, late_commits=False)
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
                query = LineQuery(table_sql=rep_sql, line_expr=line, keyset=Keyset.for_table(schema, (p.column, *key), mysql_ident),
                                  batch_size=table.batch_size, where=wcond, where_params=wparams, group_rows=group)
                after: tuple | None = None
                while True:
                    chunk = ChunkResult()
                    reader = Prefetcher(read_chunk_blocks(my, query, after, chunk, strip_nul=True))
                    source = BlockFile(iter(reader))
                    try:
                        copy_expert(cur, copy_sql, source, size=BLOCK_BYTES)
                    except psycopg2.Error as e:
                        pg.rollback()
                        if source.error is not None:  # the MySQL side failed (e.g. a row it cannot print)
                            raise source.error from None
                        if isinstance(e, psycopg2.DataError):
                            raise copy_error(e, table.name, cols) from e
                        raise
                    finally:
                        reader.close()
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
