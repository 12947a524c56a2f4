"""Source MySQL -> replica MySQL: full refresh through a shadow table swapped in with RENAME TABLE.

Two paths, chosen once per run:
- `server`: source and replica live on the same server. Each chunk is one
  `INSERT INTO replica.shadow SELECT ... FROM source.t WHERE pk > last ORDER BY pk LIMIT n`,
  run in READ COMMITTED so the source rows are read without shared locks.
- `stream`: different servers. The source prints each row as a LOAD DATA line (type_mapping); a
  reader thread writes the lines into a FIFO while the replica connection runs
  `LOAD DATA LOCAL INFILE` on it. The source is read inside one consistent-snapshot transaction.
Both load in primary-key order into a table that has only its primary key, save the chunk's
checkpoint in the same transaction, then build the secondary indexes and swap atomically.

A small table (one chunk, at most IN_PLACE_MAX_ROWS rows, as the source estimates them) whose
replica copy already has exactly the shape a full copy would create (`same_replica_shape`) is
refreshed in place instead: DELETE and the same INSERT ... SELECT or LOAD DATA into the live
table, and the sync state, in one transaction. No DDL at all (the shadow table, index build,
RENAME and DROP were ~0.16 s of a 10-row table's ~0.5 s); readers see the old rows until the
commit, then the new ones. On its first copy such a table is created under its own name with its
indexes and filled (dropped again if the copy fails). A retry (resume) takes the shadow path.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from tasks import checkpoints, faults, owned
from tasks.connections import Engines
from tasks.errors import is_retriable, redact
from tasks.identifiers import execute, mysql_ident, mysql_qualified, shadow_name
from tasks.job import PhaseStats, ProgressFn, TableJob
from tasks.load_data import fifo_path, load_chunk, load_data_plan, packet_size, writable_columns
from tasks.mysql_schema import ensure_database, same_replica_shape, show_create_table, split_create_table, table_exists
from tasks.streaming import ChunkResult, LineQuery, group_rows_for
from tasks.type_mapping import INTEGER_TYPES

log = logging.getLogger("etl.replica")


# A full refresh of a table this small rewrites the live table in one transaction (no shadow table).
IN_PLACE_MAX_ROWS = 10_000
IN_PLACE_MAX_BYTES = 16 << 20


def _exec(cur: Any, sql: str, params: Any = ()) -> int:
    return execute(cur, sql, params).rowcount


def _prepare_shadow(cur: Any, src_ddl: str, replica_db: str, table: str, shadow: str, *, resume: bool,
                    keep_unique: tuple[str, ...] = ()) -> tuple[tuple | None, int, str | None]:
    """Create (or, on resume, reuse) the shadow table. Returns (resume key, rows done, index DDL).

    `keep_unique`: the merge key when it is a unique key rather than the primary key (its index
    stays unique; every other secondary UNIQUE index becomes a plain one, see relax_unique)."""
    split = split_create_table(src_ddl, shadow, keep_unique=keep_unique)
    checkpoints.mysql_ensure(cur)
    if resume:
        cp = checkpoints.mysql_load(cur, table)
        cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                    (replica_db, shadow))
        if cp and cp[0] == shadow and cur.fetchone()[0]:
            log.info("%s: resuming replica copy after %d committed rows", table, cp[2])
            return cp[1], cp[2], split.add_indexes
    owned.drop_scratch(cur, shadow)
    execute(cur, split.create)
    checkpoints.mysql_save(cur, table, shadow, None, 0)
    cur.connection.commit()
    return None, 0, split.add_indexes


def copy_full(engines: Engines, job: TableJob, *, method: str, resume: bool = False,
              progress: ProgressFn | None = None, after_swap: Callable[[Any], None] | None = None) -> PhaseStats:
    """Copy one table from the source into the replica. `method` is `server` or `stream`.

    `after_swap(cursor)` runs on the replica connection right after the swap, before the final
    commit (the sync state is written there).
    """
    started = time.monotonic()
    stats = PhaseStats(method=method)
    shadow = shadow_name(job.name)
    if job.key:
        job.keyset()  # refuses a key it cannot page, before any write
    with engines.source.connect() as sc:
        ddl = show_create_table(sc, job.source_db, job.name)
        sc.rollback()

    if not resume and _refresh_in_place(engines, job, ddl=ddl, stats=stats, method=method, progress=progress,
                                        after_swap=after_swap):
        stats.seconds = time.monotonic() - started
        return stats
    try:
        _copy_into_shadow_and_swap(engines, job, ddl=ddl, shadow=shadow, stats=stats, method=method, resume=resume,
                                   progress=progress, after_swap=after_swap)
    except BaseException as e:
        # A fatal error will not resume from the shadow table: drop it now rather than let it hold
        # disk space until the next run. A retriable one keeps it, so the retry resumes.
        if not is_retriable(e):
            _discard_shadow(engines, job.replica_db, job.name, shadow)
        raise
    stats.seconds = time.monotonic() - started
    return stats


def small_enough(rows: int | None, data_bytes: int | None, batch_size: int) -> bool:
    """Whether a table is small enough to be rewritten in one transaction (both copies use this): at
    most IN_PLACE_MAX_ROWS rows and bytes, and one chunk (a table of several chunks keeps the
    shadow path, whose committed chunks a retry resumes after)."""
    rows = rows or 0
    return rows <= IN_PLACE_MAX_ROWS and rows <= batch_size and (data_bytes or 0) <= IN_PLACE_MAX_BYTES


def _refresh_in_place(engines: Engines, job: TableJob, *, ddl: str, stats: PhaseStats, method: str,
                      progress: ProgressFn | None, after_swap: Callable[[Any], None] | None) -> bool:
    """The small-table path (module docstring): False, having written nothing, when it does not apply."""
    if not small_enough(job.source.estimated_rows, job.source.data_length, job.table.batch_size):
        return False
    keep = job.key if job.key != job.source.primary_key else ()
    with engines.replica.connect() as rc:
        ensure_database(rc, job.replica_db)
        live = table_exists(rc, job.replica_db, job.name)
        if live and not same_replica_shape(ddl, show_create_table(rc, job.replica_db, job.name), job.name,
                                           keep_unique=keep):
            rc.rollback()
            return False
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        checkpoints.mysql_ensure(cur)
        if live:  # never a DELETE in a table the ETL did not create (tasks/owned.py)
            owned.refuse_unowned(cur, job.replica_db, job.name)
        else:  # first copy: created under its own name with its indexes (empty until the commit below)
            owned.record(cur, [job.name], how="created")  # committed by the CREATE below
            execute(cur, split_create_table(ddl, job.name, keep_unique=keep).final)
        if method == "server":  # before the transaction starts: the INSERT ... SELECT must not lock source rows
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        try:
            # Row deletes, not TRUNCATE (DDL commits at once): the old rows stay until the new ones commit.
            if live:  # a table created just above is empty
                _exec(cur, f"DELETE FROM {mysql_ident(job.name)}")
            if method == "server":
                _copy_server_side(job, cur=cur, rep=rep, shadow=job.name, after=None, stats=stats, progress=progress,
                                  in_place=True)
            else:
                with engines.source.connect() as sc:
                    try:
                        _copy_streamed(job, src=sc.connection.driver_connection, cur=cur, rep=rep, shadow=job.name,
                                       after=None, stats=stats, progress=progress, in_place=True)
                    except BaseException:
                        sc.invalidate()
                        raise
            faults.check("replica", job.name, 1)
            checkpoints.mysql_clear(cur, job.name)
            if after_swap:
                after_swap(cur)
            rep.commit()
        except BaseException:
            rep.rollback()
            if not live:  # a failed first copy leaves no table behind (the next run starts over)
                _discard_created(engines, job.replica_db, job.name)
            raise
    stats.notes.append("small table: refreshed in place in one transaction (no shadow table)" if live
                       else "small table: created and copied in one step (no shadow table)")
    return True


def _discard_created(engines: Engines, replica_db: str, table: str) -> None:
    """Drop a table this run created under its own name (the small-table first copy) after it failed."""
    try:
        with engines.replica.connect() as rc:
            rep = rc.connection.driver_connection
            cur = rep.cursor()
            owned.drop_created(cur, replica_db, table)
            execute(cur, f"USE {mysql_ident(replica_db)}")
            checkpoints.mysql_clear(cur, table)
            rep.commit()
    except Exception as e:  # noqa: BLE001 - the original error is what the caller must see
        log.warning("%s: could not drop the replica table after its failed first copy: %s", table, redact(str(e)))


def _discard_shadow(engines: Engines, replica_db: str, table: str, shadow: str) -> None:
    try:
        with engines.replica.connect() as rc:
            rep = rc.connection.driver_connection
            cur = rep.cursor()
            owned.drop_scratch(cur, shadow, database=replica_db)
            execute(cur, f"USE {mysql_ident(replica_db)}")
            checkpoints.mysql_clear(cur, table)
            rep.commit()
    except Exception as e:  # noqa: BLE001 - the original error is what the caller must see
        log.warning("%s: could not drop the replica shadow table after a failed copy: %s", table, redact(str(e)))


def _copy_into_shadow_and_swap(engines: Engines, job: TableJob, *, ddl: str, shadow: str, stats: PhaseStats,
                               method: str, resume: bool, progress: ProgressFn | None,
                               after_swap: Callable[[Any], None] | None) -> None:
    table, replica_db, key = job.table, job.replica_db, job.key
    with engines.replica.connect() as rc:
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        ensure_database(rc, replica_db)
        execute(cur, f"USE {mysql_ident(replica_db)}")
        owned.refuse_unowned(cur, replica_db, table.name)  # before any work: the swap would refuse it anyway
        keep = key if key != job.source.primary_key else ()
        after, done, add_indexes = _prepare_shadow(cur, ddl, replica_db, table.name, shadow, resume=resume and bool(key),
                                                   keep_unique=keep)
        stats.resumed_at_rows = done
        stats.rows = done
        if done:
            stats.notes.append(f"replica copy resumed after {done} committed rows")
        if method == "server":
            _copy_server_side(job, cur=cur, rep=rep, shadow=shadow, after=after, stats=stats, progress=progress)
        else:
            with engines.source.connect() as sc:
                src = sc.connection.driver_connection
                try:
                    _copy_streamed(job, src=src, cur=cur, rep=rep, shadow=shadow, after=after, stats=stats,
                                   progress=progress)
                except BaseException:
                    sc.invalidate()
                    raise
        if add_indexes:
            t0 = time.monotonic()
            execute(cur, add_indexes)
            if time.monotonic() - t0 >= 1.0:
                stats.notes.append(f"secondary indexes built after the load in {time.monotonic() - t0:.1f}s")
        live_exists = table_exists(rc, replica_db, table.name)
        # RENAME TABLE swaps both names in one atomic step (readers never see a missing table), and
        # only over a table the ETL owns (tasks/owned.py).
        owned.swap_in(cur, database=replica_db, table=table.name, shadow=shadow, live_exists=live_exists)
        checkpoints.mysql_clear(cur, table.name)
        if after_swap:
            after_swap(cur)
        rep.commit()
        # Fresh statistics: the analytics stage sizes its parallel streams and blocks from them.
        execute(cur, f"ANALYZE NO_WRITE_TO_BINLOG TABLE {mysql_ident(table.name)}")
        cur.fetchall()


def _copy_server_side(job: TableJob, *, cur: Any, rep: Any, shadow: str, after: tuple | None, stats: PhaseStats,
                      progress: ProgressFn | None, in_place: bool = False) -> None:
    """Each chunk: one INSERT ... SELECT from the source table into the shadow table (same server).
    `in_place`: into the live table, inside the caller's transaction (no commit, no checkpoint)."""
    table, key = job.table, job.key
    cols = ", ".join(mysql_ident(c) for c in writable_columns(job.source))
    src = job.source_sql
    dst = mysql_qualified(job.replica_db, shadow)
    # READ COMMITTED: INSERT ... SELECT then reads the source without locking its rows (in place, the
    # caller set it before its transaction began; set here it would only apply to the next one).
    if not in_place:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    try:
        if not key or in_place:  # in place: one statement, the table is small
            n = _exec(cur, f"INSERT INTO {dst} ({cols}) SELECT {cols} FROM {src}")
            if not in_place:
                rep.commit()
            stats.rows += n
            stats.chunks += 1
            return
        ks = job.keyset()
        while True:
            cond, params = ks.after(after)
            n = _exec(cur, f"INSERT INTO {dst} ({cols}) SELECT {cols} FROM {src} WHERE {cond} "
                           f"ORDER BY {ks.order_by} LIMIT {int(table.batch_size)}", params)
            if n == 0:
                rep.commit()
                break
            execute(cur, f"SELECT {ks.select_list} FROM {dst} ORDER BY {ks.order_by_desc} LIMIT 1")
            after = tuple(cur.fetchone())
            stats.rows += n
            stats.chunks += 1
            checkpoints.mysql_save(cur, table.name, shadow, after, stats.rows)
            rep.commit()
            if progress:
                progress(stats.rows)
            faults.check("replica", table.name, stats.chunks)
            if n < table.batch_size:
                break
    finally:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def _copy_streamed(job: TableJob, *, src: Any, cur: Any, rep: Any, shadow: str, after: tuple | None,
                   stats: PhaseStats, progress: ProgressFn | None, in_place: bool = False) -> None:
    """Each chunk: the source prints LOAD DATA lines into a FIFO, the replica loads them into the shadow.
    `in_place`: into the live table, inside the caller's transaction (no commit, no checkpoint)."""
    table, schema, key = job.table, job.source, job.key
    plan = load_data_plan(schema, shadow)
    query = LineQuery(
        table_sql=job.source_sql,
        line_expr=plan.line_expr,
        keyset=job.keyset() if key else None,
        batch_size=table.batch_size if key else 0,
        group_rows=group_rows_for(schema.avg_row_length, table.batch_size, packet_size(src)) if key else 0,
        integer_key=len(key) == 1 and schema.column(key[0]).data_type in INTEGER_TYPES,
    )
    load_sql, enum_columns = plan.load_sql, set(plan.enum_columns)
    # Every warning of a chunk must be inspected (see load_data.check_load_warnings).
    cur.execute("SET SESSION max_error_count = 65535")
    with src.cursor() as scur:
        # One consistent snapshot for the whole table, read-only: no locks on production rows.
        scur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    with fifo_path() as fifo:
        try:
            while True:
                chunk = ChunkResult()
                load_chunk(src, cur, fifo, load_sql, query, after, chunk, enum_columns)
                if chunk.rows == 0:
                    if not in_place:
                        rep.commit()
                    break
                after = chunk.last_key
                stats.rows += chunk.rows
                stats.bytes += chunk.bytes
                stats.chunks += 1
                if key and not in_place:
                    checkpoints.mysql_save(cur, table.name, shadow, after, stats.rows)
                if not in_place:
                    rep.commit()
                if progress:
                    progress(stats.rows)
                faults.check("replica", table.name, stats.chunks)
                if not key or chunk.rows < table.batch_size:
                    break
        finally:
            src.rollback()
