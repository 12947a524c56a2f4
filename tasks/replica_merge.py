"""Incremental replica phase: merge the changed source rows into the replica with ON DUPLICATE KEY UPDATE.

The change window of each change column c is [watermark(c) - lookback, MAX(c) read at the start]
(tasks/watermarks.read_window). A row changed when ANY change column is inside its window (OR
semantics), so the window is read as one pass per column; a row caught by two passes is merged
twice, which changes nothing. Inside a pass the rows are paged with a composite keyset on (c, key),
so thousands of rows sharing one timestamp are neither skipped nor read twice. The next run starts
at `>=` the saved maximum: rows that arrive later with a timestamp equal to it are still picked up,
and the merge makes the re-read boundary harmless. NULL change values never match a window (a
nullable column alone cannot be trusted; `etl discover` only chooses incremental where a
server-maintained column exists).

Two paths like the full copy: `server` runs `INSERT ... SELECT ... ON DUPLICATE KEY UPDATE` per
chunk on the shared server; `stream` loads each chunk into a stage table through LOAD DATA
(tasks/load_data.py) and merges from there. The update clause uses `VALUES()` on MariaDB and MySQL
< 8.0.20, the row-alias form on newer MySQL. A key respelled under its collation ('abc' -> 'ABC')
is recorded in a side table, which the analytics merge (tasks/analytics_merge.py) reads.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from tasks import faults, owned
from tasks.connections import Engines
from tasks.identifiers import execute, mysql_ident, shadow_name
from tasks.job import PhaseStats, ProgressFn, TableJob, column_types
from tasks.keyset import Keyset
from tasks.load_data import fifo_path, load_chunk, load_data_plan, packet_size
from tasks.mysql_schema import ServerIdentity, TableSchema, relax_unique_sql
from tasks.state import TableState
from tasks.streaming import ChunkResult, LineQuery, group_rows_for
from tasks.type_mapping import rule_for_type
from tasks.watermarks import Pass, Window, read_window

log = logging.getLogger("etl.replica_merge")


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


def respellable_key(schema: TableSchema, key: tuple[str, ...]) -> bool:
    """A key whose spelling can change while the server still sees the same key (collation: case,
    accents, trailing spaces under PAD SPACE)."""
    return any(rule_for_type(schema.column(k).data_type).collated_text and schema.column(k).collation for k in key)


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


def replicate_incremental(engines: Engines, job: TableJob, *, method: str, state: TableState,
                          replica_server: ServerIdentity, save_state: Any,
                          progress: ProgressFn | None = None, window: Window | None = None) -> PhaseStats:
    """Merge the changed source rows into the replica table. `save_state(cursor, new_watermarks)`
    is called in the transaction of the last merged chunk. `window` (read and persisted by the
    caller before the first attempt) is used as is, so a retry reads no new MAX."""
    started = time.monotonic()
    table, schema, key = job.table, job.source, job.key
    stats = PhaseStats(method=method, mode="incremental", watermark_before=state.describe())
    with engines.source.connect() as sc, engines.replica.connect() as rc:
        src = sc.connection.driver_connection
        rep = rc.connection.driver_connection
        scur, cur = src.cursor(), rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        _relax_replica_uniques(cur, table.name, schema, key)
        if respellable_key(schema, key):
            _ensure_respelled(cur, table.name, key)
        rep.commit()
        if window is None:
            window = read_window(scur, job.source_sql, table.incremental_columns, state.watermarks, table.lookback,
                                 column_types(schema))
        passes, new_wm = window.passes, window.save
        try:
            if method == "server":
                _merge_server(job, cur=cur, rep=rep, scur=scur, passes=passes, server=replica_server, stats=stats,
                              progress=progress)
            else:
                _merge_streamed(job, src=src, cur=cur, rep=rep, passes=passes, server=replica_server, stats=stats,
                                progress=progress)
        except BaseException:
            sc.invalidate()
            raise
        save_state(cur, new_wm)
        rep.commit()
        src.rollback()
    stats.watermark_after = TableState(watermarks=new_wm).describe()
    stats.seconds = time.monotonic() - started
    return stats


def _merge_server(job: TableJob, *, cur: Any, rep: Any, scur: Any, passes: list[Pass], server: ServerIdentity,
                  stats: PhaseStats, progress: ProgressFn | None) -> None:
    """Each chunk: one INSERT ... SELECT from the source ... ON DUPLICATE KEY UPDATE (same server)."""
    table, schema, key, src_sql = job.table, job.source, job.key, job.source_sql
    cols = ", ".join(mysql_ident(c) for c in schema.column_names)
    dst = job.replica_sql
    alias = "`_etl_new`" if server.mysql8_alias_upsert else None
    update = odku_clause(schema.column_names, key, row_alias=alias)
    respell = respellable_key(schema, key)
    key_list = ", ".join(mysql_ident(k) for k in key)
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    try:
        for p in passes:
            ks = job.keyset(leading=p.column)
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


def _merge_streamed(job: TableJob, *, src: Any, cur: Any, rep: Any, passes: list[Pass], server: ServerIdentity,
                    stats: PhaseStats, progress: ProgressFn | None) -> None:
    """Each chunk: LOAD DATA into a stage table on the replica, then INSERT ... SELECT from it ... ODKU."""
    table, schema, key, src_sql = job.table, job.source, job.key, job.source_sql
    stage = shadow_name(table.name, "stage")
    cols = ", ".join(mysql_ident(c) for c in schema.column_names)
    alias = "`_etl_new`" if server.mysql8_alias_upsert else None
    update = odku_clause(schema.column_names, key, row_alias=alias)
    respell = respellable_key(schema, key)
    key_list = ", ".join(mysql_ident(k) for k in key)
    owned.drop_scratch(cur, stage)
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
                query = LineQuery(table_sql=src_sql, line_expr=plan.line_expr, keyset=job.keyset(leading=p.column),
                                  batch_size=table.batch_size, where=wcond, where_params=wparams, group_rows=group)
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
        owned.drop_scratch(cur, stage)
