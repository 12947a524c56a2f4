"""`etl plan`: what a run would do for each table, read from metadata only (no data touched)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

from config.models import PipelineConfig
from config.settings import Settings
from tasks.connections import create_engine
from tasks.errors import SchemaError
from tasks.mysql_schema import choose_key, read_table_schema, server_identity, unique_keys
from tasks.reports import format_table
from tasks.type_mapping import pg_columns


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


@dataclass
class Plan:
    replica_method: str
    tables: list[TablePlan]


def build_plan(settings: Settings, cfg: PipelineConfig, *, tables: list[str] | None, full_refresh: bool) -> Plan:
    chosen = cfg.resolved_tables(tables)
    src_url = settings.url("source")
    source_db = make_url(src_url).database
    order = {g.name: (i, g.workers) for i, g in enumerate(cfg.priorities, start=1)}
    src = create_engine("source", src_url, pool_size=1)
    out: list[TablePlan] = []
    method = settings.replica_method
    try:
        with src.connect() as conn:
            if method == "auto":
                method = _auto_method(settings, conn)
            for t in chosen:
                gi, workers = order[t.priority]
                problems: list[str] = []
                key: tuple[str, ...] = ()
                rows = None
                try:
                    schema = read_table_schema(conn, source_db, t.name)
                    rows = schema.estimated_rows
                    key = choose_key(schema, t.primary_key, unique_keys(conn, source_db, t.name))
                    pg_columns(schema, column_case=cfg.analytics.column_case, boolean_columns=t.boolean_columns)
                    for c in t.incremental_columns:
                        if c not in schema.column_names:
                            problems.append(f"incremental column {c!r} does not exist")
                except SchemaError as e:
                    problems.append(str(e))
                if not key:
                    reason = "full refresh, whole table in one chunk: no primary key"
                elif full_refresh:
                    reason = "full refresh requested"
                else:
                    reason = "full refresh (mode: full)"
                chunks = max(1, math.ceil((rows or 0) / t.batch_size)) if key and rows is not None else (1 if rows is not None else None)
                out.append(TablePlan(t.name, t.priority, gi, workers, "full", rows, t.batch_size, chunks, key,
                                     reason, problems))
    finally:
        src.dispose()
    out.sort(key=lambda p: p.group_order)
    return Plan(method, out)


def _auto_method(settings: Settings, src_conn) -> str:  # noqa: ANN001
    try:
        # The replica database may not exist yet: connect to its server without naming it.
        from sqlalchemy import create_engine as sa_create_engine
        from sqlalchemy.pool import NullPool

        server = sa_create_engine(make_url(settings.url("replica")).set(database=""), poolclass=NullPool)
        try:
            with server.connect() as r:
                same = server_identity(src_conn).same_server(server_identity(r))
        finally:
            server.dispose()
        return "server" if same else "stream"
    except Exception:  # noqa: BLE001 - the plan still shows everything else
        return "unknown (replica unreachable)"


def render_plan(plan: Plan) -> str:
    rows = []
    for p in plan.tables:
        rows.append([p.group_order, p.group, p.workers, p.table, p.mode, p.estimated_rows, p.batch_size, p.chunks,
                     ",".join(p.key) or "-", "; ".join(p.problems) if p.problems else p.reason])
    head = f"replica copy path: {plan.replica_method}; {len(plan.tables)} tables"
    bad = [p for p in plan.tables if p.problems]
    tail = f"\n{len(bad)} table(s) have problems that would fail them" if bad else ""
    return head + "\n" + format_table(
        ["#", "group", "workers", "table", "mode", "est. rows", "batch", "chunks", "key", "why / problems"], rows
    ) + tail
