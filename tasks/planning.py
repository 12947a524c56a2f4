"""`etl plan`: what a run would do for each table, read from metadata only (no data touched)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy.engine import URL, make_url

from config.models import PipelineConfig
from config.settings import Settings
from tasks.connections import EngineUrls, create_engine
from tasks.errors import ConfigError, SchemaError
from tasks import binlog_apply, checksum_sync, dbt_run, decide, drift, probe, state, watermarks
from tasks.identifiers import mysql_ident, mysql_qualified, readable
from tasks.job import read_job
from tasks.mysql_schema import read_table_schema, server_identity, show_create_table, table_exists
from tasks.reports import format_table


@dataclass
class TablePlan:
    table: str
    group: str
    group_order: int
    workers: int
    mode: str
    estimated_rows: int | None
    batch_size: int
    chunks: int | None
    key: tuple[str, ...]
    reason: str
    problems: list[str] = field(default_factory=list)
    watermark: str | None = None
    deletes: str = "-"
    ddl: list[str] = field(default_factory=list)
    protection: str = "-"  # what keeps late commits and DST repeats inside the next window


@dataclass
class Plan:
    replica_method: str
    tables: list[TablePlan]
    dbt: str = ""
    binlog: str = ""  # binlog mode: positions and bytes to read, or what the source lacks for it


# Where the plan reads one database: its URL (None: not configured) and the driver's connect_args.
Endpoint = tuple[URL | None, dict]


def _endpoints(settings: Settings, urls: EngineUrls | None = None) -> dict[str, Endpoint]:
    """`urls` (a clinic's, from its sources-file URLs or its connector blocks), else ETL_*_URL; the
    analytics URL may be unset for a plan (nothing recorded is read then)."""
    if urls is not None:
        return {r: (getattr(urls, r), dict(getattr(urls, f"{r}_connect_args"))) for r in ("source", "replica", "analytics")}
    out: dict[str, Endpoint] = {"source": (settings.url("source"), {}), "replica": (settings.url("replica"), {})}
    try:
        out["analytics"] = (settings.url("analytics"), {})
    except ConfigError:
        out["analytics"] = (None, {})
    return out


def _engine(role: str, at: Endpoint):  # noqa: ANN202 - a sqlalchemy Engine
    return create_engine(role, at[0], pool_size=1, connect_args=at[1])


def build_plan(settings: Settings, cfg: PipelineConfig, *, tables: list[str] | None, full_refresh: bool,
               config_path: str | None = None, urls: EngineUrls | None = None) -> Plan:
    """Read metadata only (information_schema, SHOW CREATE TABLE, EXPLAIN, our state rows). `urls`: the
    databases of one clinic (sources file, its URLs or blocks); default ETL_*_URL of `settings`."""
    chosen = cfg.resolved_tables(tables)
    at = _endpoints(settings, urls)
    source_db = make_url(at["source"][0]).database
    replica_db = make_url(at["replica"][0]).database
    order = {g.name: (i, g.workers) for i, g in enumerate(cfg.priorities, start=1)}
    src = _engine("source", at["source"])
    out: list[TablePlan] = []
    method = settings.replica_method
    try:
        with src.connect() as conn:
            if method == "auto":
                method = _auto_method(at["replica"], conn)
            states, replica_schemas = _replica_view(at["replica"], replica_db, [t.name for t in chosen])
            # Whether INNODB_TRX is readable decides the late-commit protection of every table.
            trx = watermarks.open_transactions(conn.connection.driver_connection.cursor())
            conn.rollback()
            recorded = _recorded_probes(at["analytics"], settings.analytics_schema)
            for t in chosen:
                gi, workers = order[t.priority]
                p = TablePlan(t.name, t.priority, gi, workers, "full", None, t.batch_size, None, (), "")
                out.append(p)
                try:
                    job = read_job(conn, t, source_db=source_db, replica_db=replica_db,
                                   pg_schema=settings.analytics_schema, column_case=cfg.analytics.column_case,
                                   loaded_at_column=cfg.analytics.loaded_at_column)
                    schema, p.key, mode, why = job.source, job.key, job.mode, job.why
                    p.estimated_rows = schema.estimated_rows
                    job.pg_columns(schema, with_loaded_at=True)
                except SchemaError as e:
                    p.problems.append(str(e))
                    continue
                if mode == "incremental":
                    unindexed = _unindexed(conn, source_db, t.name, t.incremental_columns)
                    if unindexed:
                        why += (f"; no index starts with {', '.join(unindexed)}: every run scans the whole table "
                                f"to find changes (an index on the source makes runs cheap)")
                if mode == "incremental":
                    p.protection = watermarks.describe_protection(
                        trx, {c: schema.column(c).data_type for c in t.incremental_columns})
                st = states.get(t.name)
                p.watermark = describe_watermarks(st) if st else None
                p.chunks = max(1, math.ceil((p.estimated_rows or 0) / t.batch_size)) if p.key else 1
                has_state = st is not None and (mode != "binlog" or binlog_apply.SEQ in st.watermarks)
                # checksum hook: as in tasks/sync.py, a state without the checksum log's sequence copies first
                has_state = has_state and (mode != "checksum" or checksum_sync.SEQ in st.watermarks)
                route = decide.replica_path(mode=mode, why=why, full_refresh=full_refresh, has_state=has_state,
                                            replica_live=t.name in replica_schemas)
                p.reason = route.why
                if route.path != "full":
                    d = drift.compare(schema, replica_schemas[t.name], key=p.key)
                    if d.problems:
                        p.problems.append(str(drift.refuse(t.name, d)))
                    elif d.any:
                        p.ddl = drift.replica_alter_sql(t.name, d, schema, show_create_table(conn, source_db, t.name))
                    route = decide.replica_path(mode=mode, why=why, full_refresh=full_refresh, has_state=True,
                                                replica_live=True, drift_added=bool(d.added))
                    p.mode, p.reason = route.path, route.why
                    if p.mode == "checksum":  # what differs is found by the run's range checksums
                        p.estimated_rows, p.chunks = None, None
                        p.deletes = "off" if t.deletes == "off" else "found by range checksums"
                    if p.mode == "incremental":
                        p.estimated_rows = _estimate_changed(conn, source_db, t.name, st)
                        p.chunks = max(1, math.ceil(p.estimated_rows / t.batch_size))
                        due = t.deletes == "detect" and (st.run_count + 1) % t.deletes_every == 0
                        p.deletes = "checked" if due else ("off" if t.deletes == "off" else "not this run")
                if not p.problems and not full_refresh and probe.probed(job):
                    skip = _probe_skip(settings, conn, job, replica_live=t.name in replica_schemas, recorded=recorded)
                    if skip:  # the run's probe (tasks/run.py probe_phase) would find nothing to do
                        p.mode, p.reason, p.estimated_rows, p.chunks, p.deletes, p.ddl = \
                            "unchanged", f"{skip}; once it changes: {p.reason}", 0, 0, "-", []
            binlog_line = _binlog_line(at["replica"], conn, source_db, replica_db, chosen,
                                       any(p.mode == "binlog" for p in out))
    finally:
        src.dispose()
    out.sort(key=lambda p: p.group_order)
    return Plan(method, out, binlog=binlog_line, dbt=dbt_run.describe(cfg.dbt, config_path=config_path or settings.config,
                                                  source=(cfg.dbt.source if cfg.dbt else None) or settings.analytics_schema))


def _recorded_probes(analytics: Endpoint, pg_schema: str) -> dict[str, tuple[dict | None, bool]]:
    """Every table's recorded probe and whether its analytics table exists (empty when analytics
    has none yet or cannot be read: the run would then sync every table)."""
    out: dict[str, tuple[dict | None, bool]] = {}
    if analytics[0] is None:
        return out
    try:
        eng = _engine("analytics", analytics)
    except Exception:  # noqa: BLE001 - no analytics configured: nothing recorded
        return out
    try:
        with eng.connect() as pc:
            cur = pc.connection.driver_connection.cursor()
            cur.execute(f"SELECT table_name, probe, to_regclass(quote_ident(target_schema) || '.' || "
                        f"quote_ident(table_name)) IS NOT NULL FROM {probe.PG_TABLE} WHERE target_schema = %s",
                        (pg_schema,))
            out = {name: (rec, bool(live)) for name, rec, live in cur.fetchall()}
            pc.rollback()
    except Exception:  # noqa: BLE001 - no probe table yet
        pass
    finally:
        eng.dispose()
    return out


def _probe_skip(settings: Settings, conn, job, *, replica_live: bool, recorded: dict) -> str | None:  # noqa: ANN001
    rec, live = recorded.get(job.pg_name, (None, False))
    found = probe.read_probe(conn.connection.driver_connection.cursor(), job)
    conn.rollback()
    return decide.probe_skips(full_refresh=False, probe_same=found.same_as(rec), replica_live=replica_live,
                              analytics_live=live)


def _replica_view(replica: Endpoint, replica_db: str, names: list[str]) -> tuple[dict, dict]:
    """Our state rows and the replica's table shapes, if the replica database exists yet."""
    states: dict = {}
    schemas: dict = {}
    eng = _engine("replica", replica)
    try:
        with eng.connect() as rc:
            cur = rc.connection.driver_connection.cursor()
            cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (replica_db, state.MYSQL_STATE))
            has_state = cur.fetchone()[0] > 0
            for n in names:
                if has_state:
                    st = state.mysql_load(cur, n)
                    if st is not None:
                        states[n] = st
                if table_exists(rc, replica_db, n):
                    schemas[n] = read_table_schema(rc, replica_db, n)
    except Exception:  # noqa: BLE001 - no replica yet: every table starts with a full refresh
        pass
    finally:
        eng.dispose()
    return states, schemas


def _binlog_line(replica: Endpoint, conn, source_db: str, replica_db: str, chosen, uses: bool) -> str:  # noqa: ANN001
    """Binlog mode in the plan: the reader's saved position, the server's, the bytes between; or, when
    the source cannot serve it, what is missing with the statements that fix it."""
    from tasks import binlog_reader, binlog_source

    try:
        missing = binlog_source.missing_settings(conn.connection.driver_connection.cursor())
    except Exception as e:  # noqa: BLE001 - the plan still shows everything else
        return f"binlog mode: cannot tell ({type(e).__name__})"
    finally:
        conn.rollback()
    if missing:
        prefix = "binlog tables would fail" if uses else "binlog mode not available (tables keep their mode)"
        return f"{prefix}: {'; '.join(missing)}"
    if not uses:
        return ""
    eng = _engine("replica", replica)
    try:
        with eng.connect() as rc:
            cur = rc.connection.driver_connection.cursor()
            cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (replica_db, binlog_reader.CURSOR))
            saved = binlog_reader.load_cursor(cur, source_db) if cur.fetchone()[0] else None
    except Exception:  # noqa: BLE001 - no replica yet
        saved = None
    finally:
        eng.dispose()
    scur = conn.connection.driver_connection.cursor()
    now = binlog_source.current_position(scur)
    files = binlog_source.log_files(scur)
    conn.rollback()
    if saved is None:
        return f"binlog: no saved position yet (the first run starts reading at {now} or later)"
    at = saved[1]
    if saved[0] != binlog_source.server_id(scur) or not binlog_source.still_available(files, at):
        return (f"binlog: saved position {at} is gone (oldest available: {files[0][0] if files else 'none'}:4); "
                f"the run fails the binlog tables unless binlog.on_log_gone: resnapshot")
    return (f"binlog: saved position {at}, server position {now}, "
            f"{binlog_reader.bytes_between(files, at, now)} bytes of log to read")


def _estimate_changed(conn, source_db: str, table: str, st) -> int:  # noqa: ANN001
    """Rows in the change windows, from the optimizer's estimate (EXPLAIN reads no rows)."""
    total = 0
    for col, wm in st.watermarks.items():
        if wm is None:
            continue
        row = conn.exec_driver_sql(
            f"EXPLAIN SELECT 1 FROM {mysql_qualified(source_db, table)} WHERE {mysql_ident(col)} >= %s", (wm,)
        ).mappings().first()
        total += int(row["rows"] or 0) if row else 0
    return total


def _unindexed(conn, source_db: str, table: str, columns: tuple[str, ...]) -> list[str]:  # noqa: ANN001
    """Change columns that lead no index of the source table (finding changes by them is a scan)."""
    rows = conn.exec_driver_sql(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "AND SEQ_IN_INDEX = 1", (source_db, table)).fetchall()
    leading = {str(r[0]).lower() for r in rows}
    return [c for c in columns if c.lower() not in leading]


def _auto_method(replica: Endpoint, src_conn) -> str:  # noqa: ANN001
    try:
        # The replica database may not exist yet: connect to its server without naming it.
        from sqlalchemy import create_engine as sa_create_engine
        from sqlalchemy.pool import NullPool

        server = sa_create_engine(make_url(replica[0]).set(database=""), poolclass=NullPool,
                                  connect_args=replica[1])
        try:
            with server.connect() as r:
                same = server_identity(src_conn).same_server(server_identity(r))
        finally:
            server.dispose()
        return "server" if same else "stream"
    except Exception:  # noqa: BLE001 - the plan still shows everything else
        return "unknown (replica unreachable)"


# The checksum and binlog modes keep their log sequence (and binlog mode the log position of its last
# full copy, Position.encode: file number << 32 | offset) as state "watermarks" under internal names;
# the plan says what they are.
_INTERNAL = {
    checksum_sync.SEQ: lambda v: f"checksum log at {v}",
    binlog_apply.SEQ: lambda v: f"binlog change log at {v}",
    binlog_apply.AT: lambda v: f"full copy at binlog file {int(v) >> 32:06d} offset {int(v) & 0xFFFFFFFF}",
}


def describe_watermarks(st: state.TableState) -> str | None:
    """The plan's watermark column: change columns as `column=value`, a mode's log sequence in words
    (`checksum log at 0`, not `_checksum_seq=0`)."""
    logs = [_INTERNAL[c](v) for c, v in sorted(st.watermarks.items(), reverse=True) if c in _INTERNAL]
    columns = state.TableState(watermarks={c: v for c, v in st.watermarks.items() if c not in _INTERNAL}).describe()
    return ", ".join(logs + ([columns] if columns else [])) or None


def render_plan(plan: Plan) -> str:
    rows, under = [], []
    for p in plan.tables:
        rows.append([p.group_order, p.group, p.workers, p.table, p.mode, p.estimated_rows, p.batch_size, p.chunks,
                     ",".join(p.key) or "-", p.watermark or "-", p.deletes])
        # The long texts go on their own lines under the row, whole: as columns they made every row
        # hundreds of characters wide.
        under.append([f"problems: {'; '.join(p.problems)}" if p.problems else f"why: {p.reason}"]
                     + ([f"protection: {p.protection}"] if p.protection != "-" else []))
    head = f"replica copy path: {plan.replica_method}; {len(plan.tables)} tables"
    bad = [p for p in plan.tables if p.problems]
    ddl = [f"  {p.table}: {readable(stmt)}" for p in plan.tables for stmt in p.ddl]
    tail = ("\nschema drift DDL the run would apply to the replica:\n" + "\n".join(ddl)) if ddl else ""
    tail += f"\n{len(bad)} table(s) have problems that would fail them" if bad else ""
    tail += f"\n{plan.binlog}" if plan.binlog else ""
    tail += f"\n{plan.dbt}" if plan.dbt else ""
    return head + "\n" + format_table(
        ["#", "group", "workers", "table", "mode", "rows to move", "batch", "chunks", "key", "watermark", "deletes"],
        rows, under=under,
    ) + tail
