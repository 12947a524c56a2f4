"""The flows: wiring only. Ordering, concurrency and retries live here; the work is in `tasks/`.

    etl-pipeline                      parent flow: config, engines, groups in priority order
      group-<name>                    one subflow per priority group, ThreadPoolTaskRunner(workers)
        run-<table>  (task)           runs the table's subflow on a worker thread
          table-<table>               one flow run per table
            replicate-<table>         task, retried on transient database errors, resumes
            load-<table>              task, retried likewise
            verify-<table>            task

A failing table does not stop the others; the parent run ends Failed and names every failed table.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from blocks.connectors import BlockNames, urls_from_blocks, urls_from_settings
from config.models import PipelineConfig, ResolvedTable, load_pipeline_config
from config.settings import Settings
from tasks import sync
from tasks.connections import (
    Engines, check_reachable, lookup, open_engines, open_metrics_engine, register, unregister,
)
from tasks.errors import ConfigError, LoadError, TablesFailed, redact, retry_condition
from tasks.metrics import MetricsWriter
from tasks.mysql_schema import server_identity
from tasks.progress import Progress
from tasks.verify import count_check

RETRIES = 3
RETRY_DELAYS = [2, 10, 30]


class RunOptions(BaseModel):
    """Everything a table subflow needs besides its table; plain data so Prefect can record it."""

    run_key: str = Field(description="Key of this run's engines in the process registry.")
    run_id: str = Field(description="Pipeline run id (the Prefect flow run id) used in metrics.")
    source_db: str = Field(description="Source database name.")
    replica_db: str = Field(description="Replica database name.")
    pg_schema: str = Field(description="Analytics schema.")
    column_case: str = Field(description="lower or preserve.")
    replica_method: str = Field(description="server or stream.")
    full_refresh: bool = Field(default=False, description="Reload from scratch.")


class TableOutcome(BaseModel):
    """What happened to one table in one run."""

    table: str
    status: str
    replica_rows: int = 0
    analytics_rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = Field(default_factory=list)


def _metrics(opts: RunOptions, engines: Engines) -> MetricsWriter:
    return MetricsWriter(engines.analytics, opts.run_id, engines.urls.secrets())


def _attempt() -> int:
    try:
        return int(runtime_task_run.run_count or 1)
    except Exception:  # noqa: BLE001 - outside a task run
        return 1


@task(task_run_name="replicate-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def replicate_table(table: ResolvedTable, opts: RunOptions) -> dict:
    """Source -> replica for one table; a retry resumes after the last committed chunk."""
    engines = lookup(opts.run_key)
    logger = get_run_logger()
    attempt = _attempt()
    try:
        stats = sync.replicate(
            engines, table, source_db=opts.source_db, replica_db=opts.replica_db, method=opts.replica_method,
            full_refresh=opts.full_refresh, resume=attempt > 1,
            progress=Progress(table.name, "replica copy", table.estimated_rows or 0, logger),
        )
    except Exception as e:
        _metrics(opts, engines).error(table=table.name, phase="replica", exc=e, attempt=attempt)
        raise
    logger.info("%s: %s rows to the replica in %.2fs (%s, %d chunks)", table.name, f"{stats.rows:,}",
                stats.seconds, stats.method, stats.chunks)
    return {"rows": stats.rows, "seconds": stats.seconds, "method": stats.method, "notes": stats.notes,
            "bytes": stats.bytes, "mode": stats.mode, "watermark_before": stats.watermark_before,
            "watermark_after": stats.watermark_after, "deleted": stats.deleted}


@task(task_run_name="load-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def load_table(table: ResolvedTable, opts: RunOptions) -> dict:
    """Replica -> analytics for one table; a retry resumes after the last committed chunk."""
    engines = lookup(opts.run_key)
    logger = get_run_logger()
    attempt = _attempt()
    try:
        stats = sync.load(
            engines, table, replica_db=opts.replica_db, pg_schema=opts.pg_schema, column_case=opts.column_case,
            full_refresh=opts.full_refresh, resume=attempt > 1,
            progress=Progress(table.name, "analytics load", table.estimated_rows or 0, logger),
        )
    except Exception as e:
        _metrics(opts, engines).error(table=table.name, phase="analytics", exc=e, attempt=attempt)
        raise
    logger.info("%s: %s rows to PostgreSQL in %.2fs (%d chunks, %.0f rows/s)", table.name, f"{stats.rows:,}",
                stats.seconds, stats.chunks, stats.rows_per_second)
    return {"rows": stats.rows, "seconds": stats.seconds, "notes": stats.notes, "bytes": stats.bytes,
            "mode": stats.mode, "deleted": stats.deleted}


@task(task_run_name="verify-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def verify_table(table: ResolvedTable, opts: RunOptions) -> dict:
    engines = lookup(opts.run_key)
    t0 = time.monotonic()
    check = count_check(engines, table.name, source_db=None, replica_db=opts.replica_db, pg_schema=opts.pg_schema)
    if not check.ok:
        raise LoadError(f"verification failed: {check.describe()}", table=table.name, phase="verify")
    return {"ok": True, "seconds": time.monotonic() - t0, "describe": check.describe()}


@flow(flow_run_name="table-{table.name}", log_prints=False, validate_parameters=False)
def table_flow(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """One table, start to finish: replica copy, analytics load, verification, metrics."""
    engines = lookup(opts.run_key)
    metrics = _metrics(opts, engines)
    metrics.table_started(table.name, priority=table.priority, mode=table.mode)
    t0 = time.monotonic()
    try:
        rep = replicate_table(table, opts)
        ana = load_table(table, opts)
        ver = verify_table(table, opts)
    except Exception as e:
        metrics.table_finished(table.name, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    seconds = time.monotonic() - t0
    notes = [*rep["notes"], *ana["notes"]]
    metrics.table_finished(table.name, {
        "status": "ok", "replica_seconds": rep["seconds"], "analytics_seconds": ana["seconds"],
        "verify_seconds": ver["seconds"], "replica_rows": rep["rows"], "analytics_rows": ana["rows"],
        "bytes": ana["bytes"], "rows_per_second": ana["rows"] / seconds if seconds else None,
        "replica_method": rep["method"], "verified": True, "notes": "; ".join(notes) or None,
        "mode": rep["mode"], "watermark_before": rep["watermark_before"], "watermark_after": rep["watermark_after"],
    })
    return TableOutcome(table=table.name, status="ok", replica_rows=rep["rows"], analytics_rows=ana["rows"],
                        seconds=seconds, notes=notes)


@task(task_run_name="run-{table.name}")
def run_table(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """Runs a table's subflow on this worker thread (the group's ThreadPoolTaskRunner)."""
    return table_flow(table, opts)


@flow(flow_run_name="group-{group}", validate_parameters=False)
def group_flow(group: str, tables: list[ResolvedTable], opts: RunOptions) -> list[TableOutcome]:
    """Run one priority group's tables concurrently; collect every outcome, failed or not."""
    futures = [run_table.submit(t, opts) for t in tables]
    outcomes = []
    for t, fut in zip(tables, futures):
        fut.wait()
        state = fut.state
        if state.is_completed():
            outcomes.append(fut.result())
        else:
            try:
                fut.result()
                message = state.message or "failed"
            except Exception as e:  # noqa: BLE001 - recorded, not handled
                message = f"{type(e).__name__}: {e}"
            outcomes.append(TableOutcome(table=t.name, status="failed", error=redact(message)))
    return outcomes


def _database_of(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


@flow(name="etl-pipeline", validate_parameters=True)
def etl_pipeline(
    tables: list[str] | None = None,
    full_refresh: bool = False,
    config_path: str | None = None,
    blocks: BlockNames | None = None,
    groups: list[str] | None = None,
) -> list[TableOutcome]:
    """Copy every configured table source -> replica -> analytics, priority group by priority group.

    Args:
        tables: only these tables (default: every enabled table in the config).
        full_refresh: reload the chosen tables from scratch.
        config_path: table config file (default: ETL_CONFIG or config/tables.yml).
        blocks: read credentials from these SqlAlchemyConnector blocks instead of ETL_*_URL.
        groups: only the tables of these priority groups (e.g. ["critical"]).
    """
    logger = get_run_logger()
    settings = Settings()
    cfg: PipelineConfig = load_pipeline_config(config_path or settings.config)
    chosen = cfg.resolved_tables(tables)
    if groups:
        unknown = [g for g in groups if g not in {p.name for p in cfg.priorities}]
        if unknown:
            raise ConfigError(f"priority group {unknown[0]!r} is not defined under `priorities:` in the table config")
        chosen = [t for t in chosen if t.priority in groups]
    urls = urls_from_blocks(blocks) if blocks else urls_from_settings(settings)
    run_id = str(runtime_flow_run.id or uuid.uuid4())
    workers = max((g.workers for g in cfg.priorities), default=1)

    with open_engines(urls, workers=workers) as engines:
        for role in ("source", "replica", "analytics"):
            check_reachable(getattr(engines, role), role, getattr(urls, role))
        register(run_id, engines)
        try:
            method = settings.replica_method
            if method == "auto":
                with engines.source.connect() as s, engines.replica.connect() as r:
                    method = "server" if server_identity(s).same_server(server_identity(r)) else "stream"
            opts = RunOptions(
                run_key=run_id, run_id=run_id, source_db=_database_of(urls.source),
                replica_db=_database_of(urls.replica), pg_schema=settings.analytics_schema,
                column_case=cfg.analytics.column_case, replica_method=method, full_refresh=full_refresh,
            )
            metrics = MetricsWriter(engines.analytics, run_id, urls.secrets())
            metrics.ensure_schema()
            metrics.pipeline_started(tables_total=len(chosen), full_refresh=full_refresh, replica_method=method)
            logger.info("%d tables; replica copy path: %s; analytics schema %s", len(chosen), method, opts.pg_schema)

            outcomes: list[TableOutcome] = []
            for group in cfg.groups_in_order():
                members = cfg.tables_in_group(group.name, chosen)
                if not members:
                    continue
                runner = ThreadPoolTaskRunner(max_workers=group.workers)
                outcomes.extend(group_flow.with_options(task_runner=runner)(group.name, members, opts))

            failed = [o.table for o in outcomes if o.status != "ok"]
        finally:
            unregister(run_id)
    # The engines are disposed now, so the usage counters say whether any connection outlived the run.
    usage = engines.usage()
    leaked = {role: u["still_open"] for role, u in usage.items() if u["still_open"]}
    if leaked:
        logger.warning("connections still open after the run: %s", leaked)
    with open_metrics_engine(urls.analytics, urls.analytics_connect_args) as final:
        MetricsWriter(final, run_id, urls.secrets()).pipeline_finished(
            status="failed" if failed else "ok", tables_ok=len(outcomes) - len(failed), failed=failed,
            rows_replica=sum(o.replica_rows for o in outcomes),
            rows_analytics=sum(o.analytics_rows for o in outcomes),
            connection_usage=usage,
        )
    if failed:
        details = "; ".join(f"{o.table}: {o.error}" for o in outcomes if o.status != "ok")
        raise TablesFailed(f"{len(failed)} of {len(outcomes)} tables failed: {', '.join(failed)} ({details})")
    return outcomes
