"""Binlog mode's two legs for one table: the keys the run's reader logged, applied in commit order.

Replica leg (`replicate_changes`): the table's keys in `_etl_binlog_changes` past its saved sequence,
in batches of `batch_size` in sequence order; each batch's rows are re-read *by key* from the source
through the full copy's LOAD DATA path (exact values, see tasks/binlog_reader.py) into a stage
table, then in one replica transaction: the batch's keys the source no longer has deleted from the
live table, the rows found merged (INSERT .. ON DUPLICATE KEY UPDATE; a primary-key change is the
old key deleted and the new one inserted), and the sequence saved in the replica's state. A TRUNCATE
marker empties the table at its place in the sequence; a DROP/RENAME/replace marker stops the
table (TableReplaced, naming the `--full-refresh` that copies it again): rows re-read by key cannot
remove what the old table held.

Analytics leg (`load_changes`): the same keys past analytics' own saved sequence, re-read from the
replica through COPY, deleted and inserted in one PostgreSQL transaction with the sequence in
analytics' state. A crash anywhere leaves each side at its last committed batch; the next run
goes on from there (a batch applied twice gives the same rows). Keys both legs have passed are
deleted from the change log.

`snapshot_marks`: what a full copy in binlog mode saves with its data (the change-log sequence
and log position read before the copy: every change after them is applied again on top).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from config.errors import SchemaError
from tasks import binlog_source, faults, owned
from tasks.binlog_reader import CHANGES, decode_key, ensure_tables, save_cursor
from tasks.connections import Engines
from tasks.copy import copy_chunk
from tasks.identifiers import execute, mysql_ident, pg_ident, shadow_name
from tasks.job import PhaseStats, ProgressFn, TableJob
from tasks.load_data import fifo_path, load_chunk, load_data_plan, writable_columns
from tasks.mysql_schema import TableSchema
from tasks.replica_merge import odku_clause
from tasks.streaming import ChunkResult, LineQuery
from tasks.type_mapping import copy_line_select

SEQ = "_binlog_seq"  # the state "watermark" holding the last change-log sequence applied
AT = "_binlog_at"  # the log position (tasks/binlog_source.Position.encode) of the last full copy

SaveFn = Callable[[Any, dict], None]
PG_ROW_IN_MAX = 1_000  # composite keys per PostgreSQL `IN` list (see load_changes)


def snapshot_marks(engines: Engines, job: TableJob) -> dict[str, int]:
    """The sequence and position a full copy starting now is consistent with (read before it starts).

    The copy reads the source after this point, so it already holds every change logged up to the
    sequence; changes after the position are logged by later reads and re-applied by key on top of
    it (idempotent), so nothing between is lost or doubled. The reader's cursor is created here when
    it has none yet, so the first read starts no later than this copy."""
    with engines.source.connect() as sc:
        scur = sc.connection.driver_connection.cursor()
        at = binlog_source.current_position(scur)
        sid = binlog_source.server_id(scur)
        sc.rollback()
    with engines.replica.connect() as rc:
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        ensure_tables(cur)
        save_cursor(cur, job.source_db, sid, at, only_if_missing=True)
        cur.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {mysql_ident(CHANGES)}")
        seq = int(cur.fetchone()[0])
        rep.commit()
    return {SEQ: seq, AT: at.encode()}


class TableReplaced(SchemaError):
    """The source table was dropped, renamed or replaced since its copy was taken."""


def replaced_message(table: str, what: str) -> str:
    return (f"table {table!r}: dropped, renamed or replaced in the source since its copy was taken ({what}); "
            f"its copies cannot be kept by key: run `etl run --full-refresh --tables {table}` to copy it again")


def _batches(cur: Any, table: str, after: int, size: int, *, upto: int | None = None,  # noqa: ANN202
             log: str = CHANGES):
    """(last sequence, keys, marker) per batch: keys in sequence order up to a marker, which comes
    alone: ('t', None) for a TRUNCATE, ('d', where) for a DROP/RENAME/replace (tasks/binlog_reader.
    ddl_markers). `log`: the change-log table (the checksum mode keeps its own, same shape)."""
    while True:
        cur.execute(f"SELECT seq, op, key_json FROM {mysql_ident(log)} WHERE table_name = %s AND seq > %s "
                    f"AND seq <= %s ORDER BY seq LIMIT %s", (table, after, (1 << 62) if upto is None else upto, size))
        rows = cur.fetchall()
        if not rows:
            return
        keys: dict[tuple, None] = {}
        last = after
        for seq, op, key_json in rows:
            if op in ("t", "d"):
                if keys:
                    yield last, list(keys), None
                yield int(seq), [], (op, key_json)
                last = int(seq)
                keys = {}
                break
            keys[decode_key(key_json)] = None
            last = int(seq)
        if keys:
            yield last, list(keys), None
        after = last


def forget_logged(cur: Any, log: str, table: str, upto: int | None) -> None:
    """Delete the table's log entries up to `upto` (all: None) by their primary key only: a DELETE over
    a (table_name, seq) range takes gap locks, and another table logging its first keys into that gap at
    the same time deadlocks with it (InnoDB 1213). Caller commits."""
    while True:
        cur.execute(f"SELECT seq FROM {mysql_ident(log)} WHERE table_name = %s AND seq <= %s ORDER BY seq LIMIT 5000",
                    (table, (1 << 62) if upto is None else upto))
        seqs = [int(r[0]) for r in cur.fetchall()]
        if not seqs:
            return
        cur.execute(f"DELETE FROM {mysql_ident(log)} WHERE seq IN ({', '.join(['%s'] * len(seqs))})", seqs)
        if len(seqs) < 5000:
            return


def key_condition(columns: list[str], keys: list[tuple], quote: Callable[[str], str]) -> tuple[str, list[Any]]:
    """`(a, b) IN ((%s, %s), ...)` for a batch of keys, with its parameters."""
    if len(columns) == 1:
        return f"{quote(columns[0])} IN ({', '.join(['%s'] * len(keys))})", [k[0] for k in keys]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return (f"({', '.join(quote(c) for c in columns)}) IN ({', '.join([one] * len(keys))})",
            [v for k in keys for v in k])


def drop_secondary_indexes(cur: Any, stage: str, key: tuple[str, ...]) -> None:
    """The stage table only holds a batch on its way into the live table: it keeps the index of the key
    (the primary key, or the unique key standing in for it) and loses the others, which LOAD DATA would
    otherwise maintain for every re-read row. `stage` is a new, empty table of our own."""
    cur.execute(f"SHOW INDEX FROM {mysql_ident(stage)}")
    cols: dict[str, list[str]] = {}
    for row in cur.fetchall():
        cols.setdefault(str(row[2]), []).append(str(row[4]))
    drop = [name for name, c in cols.items() if name != "PRIMARY" and tuple(c) != tuple(key)]
    if drop:
        execute(cur, f"ALTER TABLE {mysql_ident(stage)} " + ", ".join(f"DROP INDEX {mysql_ident(n)}" for n in drop))


def _same_key(v: Any) -> Any:
    return bytes(v) if isinstance(v, (bytes, bytearray)) else str(v)


def absent_keys(cur: Any, stage: str, key: list[str], keys: list[tuple]) -> list[tuple]:
    """The batch's logged keys the stage (the rows the source still has) does not hold, compared as text
    (bytes as bytes). Read from the stage's key index, not from the live table: finding a key to delete
    costs no read of the live table's pages. A key the comparison calls absent while the server sees it
    present (another spelling under a case-insensitive or PAD SPACE collation) is deleted and then
    inserted again from the stage by the merge in the same transaction: the same rows, a little more work."""
    cur.execute(f"SELECT {', '.join(mysql_ident(c) for c in key)} FROM {mysql_ident(stage)}")
    held = {tuple(_same_key(v) for v in row) for row in cur.fetchall()}
    return [k for k in keys if tuple(_same_key(v) for v in k) not in held]


def commit_batch(conn: Any, cur: Any, stats: PhaseStats, *, save_state: SaveFn, marks: dict,
                 progress: ProgressFn | None, phase: str, table: str) -> None:
    """A batch's end, the same in every leg that applies logged keys (binlog and checksum mode): the
    sequence saved with the batch's rows in one commit, then progress and the tests' fault point."""
    save_state(cur, marks)
    conn.commit()
    stats.chunks += 1
    if progress:
        progress(stats.rows)
    faults.check(phase, table, stats.chunks)


def _logged_since(engines: Engines, job: TableJob, applied: int) -> bool:
    with engines.replica.connect() as rc:
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        ensure_tables(cur)
        cur.execute(f"SELECT 1 FROM {mysql_ident(CHANGES)} WHERE table_name = %s AND seq > %s LIMIT 1",
                    (job.table.name, applied))
        found = cur.fetchone() is not None
        rep.commit()
    return found


def replicate_changes(engines: Engines, job: TableJob, *, applied: int, save_state: SaveFn,
                      progress: ProgressFn | None = None) -> PhaseStats:
    """Source -> replica for the keys logged since sequence `applied`; see the module docstring."""
    started = time.monotonic()
    table, key = job.table, list(job.key)
    stats = PhaseStats(method="binlog", mode="binlog", watermark_before=f"{SEQ}={applied}")
    if not _logged_since(engines, job, applied):
        # Nothing to apply: no source connection, no stage table, no write (the common case for most
        # tables of a run every few minutes).
        stats.watermark_after = stats.watermark_before
        stats.notes.append("binlog: nothing logged for this table since its last run")
        stats.seconds = time.monotonic() - started
        return stats
    stage = shadow_name(table.name, "stage")
    plan = load_data_plan(job.source, stage)
    cols = ", ".join(mysql_ident(c) for c in writable_columns(job.source))
    merge = odku_clause(writable_columns(job.source), job.key, row_alias=None)
    seq = applied
    with engines.source.connect() as sc, engines.replica.connect() as rc:
        src = sc.connection.driver_connection
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        ensure_tables(cur)
        owned.drop_scratch(cur, stage)
        execute(cur, f"CREATE TABLE {mysql_ident(stage)} LIKE {mysql_ident(table.name)}")
        drop_secondary_indexes(cur, stage, job.key)
        cur.execute("SET SESSION max_error_count = 65535")
        rep.commit()
        try:
            with fifo_path() as fifo:
                for last, keys, marker in _batches(cur, table.name, applied, table.batch_size):
                    if marker and marker[0] == "d":  # the batches before it are committed; nothing after
                        raise TableReplaced(replaced_message(table.name, marker[1] or "in the log"))
                    if marker:
                        execute(cur, f"DELETE FROM {mysql_ident(table.name)}")
                        stats.notes.append("TRUNCATE in the source: replica emptied at its place in the log")
                    else:
                        where, params = key_condition(key, keys, mysql_ident)
                        query = LineQuery(table_sql=job.source_sql, line_expr=plan.line_expr, keyset=job.keyset(),
                                          batch_size=len(keys), where=where, where_params=params)
                        chunk = ChunkResult()
                        load_chunk(src, cur, fifo, plan.load_sql, query, None, chunk, set(plan.enum_columns))
                        src.rollback()
                        # Keys the source no longer has are deleted; the rows found are merged in place
                        # (a changed row updates only what changed, no delete and re-insert of every index
                        # entry). A key re-spelled under a case-insensitive collation matches its old row
                        # and the merge sets the new spelling (every column is set, the key included).
                        gone = absent_keys(cur, stage, key, keys)
                        for i in range(0, len(gone), table.batch_size):
                            gwhere, gparams = key_condition(key, gone[i:i + table.batch_size], mysql_ident)
                            execute(cur, f"DELETE FROM {mysql_ident(table.name)} WHERE {gwhere}", gparams)
                            stats.deleted += cur.rowcount
                        execute(cur, f"INSERT INTO {mysql_ident(table.name)} ({cols}) SELECT {cols} "
                                     f"FROM {mysql_ident(stage)} {merge}")
                        execute(cur, f"DELETE FROM {mysql_ident(stage)}")
                        stats.rows += chunk.rows
                        stats.bytes += chunk.bytes
                    seq = last
                    commit_batch(rep, cur, stats, save_state=save_state, marks={SEQ: seq}, progress=progress,
                                 phase="replica", table=table.name)
        except BaseException:
            rep.rollback()
            raise
        finally:
            owned.drop_scratch(cur, stage)
    stats.watermark_after = f"{SEQ}={seq}"
    stats.notes.append(f"binlog: {stats.chunks} batch(es) of logged keys applied, {stats.rows} rows re-read")
    stats.seconds = time.monotonic() - started
    return stats


def load_changes(engines: Engines, job: TableJob, *, schema: TableSchema, applied: int, upto: int,
                 save_state: SaveFn,
                 progress: ProgressFn | None = None, log: str = CHANGES) -> PhaseStats:
    """Replica -> analytics for the keys logged since analytics' sequence `applied` up to the replica's
    `upto` (what the replica holds), then the change
    log's keys both legs have passed are deleted."""
    started = time.monotonic()
    table = job.table
    stats = PhaseStats(method="binlog", mode="binlog", watermark_before=f"{SEQ}={applied}")
    if upto <= applied:  # the replica leg applied nothing since analytics' last load: nothing to read or write
        with engines.replica.connect() as rc:  # only what both legs passed, e.g. keys a full copy held
            my = rc.connection.driver_connection
            mcur = my.cursor()
            execute(mcur, f"USE {mysql_ident(job.replica_db)}")
            if log == CHANGES:
                ensure_tables(mcur)
            forget_logged(mcur, log, table.name, applied)
            my.commit()
        stats.watermark_after = stats.watermark_before
        stats.seconds = time.monotonic() - started
        return stats
    cols = job.pg_columns(schema)
    by_source = {c.source.name: c for c in cols}
    names = [pg_ident(c.name) for c in cols]
    pg_key = [by_source[k].name for k in job.key]
    live = job.pg_sql
    line = copy_line_select(cols)
    seq = applied
    with engines.replica.connect() as rc, engines.analytics.connect() as pc:
        my = rc.connection.driver_connection
        mcur = my.cursor()
        execute(mcur, f"USE {mysql_ident(job.replica_db)}")
        if log == CHANGES:  # another log (checksum mode) is created by its owner
            ensure_tables(mcur)
        my.commit()
        pg = pc.connection.driver_connection
        pg.autocommit = False
        cur = pg.cursor()
        stage = pg_ident(shadow_name(job.pg_name, "stage"))
        execute(cur, f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {live} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        pg.commit()
        copy_sql = f"COPY {stage} ({', '.join(names)}) FROM STDIN"
        try:
            for last, keys, marker in _batches(mcur, table.name, applied, table.batch_size, upto=upto, log=log):
                if marker and marker[0] == "d":  # not reached: the replica leg stops there until a full copy
                    raise TableReplaced(replaced_message(table.name, marker[1] or "in the log"))
                if marker:
                    execute(cur, f"DELETE FROM {live}")
                else:
                    mwhere, mparams = key_condition(list(job.key), keys, mysql_ident)
                    query = LineQuery(table_sql=job.replica_sql, line_expr=line, keyset=job.keyset(schema),
                                      batch_size=len(keys), where=mwhere, where_params=mparams)
                    chunk = copy_chunk(pg, cur, my, copy_sql=copy_sql, query=query, after=None, table=table.name,
                                       cols=cols)
                    my.rollback()
                    # PostgreSQL parses `(a, b) IN ((..), ...)` into nested ORs, one level per key: 20,000
                    # composite keys exceed its stack depth, so those deletes go in slices.
                    step = len(keys) if len(pg_key) == 1 else PG_ROW_IN_MAX
                    for i in range(0, len(keys), step):
                        pwhere, pparams = key_condition(pg_key, keys[i:i + step], pg_ident)
                        execute(cur, f"DELETE FROM {live} WHERE {pwhere}", pparams)
                    execute(cur, f"INSERT INTO {live} ({', '.join(names)}) SELECT {', '.join(names)} FROM {stage}")
                    stats.rows += chunk.rows
                    stats.bytes += chunk.bytes
                    stats.nul_chars_removed += chunk.nul_chars_removed
                seq = last
                commit_batch(pg, cur, stats, save_state=save_state, marks={SEQ: seq}, progress=progress,
                             phase="analytics", table=table.name)
        except BaseException:
            pg.rollback()
            rc.invalidate()
            raise
        # Both legs are past `seq` now (analytics never passes the replica): those keys are done.
        forget_logged(mcur, log, table.name, seq)
        my.commit()
    stats.watermark_after = f"{SEQ}={seq}"
    stats.seconds = time.monotonic() - started
    return stats
