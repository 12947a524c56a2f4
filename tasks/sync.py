"""Which way a table is synchronised this run: full refresh or incremental. The flows call only this.

`replicate` (source -> replica) and `load` (replica -> analytics) each read their own state,
pick the path, and write the new state with the data:

- full refresh when the table's mode is `full`, when it has no primary key or no usable change
  column, on its first run, with `--full-refresh`, or after a column was added in the source
  (the reload back-fills it). The watermarks saved are the change columns' maxima read *before*
  the copy started, so rows changed during the copy are read again next time, held back against
  late commits and DST (tasks/watermarks.py) and persisted first, so a retry that resumes the copy
  saves the same ones.
- incremental otherwise (see tasks/incremental.py); widened columns are altered in place first,
  and in the analytics phase deleted rows are propagated when `deletes: detect` is due.
Analytics reloads in full whenever the replica's generation (count of full reloads) differs from
the one it last loaded.
"""
from __future__ import annotations

import logging
import re

import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from config.models import LookbackWindow, ResolvedTable
from tasks import analytics_load, decide, deletes, drift, incremental, locks, replica_copy, state, watermarks
from tasks.analytics_load import PhaseStats, ProgressFn
from tasks.connections import Engines
from tasks.errors import SchemaError, is_retriable
from tasks.keyset import Keyset
from tasks.identifiers import execute, mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_regclass, pg_table_name
from tasks.mysql_schema import (
    TableSchema, choose_key, ensure_database, read_table_schema, server_identity, show_create_table, table_exists,
    unique_keys,
)
from tasks.state import TableState
from tasks.type_mapping import pg_columns

log = logging.getLogger("etl.sync")


def effective_mode(table: ResolvedTable, schema: TableSchema, key: tuple[str, ...]) -> tuple[str, str]:
    """(mode, why) for a table; raises SchemaError when the config names columns that do not fit."""
    for c in table.incremental_columns:
        if c not in schema.column_names:
            import difflib

            m = difflib.get_close_matches(c, schema.column_names, n=1)
            hint = f" (did you mean {m[0]!r}?)" if m else ""
            raise SchemaError(f"table {table.name!r}: incremental column {c!r} does not exist{hint}; "
                              f"fix tables.{table.name}.incremental_columns")
        try:
            state.watermark_kind(schema.column(c).data_type)
        except ValueError as e:
            raise SchemaError(f"table {table.name!r}: incremental column {c!r}: {e}") from None
    if table.mode == "full":
        return "full", "mode: full"
    if not key:
        return "full", "no primary key: full refresh every run (rows cannot be merged)"
    if not table.incremental_columns:
        return "full", "mode: incremental but no incremental_columns: full refresh"
    why = f"incremental on {', '.join(table.incremental_columns)} (any of them advanced)"
    if isinstance(table.lookback, LookbackWindow):
        types = {c.name: c.data_type for c in schema.columns}
        for c in table.lookback.columns:
            incremental.check_window_column(f"table {table.name!r}", c, types, fix=f"tables.{table.name}.lookback")
        why += f"; re-reads rows whose {', '.join(table.lookback.columns)} is in the last {table.lookback.window}"
    elif table.lookback:
        why += f"; re-reads {table.lookback} before each watermark"
    return "incremental", why


def _source_time_zone(conn: sa.Connection) -> str:
    tz, system = conn.execute(sa.text("SELECT @@global.time_zone, @@system_time_zone")).one()
    return str(system) if str(tz) == "SYSTEM" else str(tz)


def replicate(engines: Engines, table: ResolvedTable, *, source_db: str, replica_db: str, method: str,
              full_refresh: bool, resume: bool, progress: ProgressFn | None = None) -> PhaseStats:
    with locks.replica_lock(engines, replica_db, table.name):
        return _replicate(engines, table, source_db=source_db, replica_db=replica_db, method=method,
                          full_refresh=full_refresh, resume=resume, progress=progress)


def _replicate(engines: Engines, table: ResolvedTable, *, source_db: str, replica_db: str, method: str,
               full_refresh: bool, resume: bool, progress: ProgressFn | None = None) -> PhaseStats:
    with engines.source.connect() as sc:
        src_schema = read_table_schema(sc, source_db, table.name)
        key = choose_key(src_schema, table.primary_key, unique_keys(sc, source_db, table.name))
        mode, why = effective_mode(table, src_schema, key)
        tz = _source_time_zone(sc)
        sc.rollback()
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
        rep_schema = read_table_schema(rc, replica_db, table.name) if live else None

    notes: list[str] = []
    route = decide.replica_path(mode=mode, why=why, full_refresh=full_refresh, has_state=current is not None,
                                replica_live=live)
    if route.path == "incremental":
        d = drift.compare(src_schema, rep_schema, key=key)
        if d.problems:
            raise drift.refuse(table.name, d)
        if d.tightened:
            notes += drift.hold_back_tightening(table.name, d, _null_counts(
                engines, replica_db, table.name, [new.name for _, new in d.tightened]))
        if d.added or d.widened or d.tightened:
            with engines.source.connect() as sc:
                ddl = show_create_table(sc, source_db, table.name)
            with engines.replica.connect() as rc:
                c = rc.connection.driver_connection.cursor()
                execute(c, f"USE {mysql_ident(replica_db)}")
                for stmt in drift.replica_alter_sql(table.name, d, src_schema, ddl):
                    execute(c, stmt)
            notes.append(f"schema drift applied in place: {d.describe()}")
        route = decide.replica_path(mode=mode, why=why, full_refresh=full_refresh, has_state=True, replica_live=True,
                                    drift_added=bool(d.added))
        if route.path == "incremental":
            window = _source_window(engines, table, src_schema, source_db=source_db, replica_db=replica_db,
                                    kind="incremental", previous=current.watermarks, resume=resume)

            def save(cur, watermarks) -> None:  # noqa: ANN001
                state.mysql_save(cur, table.name, TableState(
                    generation=current.generation, watermarks=watermarks, run_count=current.run_count + 1,
                    source_time_zone=tz))
                state.mysql_clear_pending(cur, table.name)
            stats = incremental.replicate_incremental(
                engines, table, src_schema, key, source_db=source_db, replica_db=replica_db, method=method,
                state=current, replica_server=rep_server, save_state=save, progress=progress, window=window)
            stats.notes = notes + window.protection + stats.notes
            return stats
        notes.append("reloaded in full to back-fill the added column(s)")

    # The maxima saved are read before the copy starts (rows changed during it are read again next
    # time), held back like an incremental window's, and persisted first: a retry that resumes after
    # the last committed chunk does not re-read the rows before it, so it must save these, not new ones.
    highs: dict = {}
    protection: list[str] = []
    if mode == "incremental":
        w = _source_window(engines, table, src_schema, source_db=source_db, replica_db=replica_db, kind="full",
                           previous={}, resume=resume)
        highs, protection = w.save, w.protection
    new = TableState(generation=(current.generation if current else 0) + 1, watermarks=highs, source_time_zone=tz)

    def after_swap(cur) -> None:  # noqa: ANN001
        state.mysql_save(cur, table.name, new)
        state.mysql_clear_pending(cur, table.name)
    stats = replica_copy.copy_full(
        engines, table, source_db=source_db, replica_db=replica_db, method=method, resume=resume,
        progress=progress, after_swap=after_swap)
    stats.mode = "full"
    stats.watermark_before = current.describe() if current else None
    stats.watermark_after = new.describe()
    stats.notes = notes + [why] + stats.notes if mode == "full" else notes + protection + stats.notes
    return stats


def _source_window(engines: Engines, table: ResolvedTable, src_schema: TableSchema, *, source_db: str,
                   replica_db: str, kind: str, previous: dict, resume: bool) -> watermarks.Window:
    """The window of this run: on a retry the one the first attempt persisted, else read now from the
    source (MAX, open transactions) and persisted in the replica before any row is read."""
    with engines.replica.connect() as rc:
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(replica_db)}")
        pending = state.mysql_load_pending(cur, table.name, kind) if resume else None
        rep.commit()
        if pending is not None:
            passes, save, notes = pending
            return watermarks.Window([watermarks.Pass(*p) for p in passes], save,
                                     notes + ["retry: kept the window read before the first attempt"])
        with engines.source.connect() as sc:
            scur = sc.connection.driver_connection.cursor()
            w = incremental.read_window(scur, mysql_qualified(source_db, table.name), table.incremental_columns,
                                        previous, table.lookback if kind == "incremental" else None,
                                        {c.name: c.data_type for c in src_schema.columns})
            sc.rollback()
        state.mysql_save_pending(cur, table.name, kind, [(p.column, p.low, p.high) for p in w.passes], w.save,
                                 w.protection)
        rep.commit()
    return w


def load(engines: Engines, table: ResolvedTable, *, replica_db: str, pg_schema: str, column_case: str,
         full_refresh: bool, resume: bool, progress: ProgressFn | None = None,
         loaded_at_column: str | None = "_etl_loaded_at") -> PhaseStats:
    with locks.analytics_lock(engines, pg_schema, pg_table_name(table.name)):
        return _load(engines, table, replica_db=replica_db, pg_schema=pg_schema, column_case=column_case,
                     full_refresh=full_refresh, resume=resume, progress=progress, loaded_at_column=loaded_at_column)


def _load(engines: Engines, table: ResolvedTable, *, replica_db: str, pg_schema: str, column_case: str,
          full_refresh: bool, resume: bool, progress: ProgressFn | None = None,
          loaded_at_column: str | None = "_etl_loaded_at") -> PhaseStats:
    pg_name = pg_table_name(table.name)
    with engines.replica.connect() as rc:
        rep_schema = read_table_schema(rc, replica_db, table.name)
        key = choose_key(rep_schema, table.primary_key, unique_keys(rc, replica_db, table.name))
        mode, _ = effective_mode(table, rep_schema, key)
        # Name clashes (our load-time column included) fail here, before anything is created.
        pg_columns(rep_schema, column_case=column_case, boolean_columns=table.boolean_columns,
                   loaded_at_column=loaded_at_column)
        cur = rc.connection.driver_connection.cursor()
        execute(cur, f"USE {mysql_ident(replica_db)}")
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
                             replica_generation=rep_state.generation if rep_state else None) == "incremental":
        notes = _widen_in_place(engines, table, rep_schema, pg_schema, column_case, loaded_at_column, key=key)

        window = _replica_window(engines, table, rep_schema, replica_db=replica_db, previous=current.watermarks,
                                 replica_saved=rep_state.watermarks)

        def save(cur, watermarks) -> None:  # noqa: ANN001
            state.pg_save(cur, pg_schema, pg_name, TableState(
                generation=current.generation, watermarks=watermarks, run_count=current.run_count + 1))
        stats = incremental.load_incremental(
            engines, table, rep_schema, key, replica_db=replica_db, pg_schema=pg_schema, column_case=column_case,
            state=current, save_state=save, loaded_at_column=loaded_at_column, progress=progress, window=window)
        stats.notes = notes + stats.notes
        if table.deletes == "detect" and (current.run_count + 1) % table.deletes_every == 0:
            stats.deleted = _propagate_deletes(engines, table, key, rep_schema, replica_db=replica_db,
                                               pg_schema=pg_schema, column_case=column_case)
            stats.notes.append(f"deletes checked: {stats.deleted} removed")
        return stats

    highs: dict = {}
    if mode == "incremental" and rep_state is not None:
        highs = dict(rep_state.watermarks)  # the replica was static since its own state was written
    new = TableState(generation=rep_state.generation if rep_state else 0, watermarks=highs)

    def in_swap(cur) -> None:  # noqa: ANN001
        if full_refresh:
            state.pg_reset(cur, pg_schema, pg_name)
        state.pg_save(cur, pg_schema, pg_name, new)

    stats = analytics_load.load_full(
        engines, table, replica_db=replica_db, pg_schema=pg_schema, column_case=column_case, resume=resume,
        progress=progress, in_swap=in_swap, loaded_at_column=loaded_at_column)
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


def _replica_window(engines: Engines, table: ResolvedTable, rep_schema: TableSchema, *, replica_db: str,
                    previous: dict, replica_saved: dict) -> watermarks.Window:
    """The analytics leg's window on the replica, whose watermarks never pass the replica's own.

    Only this pipeline writes the replica, and each phase commits before the next reads, so no
    late commit happens there (INNODB_TRX is not consulted). But the replica may still receive rows
    stamped below its current MAX: the source's late commits and DST repeats, which the replica's
    next window (starting at its saved watermark, less the lookback) brings in. Analytics saving the
    replica's MAX would leave them behind; saving at most the replica's watermark keeps them inside
    the next analytics window. A retry reads the window again: the re-read is complete (the analytics
    merge does not resume mid-window) and the cap holds whatever the replica did in between."""
    with engines.replica.connect() as rc:
        cur = rc.connection.driver_connection.cursor()
        w = incremental.read_window(cur, mysql_qualified(replica_db, table.name), table.incremental_columns,
                                    previous, table.lookback, {c.name: c.data_type for c in rep_schema.columns},
                                    late_commits=False)
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


def _widen_in_place(engines: Engines, table: ResolvedTable, rep_schema: TableSchema, pg_schema: str,
                    column_case: str, loaded_at_column: str | None = None, *,
                    key: tuple[str, ...] = ()) -> list[str]:
    """Bring analytics columns to the replica's types and nullability, in place (no reload).

    A widened type is `ALTER COLUMN ... TYPE` (varchar(n) -> text, integer -> bigint/numeric keep
    every value); NOT NULL -> NULL is `DROP NOT NULL`, or merging the first NULL would fail.
    NULL -> NOT NULL is `SET NOT NULL` only when analytics holds no NULL there any more: rows the
    replica has changed since are merged by this run, so the change is retried on the next one.
    Any ALTER fails only on something a person must decide (views on a retyped column), with a
    message saying what to do. Key columns stay NOT NULL (PostgreSQL's primary key needs it; the
    date columns of a key are NULL-able in the mapping only for zero dates, which a key never holds).
    """
    pg_name = pg_table_name(table.name)
    wanted = pg_columns(rep_schema, column_case=column_case, boolean_columns=table.boolean_columns,
                        loaded_at_column=loaded_at_column)
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
                kept_json = _norm(typ) == "json" and col.pg_type == "jsonb"
                if _norm(typ) != _norm(col.pg_type) and not kept_json:
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


def _norm(pg_type: str) -> str:
    """format_type() spelling and ours, made comparable."""
    t = pg_type.replace("character varying", "varchar").replace("double precision", "float8")
    t = re.sub(r"timestamp(\(\d+\))? with time zone", r"timestamptz\1", t)
    t = re.sub(r"timestamp(\(\d+\))? without time zone", r"timestamp\1", t)
    t = t.replace(" ", "").replace("timestamptz(6)", "timestamptz").replace("timestamp(6)", "timestamp")
    return t


def _propagate_deletes(engines: Engines, table: ResolvedTable, key: tuple[str, ...], rep_schema: TableSchema, *,
                       replica_db: str, pg_schema: str, column_case: str) -> int:
    source_db = make_url(engines.urls.source).database
    by_source = {c.source.name: c.name for c in pg_columns(rep_schema, column_case=column_case,
                                                           boolean_columns=table.boolean_columns)}
    with engines.source.connect() as sc, engines.replica.connect() as rc, engines.analytics.connect() as pc:
        scur = sc.connection.driver_connection.cursor()
        result = deletes.propagate_deletes(
            scur, rc.connection.driver_connection, pc.connection.driver_connection,
            source_sql=mysql_qualified(source_db, table.name), replica_sql=mysql_qualified(replica_db, table.name),
            pg_schema=pg_schema, pg_table=pg_table_name(table.name), keyset=Keyset.for_table(rep_schema, key, mysql_ident),
            pg_key=[by_source[k] for k in key],
            table=table.name, page=max(table.batch_size, 10_000), max_fraction=table.deletes_max_fraction,
            min_rows=table.deletes_min_rows)
        sc.rollback()
    return result.deleted
