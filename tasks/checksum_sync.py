"""Checksum mode's two legs for one table (tables without a trustworthy change column).

Replica leg (`replicate_ranges`): the source and the replica are compared by key-range checksums
(tasks/range_checksum.py), differing ranges bisected down to leaves of one replica row; the
differing leaves are re-copied in groups, each in one replica transaction: the keys the replica
held in the group's ranges are logged, the ranges deleted, the source's rows of them loaded
through the full copy's LOAD DATA path (exact values), their keys logged, and the log's sequence
saved in the replica's state. The log (`_etl_checksum_changes`, the same shape as binlog mode's) is
what the analytics leg consumes. A table that did not change issues no DDL and no write at all.
With `deletes: off` the range is loaded with REPLACE and nothing is deleted (rows deleted in the
source stay downstream, and their range is compared again every run).

Analytics leg (`load_ranges`): the logged keys past analytics' own saved sequence up to the
replica's are re-read from the replica and deleted + inserted in PostgreSQL in one transaction per
batch with the sequence in analytics' state (tasks/binlog_apply.load_changes); then the consumed
entries are deleted. A crash between the legs leaves the keys logged: the next run applies them.
Nothing logged past analytics' sequence: nothing is read or written.

A keyless table is compared whole (one checksum); when it differs the caller copies it in full.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from tasks import binlog_apply, deletes, once, range_checksum
from tasks.binlog_reader import encode_key
from tasks.connections import Engines
from tasks.identifiers import execute, mysql_ident
from tasks.job import PhaseStats, ProgressFn, TableJob
from tasks.load_data import fifo_path, load_chunk, load_data_plan
from tasks.mysql_schema import TableSchema
from tasks.streaming import ChunkResult, LineQuery
from tasks.verify import exact_row_sql, row_hash_sql

log = logging.getLogger("etl.checksum")

LOG = "_etl_checksum_changes"
SEQ = "_checksum_seq"  # the state "watermark": the last log sequence this side holds
KEY_PAGE = 1_000  # keys logged per statement

SaveFn = Callable[[Any, dict], None]


def ensure_log(cur: Any) -> None:
    if not once.first_time(cur.connection, "replica:checksum-log"):  # tasks/once.py
        return
    cur.execute(f"CREATE TABLE IF NOT EXISTS {mysql_ident(LOG)} (seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
                "table_name VARCHAR(64) NOT NULL, op CHAR(1) NOT NULL, key_json LONGTEXT NULL, "
                "KEY (table_name, seq)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")


def snapshot_marks(cur: Any, table: str) -> dict[str, int]:
    """What a full copy saves in checksum mode (cursor on the replica database, before the swap): the
    table's earlier log entries are dropped (the copy holds them) and the sequence is the log's top."""
    ensure_log(cur)
    binlog_apply.forget_logged(cur, LOG, table, None)
    cur.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {mysql_ident(LOG)}")
    return {SEQ: int(cur.fetchone()[0])}


def _log_keys(cur: Any, table: str, table_sql: str, ks: Any, where: str, params: list[Any]) -> int:
    """Log every key of the range as the replica holds it now; returns how many."""
    n, after = 0, None
    while True:
        cond, ap = ks.after(after)
        cur.execute(f"SELECT {ks.select_list} FROM {table_sql} WHERE {where} AND {cond} ORDER BY {ks.order_by} "
                    f"LIMIT {KEY_PAGE}", [*params, *ap])
        rows = [tuple(r) for r in cur.fetchall()]
        if not rows:
            return n
        # Placeholders only: pymysql's executemany sends one multi-row INSERT for such a statement,
        # and one statement per key for any other (a literal 'k' among the values made it 1,000).
        cur.executemany(f"INSERT INTO {mysql_ident(LOG)} (table_name, op, key_json) VALUES (%s, %s, %s)",
                        [(table, "k", encode_key(list(r))) for r in rows])
        n += len(rows)
        if len(rows) < KEY_PAGE:
            return n
        after = rows[-1]


def replicate_ranges(engines: Engines, job: TableJob, *, save_state: SaveFn,
                     progress: ProgressFn | None = None) -> PhaseStats | None:
    """Source -> replica for the ranges that differ (see the module docstring). None for a keyless
    table that differs: the caller copies it in full."""
    started = time.monotonic()
    table = job.table
    stats = PhaseStats(method="checksum", mode="checksum")
    hash_sql = row_hash_sql(exact_row_sql(job.source))
    # One source connection for the table's whole leg (the pool caps them at ETL_MAX_SOURCE_QUERIES).
    with engines.source.connect() as sc, engines.replica.connect() as rc:
        src = sc.connection.driver_connection
        rep = rc.connection.driver_connection
        scur, cur = src.cursor(), rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        if not job.keyed:
            same = range_checksum.whole_table(scur, cur, source_sql=job.source_sql, replica_sql=job.replica_sql,
                                              hash_sql=hash_sql)
            src.rollback()
            rep.rollback()
            if not same:
                return None
            stats.notes.append("checksum: keyless table compared whole, unchanged")
            stats.seconds = time.monotonic() - started
            return stats
        ks = job.keyset()
        found = range_checksum.differing_ranges(scur, cur, source_sql=job.source_sql, replica_sql=job.replica_sql,
                                                ks=ks, hash_sql=hash_sql)
        src.rollback()
        rep.rollback()
        stats.notes.append(f"checksum: {found.ranges} range(s) compared ({found.levels} bisection level(s)), "
                           f"{len(found.differing)} re-copied")
        if table.deletes != "off":
            # The delete guard of tasks/deletes.py: an emptied or half-read source never empties the copies.
            deletes.guard(table.name, sum(max(r.replica_rows - r.source_rows, 0) for r in found.differing),
                          found.replica_rows, table.deletes_max_fraction, table.deletes_min_rows)
        if not found.differing:
            stats.seconds = time.monotonic() - started
            return stats
        plan = load_data_plan(job.source, table.name)
        load_sql = plan.load_sql
        if table.deletes == "off":  # keep rows the source deleted: overwrite, never delete
            load_sql = load_sql.replace(" INTO TABLE ", " REPLACE INTO TABLE ", 1)
        ensure_log(cur)
        rep.commit()
        try:
            with fifo_path() as fifo:
                # Leaves re-copied together, one replica transaction per group (one DELETE and one
                # keyset-paged LOAD DATA over the group's ranges), not one per leaf.
                for group in range_checksum.recopy_groups(found.differing, rows=table.batch_size):
                    where, params = range_checksum.ranges_where(ks, group)
                    before = _log_keys(cur, table.name, job.replica_sql, ks, where, params)
                    if table.deletes != "off":
                        execute(cur, f"DELETE FROM {job.replica_sql} WHERE {where}", params)
                    after, loaded = None, 0
                    while True:
                        query = LineQuery(table_sql=job.source_sql, line_expr=plan.line_expr, keyset=ks,
                                          batch_size=table.batch_size, where=where, where_params=params)
                        chunk = ChunkResult()
                        load_chunk(src, cur, fifo, load_sql, query, after, chunk, set(plan.enum_columns))
                        src.rollback()
                        loaded += chunk.rows
                        stats.bytes += chunk.bytes
                        if chunk.rows < table.batch_size:
                            break
                        after = chunk.last_key
                    now = _log_keys(cur, table.name, job.replica_sql, ks, where, params)
                    if table.deletes != "off":
                        stats.deleted += max(0, before - now)
                    stats.rows += loaded
                    cur.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {mysql_ident(LOG)}")
                    binlog_apply.commit_batch(rep, cur, stats, save_state=save_state,
                                              marks={SEQ: int(cur.fetchone()[0])}, progress=progress,
                                              phase="replica", table=table.name)
        except BaseException:
            rep.rollback()
            raise
    stats.seconds = time.monotonic() - started
    return stats


def pending(rep_saved: dict, pg_saved: dict) -> bool:
    """Whether the replica holds logged ranges analytics has not consumed yet."""
    return int(rep_saved.get(SEQ) or 0) > int(pg_saved.get(SEQ) or 0)


def load_ranges(engines: Engines, job: TableJob, *, schema: TableSchema, applied: int, upto: int,
                save_state: SaveFn, progress: ProgressFn | None = None) -> PhaseStats:
    """Replica -> analytics for the keys logged since analytics' sequence `applied` up to `upto`."""
    def save(cur: Any, marks: dict) -> None:
        save_state(cur, {SEQ: marks[binlog_apply.SEQ]})
    stats = binlog_apply.load_changes(engines, job, schema=schema, applied=applied, upto=upto, save_state=save,
                                      progress=progress, log=LOG)
    stats.method, stats.mode = "checksum", "checksum"
    stats.watermark_before, stats.watermark_after = f"{SEQ}={applied}", f"{SEQ}={upto}"
    stats.notes.append(f"checksum: {stats.rows} rows of the re-copied ranges applied")
    return stats
