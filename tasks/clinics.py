"""Many clinics, one warehouse, as plain functions: a run per clinic, the union, the clinics report.

    run_clinic(settings, source)          one clinic: its settings, table config and URLs, run_pipeline
    run_clinics(settings, sources_file)   every chosen clinic, `max_sources` at once; then the union
    union_for(engine, sources_file)       the raw_all views over every clinic's schema (tasks/union.py)
    render_clinics(results)               every clinic with its totals, failed clinics first

The flow `etl-all` (flows/etl_all.py) wraps the same steps with one `etl-pipeline` flow run per clinic.
A clinic that fails (unreachable, bad config) fails alone: its result carries one line naming it.
"""
from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.engine import Engine

from config.models import load_pipeline_config
from config.settings import Settings
from config.sources import Source, SourcesFile
from tasks.errors import redact
from tasks.reports import format_table
from tasks.union import Member, UnionView, build_union

log = logging.getLogger("etl.clinics")

ClinicStatus = Literal["ok", "failed"]


@dataclass
class ClinicResult:
    """One clinic's run: its totals, or the one line saying why it failed."""

    source: str
    status: ClinicStatus
    run_id: str | None = None
    tables_ok: int = 0
    tables_total: int = 0
    rows_analytics: int = 0
    failed_tables: list[str] = field(default_factory=list)
    error: str | None = None


def clinic_error(source: str, e: BaseException | str) -> str:
    """`clinic south: cannot reach the source database at ...`: one line, redacted."""
    text = e if isinstance(e, str) else str(e)
    return f"clinic {source}: {redact(' '.join(text.split()))}"


def run_clinic(settings: Settings, source: Source, *, tables: list[str] | None = None,
               full_refresh: bool = False) -> ClinicResult:
    """One clinic through the plain runner (tasks/run.py), its metrics rows carrying its name."""
    from blocks.connectors import urls_for_source
    from tasks.run import run_pipeline

    run_id = str(uuid.uuid4())
    try:
        own = source.settings(settings)
        cfg = load_pipeline_config(own.config)
        result = run_pipeline(own, cfg, tables=tables, full_refresh=full_refresh,
                              urls=urls_for_source(source, settings), source=source.name, run_id=run_id)
    except Exception as e:  # noqa: BLE001 - this clinic fails alone
        error = clinic_error(source.name, e)
        record_failed_run(settings, run_id, source.name, error, full_refresh=full_refresh)
        return ClinicResult(source=source.name, status="failed", run_id=run_id, error=error)
    failed = result.failed
    return ClinicResult(
        source=source.name, status="failed" if failed else "ok", run_id=result.run_id,
        tables_ok=len(result.outcomes) - len(failed), tables_total=len(result.outcomes),
        rows_analytics=sum(o.analytics_rows for o in result.outcomes), failed_tables=failed,
        error=clinic_error(source.name, f"{len(failed)} table(s) failed: {', '.join(failed)}") if failed else None)


def record_failed_run(settings: Settings, run_id: str, source: str, error: str, *, full_refresh: bool) -> None:
    """A clinic that failed before its run wrote a row (unreachable, bad config) gets one, status failed
    with its error, so `etl status` shows it (the flows' failure hook does the same, tasks/notify.py)."""
    from tasks.connections import open_metrics_engine
    from tasks.metrics import MetricsWriter
    from tasks.reports import run_report

    try:
        with open_metrics_engine(settings.url("analytics")) as engine:
            writer = MetricsWriter(engine, run_id, source=source)
            writer.ensure_schema()
            if run_report(engine, run_id) is None:
                writer.pipeline_started(tables_total=0, full_refresh=full_refresh, replica_method="")
            writer.pipeline_failed(error)
    except Exception as e:  # noqa: BLE001 - the warehouse may be what is down; the result still says it
        log.warning("clinic %s: failed run not recorded: %s", source, redact(str(e)))


def run_clinics(settings: Settings, sources: SourcesFile, *, names: list[str] | None = None,
                tables: list[str] | None = None, full_refresh: bool = False,
                max_sources: int = 2) -> tuple[list[ClinicResult], list[UnionView]]:
    """The chosen clinics, `max_sources` at a time, then the union views; results failed first."""
    from tasks.guard import check_clinics

    chosen = sources.select(names)
    # A clinic whose replica is another clinic's source or replica fails alone, before it runs.
    refused = check_clinics(settings, sources, chosen)
    results = [ClinicResult(source=n, status="failed", error=clinic_error(n, e)) for n, e in refused.items()]
    for n, e in refused.items():
        record_failed_run(settings, str(uuid.uuid4()), n, clinic_error(n, e), full_refresh=full_refresh)
    chosen = [s for s in chosen if s.name not in refused]
    with ThreadPoolExecutor(max_workers=max(1, max_sources), thread_name_prefix="etl-clinic") as pool:
        results += list(pool.map(lambda s: run_clinic(settings, s, tables=tables, full_refresh=full_refresh),
                                 chosen))
    union: list[UnionView] = []
    if sources.union_schema:
        from tasks.connections import create_engine

        engine = create_engine("analytics", settings.url("analytics"), pool_size=1)
        try:
            union = union_for(engine, sources)
        finally:
            engine.dispose()
    return order_results(results), union


def union_for(engine: Engine, sources: SourcesFile) -> list[UnionView]:
    """The union views over every clinic of the file (those not run this time keep their last tables)."""
    if not sources.union_schema:
        return []
    members = [Member(s.name, s.schema) for s in sources.sources]
    with engine.connect() as c:
        raw = c.connection.driver_connection
        try:
            return build_union(raw, sources.union_schema, members)
        finally:
            raw.rollback()


def order_results(results: list[ClinicResult]) -> list[ClinicResult]:
    return sorted(results, key=lambda r: (r.status == "ok", r.source))


def render_clinics(results: list[ClinicResult]) -> str:
    """A row per clinic with its totals, failed clinics first, and a totals line."""
    rows = [[r.source, r.status, f"{r.tables_ok}/{r.tables_total}", r.rows_analytics, r.error or ""]
            for r in order_results(results)]
    failed = [r.source for r in results if r.status != "ok"]
    total = (f"{len(results)} clinics, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
             f"tables ok {sum(r.tables_ok for r in results)}/{sum(r.tables_total for r in results)}; "
             f"rows {sum(r.rows_analytics for r in results):,}")
    return format_table(["clinic", "status", "tables ok", "rows", "error"], rows) + "\n" + total


def clinics_failed_message(results: list[ClinicResult]) -> str:
    bad = [r for r in order_results(results) if r.status != "ok"]
    return (f"{len(bad)} of {len(results)} clinics failed: {', '.join(r.source for r in bad)} ("
            + "; ".join(r.error or r.source for r in bad) + ")")
