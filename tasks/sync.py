"""Which way a table is synchronised this run: full refresh or incremental. The flows call only this.

`replicate` (source -> replica) and `load` (replica -> analytics) each read their own state,
pick the path, and write the new state with the data:

- full refresh when the table's mode is `full`, when it has no primary key or no usable change
  column, on its first run, with `--full-refresh`, or after a column was added in the source
  (the reload back-fills it). The watermarks saved are the change columns' maxima read *before*
  the copy started, so rows changed during the copy are read again next time, held back against
  late commits and DST (tasks/watermarks.py) and persisted first, so a retry that resumes the copy
  saves the same ones.
- incremental otherwise (tasks/replica_merge.py, tasks/analytics_merge.py); widened columns are
  altered in place first, and in the analytics phase deleted rows are propagated when
  `deletes: detect` is due.
The table's facts (source schema, key, mode, time zone) come in a `TableJob` (tasks/job.py) read
once per table per run; the replica's own shape is read once per phase (it is what that phase
compares against or loads from).
Analytics reloads in full whenever the replica's generation (count of full reloads) differs from
the one it last loaded.
"""
from __future__ import annotations

import logging

import psycopg2.errors
from sqlalchemy.engine import make_url

from config.models import ColumnCase, ResolvedTable
from tasks import analytics_full, analytics_merge, decide, deletes, drift, locks, replica_full, replica_merge, state
from tasks import binlog_apply, checksum_sync, watermarks
from tasks.connections import Engines
from tasks.errors import SchemaError, is_retriable
from tasks.identifiers import execute, mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_regclass, pg_table_name
from tasks.job import PhaseStats, ProgressFn, TableJob, build_job, column_types, effective_mode
from tasks.mysql_schema import (
    TableSchema, ensure_database, read_table_schema, server_identity, show_create_table, table_exists,
)
from tasks.state import TableState
from tasks.type_mapping import same_pg_type

log = logging.getLogger("etl.sync")

__all__ = ["effective_mode", "load", "replicate"]  # effective_mode lives in tasks/job.py (a per-table fact)


def replicate(engines: Engines, table: ResolvedTable, *, source_db: str, replica_db: str, method: str,
              full_refresh: bool, resume: bool, progress: ProgressFn | None = None,
              job: TableJob | None = None) -> PhaseStats:
    """Source -> replica for one table. `job`: the table's facts for this run (tasks/job.py), read
    from the source here when not given."""
    with locks.replica_lock(engines, replica_db, table.name):
        job = job or build_job(engines, table, source_db=source_db, replica_db=replica_db)
        return _replicate(engines, job, method=method, full_refresh=full_refresh, resume=resume, progress=progress)


def _replicate(engines: Engines, job: TableJob, *, method: str, full_refresh: bool, resume: bool,
               progress: ProgressFn | None = None) -> PhaseStats:
    table, replica_db, src_schema, key, mode, why = job.table, job.replica_db, job.source, job.key, job.mode, job.why
    with engines.replica.connect() as rc:
        raw = rc.connection.driver_connection
        cur = raw.cursor()
        ensure_database(rc, replica_db)
        execute(cur, f"USE {mysql_ident(replica_db)}")
        state.mysql_ensure(cur)
        if full_refresh:
            state.mysql_reset(cur, table.name)
        current = state.mysql_load(cur, table.name)
        raw.commit()
        live = table_exists(rc, replica_db, table.name)
        rep_server = server_identity(rc)
        # binlog hook: a state without a binlog sequence (e.g. the table was incremental) copies first.
        has_state = current is not None and (mode != "binlog" or binlog_apply.SEQ in current.watermarks)
        # checksum hook: likewise a state without the checksum log's sequence copies first.
        has_state = has_state and (mode != "checksum" or checksum_sync.SEQ in current.watermarks)
        route = decide.replica_path(mode=mode, why=why, full_refresh=full_refresh, has_state=has_state,
                                    replica_live=live)
        # The replica's own shape (another table than the source's): what drift compares against.
        rep_schema = read_table_schema(rc, replica_db, table.name) if route.path != "full" else None

    notes: list[str] = []
    if route.path != "full":
        d = drift.compare(src_schema, rep_schema, key=key)
        if d.problems:
            raise drift.refuse(table.name, d)
        if d.tightened:
            notes += drift.hold_back_tightening(table.name, d, _null_counts(
                engines, replica_db, table.name, [new.name for _, new in d.tightened]))
        if d.added or d.widened or d.tightened:
            with engines.source.connect() as sc:
                ddl = show_create_table(sc, job.source_db, table.name)
            with engines.replica.connect() as rc:
                c = rc.connection.driver_connection.cursor()
                execute(c, f"USE {mysql_ident(replica_db)}")
                for stmt in drift.replica_alter_sql(table.name, d, src_schema, ddl):
                    execute(c, stmt)
            notes.append(f"schema drift applied in place: {d.describe()}")
        route = decide.replica_path(mode=mode, why=why, full_refresh=full_refresh, has_state=True, replica_live=True,
                                    drift_added=bool(d.added))
        if route.path == "binlog":  # binlog hook: the keys the run's reader logged (tasks/binlog_apply.py)
            def save_seq(cur, marks) -> None:  # noqa: ANN001
                state.mysql_save(cur, table.name, TableState(
                    generation=current.generation, watermarks={**current.watermarks, **marks},
                    run_count=current.run_count + 1, source_time_zone=job.source_time_zone))
            stats = binlog_apply.replicate_changes(engines, job, applied=current.watermarks[binlog_apply.SEQ],
                                                   save_state=save_seq, progress=progress)
            stats.notes = notes + stats.notes
            return stats
        if route.path == "checksum":  # checksum hook: only the key ranges that differ (tasks/checksum_sync.py)
            def save_marks(cur, marks) -> None:  # noqa: ANN001
                state.mysql_save(cur, table.name, TableState(
                    generation=current.generation, watermarks={**current.watermarks, **marks},
                    run_count=current.run_count + 1, source_time_zone=job.source_time_zone))
            stats = checksum_sync.replicate_ranges(engines, job, save_state=save_marks, progress=progress)
            if stats is not None:
                stats.notes = notes + stats.notes
                return stats
            notes.append("checksum: the keyless table differs from the source, copied again in full")
        if route.path == "incremental":
            window = _source_window(engines, job, kind="incremental", previous=current.watermarks, resume=resume)

            def save(cur, watermarks) -> None:  # noqa: ANN001
                state.mysql_save(cur, table.name, TableState(
                    generation=current.generation, watermarks=watermarks, run_count=current.run_count + 1,
                    source_time_zone=job.source_time_zone))
                state.mysql_clear_pending(cur, table.name)
            stats = replica_merge.replicate_incremental(
                engines, job, method=method, state=current, replica_server=rep_server, save_state=save,
                progress=progress, window=window)
            stats.notes = notes + window.protection + stats.notes
            return stats
        notes.append("reloaded in full to back-fill the added column(s)")

    # The maxima saved are read before the copy starts (rows changed during it are read again next
    # time), held back like an incremental window's, and persisted first: a retry that resumes after
    # the last committed chunk does not re-read the rows before it, so it must save these, not new ones.
    highs: dict = {}
    protection: list[str] = []
    if mode == "incremental":
        w = _source_window(engines, job, kind="full", previous={}, resume=resume)
        highs, protection = w.save, w.protection
    elif mode == "binlog":  # binlog hook: the change-log sequence and position this copy is consistent with
        highs = binlog_apply.snapshot_marks(engines, job)
    new = TableState(generation=(current.generation if current else 0) + 1, watermarks=highs,
                     source_time_zone=job.source_time_zone)

    def after_swap(cur) -> None:  # noqa: ANN001
        if mode == "checksum":  # checksum hook: the copy holds every logged range; the log starts over
            new.watermarks.update(checksum_sync.snapshot_marks(cur, table.name))
        state.mysql_save(cur, table.name, new)
        state.mysql_clear_pending(cur, table.name)
    stats = replica_full.copy_full(engines, job, method=method, resume=resume, progress=progress,
                                   after_swap=after_swap)
    stats.mode = "full"
    stats.watermark_before = current.describe() if current else None
    stats.watermark_after = new.describe()
    stats.notes = notes + [why] + stats.notes if mode == "full" else notes + protection + stats.notes
    return stats


def _source_window(engines: Engines, job: TableJob, *, kind: str, previous: dict, resume: bool) -> watermarks.Window:
    """The window of this run: on a retry the one the first attempt persisted, else read now from the
    source (MAX, open transactions) and persisted in the replica before any row is read."""
    table = job.table
    with engines.replica.connect() as rc:
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        pending = state.mysql_load_pending(cur, table.name, kind) if resume else None
        rep.commit()
        if pending is not None:
            passes, save, notes = pending
            return watermarks.Window([watermarks.Pass(*p) for p in passes], save,
                                     notes + ["retry: kept the window read before the first attempt"])
        with engines.source.connect() as sc:
            scur = sc.connection.driver_connection.cursor()
            w = watermarks.read_window(scur, job.source_sql, table.incremental_columns, previous,
                                       table.lookback if kind == "incremental" else None, column_types(job.source))
            sc.rollback()
        state.mysql_save_pending(cur, table.name, kind, [(p.column, p.low, p.high) for p in w.passes], w.save,
                                 w.protection)
        rep.commit()
    return w


def load(engines: Engines, table: ResolvedTable, *, replica_db: str, pg_schema: str, column_case: ColumnCase,
         full_refresh: bool, resume: bool, progress: ProgressFn | None = None,
         loaded_at_column: str | None = "_etl_loaded_at", job: TableJob | None = None) -> PhaseStats:
    """Replica -> analytics for one table. `job`: the table's facts for this run (tasks/job.py), read
    from the source here when not given; the replica's shape is read here either way."""
    with locks.analytics_lock(engines, pg_schema, pg_table_name(table.name)):
        job = job or build_job(engines, table, source_db=make_url(engines.urls.source).database, replica_db=replica_db)
        job = job.for_analytics(pg_schema=pg_schema, column_case=column_case, loaded_at_column=loaded_at_column)
        return _load(engines, job, full_refresh=full_refresh, resume=resume, progress=progress)


def _load(engines: Engines, job: TableJob, *, full_refresh: bool, resume: bool,
          progress: ProgressFn | None = None) -> PhaseStats:
    table, pg_schema, pg_name, mode = job.table, job.pg_schema, job.pg_name, job.mode
    with engines.replica.connect() as rc:
        # The replica's shape after the replica phase (drift applied, or a fresh copy): what is loaded.
        rep_schema = read_table_schema(rc, job.replica_db, table.name)
        # Name clashes (our load-time column included) fail here, before anything is created.
        job.pg_columns(rep_schema, with_loaded_at=True)
        cur = rc.connection.driver_connection.cursor()
        execute(cur, f"USE {mysql_ident(job.replica_db)}")
        state.mysql_ensure(cur)
        rep_state = state.mysql_load(cur, table.name)
        rc.connection.driver_connection.commit()
    with engines.analytics.connect() as pc:
        pg = pc.connection.driver_connection
        pcur = pg.cursor()
        state.pg_ensure(pcur)
        pg.commit()
        current = state.pg_load(pcur, pg_schema, pg_name)
        pcur.execute("SELECT to_regclass(%s) IS NOT NULL", (pg_regclass(pg_schema, pg_name),))
        live = bool(pcur.fetchone()[0])
        pg.commit()

    if decide.analytics_path(mode=mode, full_refresh=full_refresh, live=live,
                             state_generation=current.generation if current else None,
                             replica_generation=rep_state.generation if rep_state else None) != "full":
        if mode == "checksum" and not checksum_sync.pending(rep_state.watermarks, current.watermarks):
            # checksum hook: nothing logged since analytics' last load, so nothing is read or written.
            return PhaseStats(method="checksum", mode="checksum", notes=["checksum: unchanged"])
        notes = _widen_in_place(engines, job, rep_schema)
        if mode == "checksum":  # checksum hook: the keys of the re-copied ranges (tasks/checksum_sync.py)
            def save_marks(cur, marks) -> None:  # noqa: ANN001
                state.pg_save(cur, pg_schema, pg_name, TableState(
                    generation=current.generation, watermarks={**current.watermarks, **marks},
                    run_count=current.run_count + 1))
            stats = checksum_sync.load_ranges(
                engines, job, schema=rep_schema, applied=int(current.watermarks.get(checksum_sync.SEQ) or 0),
                upto=int(rep_state.watermarks.get(checksum_sync.SEQ) or 0), save_state=save_marks, progress=progress)
            stats.notes = notes + stats.notes
            return stats
        if mode == "binlog":  # binlog hook: the keys the replica leg applied (tasks/binlog_apply.py)
            def save_seq(cur, marks) -> None:  # noqa: ANN001
                state.pg_save(cur, pg_schema, pg_name, TableState(
                    generation=current.generation, watermarks={**current.watermarks, **marks},
                    run_count=current.run_count + 1))
            stats = binlog_apply.load_changes(
                engines, job, schema=rep_schema, applied=current.watermarks.get(binlog_apply.SEQ, 0),
                upto=rep_state.watermarks.get(binlog_apply.SEQ, 0), save_state=save_seq, progress=progress)
            stats.notes = notes + stats.notes
            return stats

        window = _replica_window(engines, job, rep_schema, previous=current.watermarks,
                                 replica_saved=rep_state.watermarks)

        def save(cur, watermarks) -> None:  # noqa: ANN001
            state.pg_save(cur, pg_schema, pg_name, TableState(
                generation=current.generation, watermarks=watermarks, run_count=current.run_count + 1))
        stats = analytics_merge.load_incremental(engines, job, schema=rep_schema, state=current, save_state=save,
                                                 progress=progress, window=window)
        stats.notes = notes + stats.notes
        if table.deletes == "detect" and (current.run_count + 1) % table.deletes_every == 0:
            stats.deleted = _propagate_deletes(engines, job, rep_schema)
            stats.notes.append(f"deletes checked: {stats.deleted} removed")
        return stats

    highs: dict = {}
    if mode in ("incremental", "binlog", "checksum") and rep_state is not None:
        highs = dict(rep_state.watermarks)  # the replica was static since its own state was written
    new = TableState(generation=rep_state.generation if rep_state else 0, watermarks=highs)

    def in_swap(cur) -> None:  # noqa: ANN001
        if full_refresh:
            state.pg_reset(cur, pg_schema, pg_name)
        state.pg_save(cur, pg_schema, pg_name, new, cleared=full_refresh)

    stats = analytics_full.load_full(engines, job, schema=rep_schema, resume=resume, progress=progress,
                                     in_swap=in_swap)
    stats.mode = "full"
    stats.watermark_before = current.describe() if current else None
    stats.watermark_after = new.describe()
    return stats


def _null_counts(engines: Engines, replica_db: str, table: str, columns: list[str]) -> dict[str, int]:
    """Rows holding NULL per column of a replica table (one scan, only when a column became NOT NULL)."""
    counts = ", ".join(f"SUM({mysql_ident(c)} IS NULL)" for c in columns)
    with engines.replica.connect() as rc:
        cur = rc.connection.driver_connection.cursor()
        execute(cur, f"SELECT {counts} FROM {mysql_qualified(replica_db, table)}")
        row = cur.fetchone()
        rc.rollback()
    return {c: int(n or 0) for c, n in zip(columns, row)}


def _replica_window(engines: Engines, job: TableJob, rep_schema: TableSchema, *, previous: dict,
                    replica_saved: dict) -> watermarks.Window:
    """The analytics leg's window on the replica, whose watermarks never pass the replica's own.

    Only this pipeline writes the replica, and each phase commits before the next reads, so no
    late commit happens there (INNODB_TRX is not consulted). But the replica may still receive rows
    stamped below its current MAX: the source's late commits and DST repeats, which the replica's
    next window (starting at its saved watermark, less the lookback) brings in. Analytics saving the
    replica's MAX would leave them behind; saving at most the replica's watermark keeps them inside
    the next analytics window. A retry reads the window again: the re-read is complete (the analytics
    merge does not resume mid-window) and the cap holds whatever the replica did in between."""
    table = job.table
    with engines.replica.connect() as rc:
        cur = rc.connection.driver_connection.cursor()
        w = watermarks.read_window(cur, job.replica_sql, table.incremental_columns, previous, table.lookback,
                                   column_types(rep_schema), late_commits=False)
        rc.connection.driver_connection.rollback()
    capped: dict = {}
    for c, v in w.save.items():
        top = replica_saved.get(c)
        v = v if top is None or v <= top else top
        old = previous.get(c)
        if top is None:
            v = old  # the replica saved no watermark for it yet: analytics does not advance either
        if v is not None:
            capped[c] = v if old is None or v >= old else old
    w.save = capped
    return w


def _widen_in_place(engines: Engines, job: TableJob, rep_schema: TableSchema) -> list[str]:
    """Bring analytics columns to the replica's types and nullability, in place (no reload).

    A widened type is `ALTER COLUMN ... TYPE` (varchar(n) -> text, integer -> bigint/numeric keep
    every value); NOT NULL -> NULL is `DROP NOT NULL`, or merging the first NULL would fail.
    NULL -> NOT NULL is `SET NOT NULL` only when analytics holds no NULL there any more: rows the
    replica has changed since are merged by this run, so the change is retried on the next one.
    Any ALTER fails only on something a person must decide (views on a retyped column), with a
    message saying what to do. Key columns stay NOT NULL (PostgreSQL's primary key needs it; the
    date columns of a key are NULL-able in the mapping only for zero dates, which a key never holds).
    """
    pg_schema, pg_name, key = job.pg_schema, job.pg_name, job.key
    wanted = job.pg_columns(rep_schema, with_loaded_at=True)
    notes = []
    q_table = pg_qualified(pg_schema, pg_name)
    with engines.analytics.connect() as pc:
        pg = pc.connection.driver_connection
        cur = pg.cursor()
        cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a "
                    "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                    (pg_regclass(pg_schema, pg_name),))
        have = {name: (typ, notnull) for name, typ, notnull in cur.fetchall()}
        for col in wanted:
            if col.name not in have:
                continue
            typ, notnull = have[col.name]
            alter = f"ALTER TABLE {q_table} ALTER COLUMN {pg_ident(col.name)}"
            try:
                # A JSON column the full load made `json` (it holds a document jsonb refuses) stays json.
                kept_json = same_pg_type(typ, "json") and col.pg_type == "jsonb"
                if not same_pg_type(typ, col.pg_type) and not kept_json:
                    execute(cur, f"{alter} TYPE {col.pg_type}")
                    notes.append(f"analytics column {col.name} widened to {col.pg_type}")
                if notnull and col.nullable and col.source.name not in key:
                    execute(cur, f"{alter} DROP NOT NULL")
                    notes.append(f"analytics column {col.name} is NULL-able now, as in the source")
            except psycopg2.Error as e:
                pg.rollback()
                if is_retriable(e):  # a lock timeout or a lost connection is retried, not a schema problem
                    raise
                raise SchemaError(
                    f"table {pg_schema}.{pg_name}: cannot change column {col.name!r} to {col.pg_type} "
                    f"{'NULL' if col.nullable else 'NOT NULL'} in place ({str(e).splitlines()[0]}); drop the "
                    f"views that use it, rerun, then recreate them") from None
            if not notnull and not col.nullable and col.source.name not in key:
                cur.execute("SAVEPOINT etl_not_null")
                try:
                    execute(cur, f"{alter} SET NOT NULL")
                    notes.append(f"analytics column {col.name} is NOT NULL now, as in the source")
                except psycopg2.errors.NotNullViolation:
                    cur.execute("ROLLBACK TO SAVEPOINT etl_not_null")
                    notes.append(f"analytics column {col.name} stays NULL-able until its rows holding NULL "
                                 f"are merged (retried next run)")
        pg.commit()
    return notes


def _propagate_deletes(engines: Engines, job: TableJob, rep_schema: TableSchema) -> int:
    table = job.table
    by_source = {c.source.name: c.name for c in job.pg_columns(rep_schema)}
    with engines.source.connect() as sc, engines.replica.connect() as rc, engines.analytics.connect() as pc:
        scur = sc.connection.driver_connection.cursor()
        result = deletes.propagate_deletes(
            scur, rc.connection.driver_connection, pc.connection.driver_connection,
            source_sql=job.source_sql, replica_sql=job.replica_sql, pg_schema=job.pg_schema, pg_table=job.pg_name,
            keyset=job.keyset(rep_schema), pg_key=[by_source[k] for k in job.key],
            table=table.name, page=max(table.batch_size, 10_000), max_fraction=table.deletes_max_fraction,
            min_rows=table.deletes_min_rows)
        sc.rollback()
    return result.deleted
