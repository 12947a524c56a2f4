"""Before any table runs: every table of the run probed at once, and the unchanged ones recorded
as skipped in one write. Plain functions: `run_pipeline` (tasks/run.py) and the flow
(flows/pipeline.py, one `probe-tables` task run) both call `sort_out`.

A run used to find out per table, inside the table's own task runs, that there was nothing to do:
per table a metadata read of the source (five information_schema statements), a probe, a read of
the recorded probe, two metrics rows in two transactions, and in the flow a task run (or a flow
run) of its own. Here the metadata of every table is one read of the source's information_schema
(tasks/job.read_jobs), the recorded probes and the analytics tables one read each, the probes run
`ETL_MAX_SOURCE_QUERIES` at a time on the source's own pool, and the skipped tables' metrics rows
are one INSERT. The tables that do run get their probe handed over (the run book), so nothing is
read twice; a retry of a table probes again.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from config.models import ResolvedTable
from tasks import decide, probe
from tasks.errors import EtlError
from tasks.job import read_jobs
from tasks.outcomes import TableOutcome


@dataclass(frozen=True)
class AnalyticsFacts:
    """What analytics holds, read once for the run: the recorded probes and the tables that exist."""

    recorded: dict[str, dict]
    live: set[str]


def analytics_facts(cur, schema: str) -> AnalyticsFacts:  # noqa: ANN001
    cur.execute(f"SELECT table_name, probe FROM {probe.PG_TABLE} WHERE target_schema = %s", (schema,))
    recorded = {str(t): p for t, p in cur.fetchall()}
    cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s", (schema,))
    return AnalyticsFacts(recorded, {str(r[0]) for r in cur.fetchall()})


def prepare_jobs(ctx, tables: list[ResolvedTable]) -> None:  # noqa: ANN001 - a tasks.run.RunContext
    """Every table's job (tasks/job.py) from one metadata read, into the run's job cache."""
    from tasks.run import JobCache

    with ctx.engines.source.connect() as sc:
        jobs = read_jobs(sc, tables, source_db=ctx.source_db, replica_db=ctx.replica_db, pg_schema=ctx.pg_schema,
                         column_case=ctx.column_case, loaded_at_column=ctx.loaded_at_column)
        sc.rollback()
    cache = JobCache.of(ctx.engines, ctx.run_id)
    for name, job in jobs.items():
        cache.get(name, lambda job=job: job)


def sort_out(ctx, tables: list[ResolvedTable], *, workers: int) -> tuple[list[TableOutcome], list[ResolvedTable]]:  # noqa: ANN001
    """(outcomes of the tables skipped as unchanged, already recorded; the tables to run)."""
    from tasks.run import Look, probe_book

    if not tables:
        return [], []
    prepare_jobs(ctx, tables)
    book = probe_book(ctx)
    with ctx.engines.analytics.connect() as pc:
        facts = analytics_facts(pc.connection.driver_connection.cursor(), ctx.pg_schema)
        pc.rollback()

    def look(table: ResolvedTable) -> Look:
        t0 = time.monotonic()
        try:
            job = ctx.job(table)
        except EtlError:
            return Look(probe=None)  # the table's replica phase raises it where it is retried and recorded
        if not probe.probed(job):
            return Look(probe=None)
        with ctx.engines.source.connect() as sc:
            found = probe.read_probe(sc.connection.driver_connection.cursor(), job)
            sc.rollback()
        skip = decide.probe_skips(full_refresh=ctx.full_refresh, probe_same=found.same_as(facts.recorded.get(job.pg_name)),
                                  replica_live=table.name in (book.replica_tables or ()),
                                  analytics_live=job.pg_name in facts.live)
        return Look(probe=found, skip=skip, seconds=time.monotonic() - t0)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="etl-probe") as pool:
        looks = list(pool.map(look, tables))
    skipped = [(t, lk) for t, lk in zip(tables, looks) if lk.skip]
    ctx.metrics.tables_unchanged([(t.name, t.priority, lk.skip) for t, lk in skipped])
    # The tables that run forget their recorded probe first (one statement): it is recorded again after
    # the table finished (for a batch, when the batch ends), so none outlives a run stopped in between.
    stale = [ctx.job(t).pg_name for t, lk in zip(tables, looks) if not lk.skip and lk.probe is not None
             and ctx.job(t).pg_name in facts.recorded]
    if stale:
        with ctx.engines.analytics.connect() as pc:
            probe.pg_forget_many(pc.connection.driver_connection.cursor(), ctx.pg_schema, stale)
            pc.connection.driver_connection.commit()
    with book.lock:
        book.looks.update({t.name: lk for t, lk in zip(tables, looks) if not lk.skip})
    outcomes = [TableOutcome(table=t.name, status="ok", seconds=lk.seconds, notes=[lk.skip]) for t, lk in skipped]
    return outcomes, [t for t, lk in zip(tables, looks) if not lk.skip]


def probe_workers(ctx) -> int:  # noqa: ANN001
    """Probes at once: as many as the source's pool allows (ETL_MAX_SOURCE_QUERIES), at most 4."""
    try:
        return max(1, min(4, int(ctx.engines.source.pool.size())))
    except Exception:  # noqa: BLE001 - a pool without a size
        return 2
