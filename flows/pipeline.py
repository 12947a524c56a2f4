"""The flows: wiring only. Ordering, concurrency and retries live here; the work is in `tasks/`.

    etl-pipeline                      parent flow: blackout guard, config, target check, engines, groups in order
      group-<name>                    one subflow per priority group, ThreadPoolTaskRunner(workers)
        run-<table>  (task)           dispatch=local: runs the table's subflow on a worker thread
          table-<table>               one flow run per table
            replicate-<table>         task, retried on transient database errors, resumes
            load-<table>              task, retried likewise
            verify-<table>            task
        dispatch-<table>  (task)      dispatch=deployment (flows/dispatch.py): a run of etl-table/table instead,
          etl-table-<table>           picked up by any worker of the pool (flow `table_entry`: opens its
            table-<table>             own engines, holds a slot of the global limit `etl-source` while
                                      it reads the source)
      model <name>, test <name> ...   after the tables: the config's `dbt:` section through prefect-dbt,
                                      one task run per dbt node (tasks/dbt_run.py; --no-dbt skips it)
      (end)                           run report artifact `etl-run-report`, metrics retention, summary line

A failing table does not stop the others. The batch and group flow runs that hold a failed table end
Failed (the other groups still run), and so does the parent, which names every failed table: one
ERROR line per table in its log, then the summary as its last line. Prefect's own failure logs
(task and flow run tracebacks) go to DEBUG, see `flows/run_logs.py`.
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from blocks.connectors import BlockNames
from config.models import PipelineConfig, ResolvedTable, load_pipeline_config
from flows.run_logs import log_failed_tables, pipeline_run_name, run_loggers
from flows.wiring import (
    api_retried, attempt, check_targets, child_without_heartbeat, collect_outcomes, finish_pipeline, outcomes_of,
    outcomes_state, probe_tables, source_slot, sync_table,
)
from tasks import notify
from tasks import run as plain
from tasks.artifacts import publish_group_report
from tasks.batches import deal_batches, light_tables, rows_to_move, split_batched
from tasks.connections import open_engines, register, unregister
from tasks.errors import retry_condition
from tasks.job import PhaseStats
from tasks.outcomes import TableOutcome, failed_outcome
from tasks.progress import Progress
from tasks.run import RunOptions
from tasks.schedule_guard import check_blackout

RETRIES = 3
RETRY_DELAYS = [2, 10, 30]


@task(task_run_name="capture-binlog", cache_policy=NO_CACHE)
def capture_binlog(opts: RunOptions, cfg: PipelineConfig) -> dict[str, str]:
    """Binlog mode: the run's one read of the source's log, before any table (tasks/run.capture_binlog)."""
    return plain.capture_binlog(opts.context(), cfg)


@task(task_run_name="replicate-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def replicate_table(table: ResolvedTable, opts: RunOptions) -> PhaseStats:
    """Source -> replica for one table; a retry resumes after the last committed chunk."""
    logger = get_run_logger()
    stats = plain.replicate_phase(opts.context(), table, attempt=attempt(),
                                  progress=Progress(table.name, "replica copy", rows_to_move(table, full_refresh=opts.full_refresh), logger))
    logger.info("%s", stats.summary(table.name, to="the replica"))
    return stats


@task(task_run_name="load-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def load_table(table: ResolvedTable, opts: RunOptions) -> PhaseStats:
    """Replica -> analytics for one table; a retry resumes after the last committed chunk."""
    logger = get_run_logger()
    stats = plain.load_phase(opts.context(), table, attempt=attempt(),
                             progress=Progress(table.name, "analytics load", rows_to_move(table, full_refresh=opts.full_refresh), logger))
    logger.info("%s", stats.summary(table.name, to="PostgreSQL"))
    return stats


@task(task_run_name="verify-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def verify_table(table: ResolvedTable, opts: RunOptions) -> float:
    return plain.verify_phase(opts.context(), table)


@flow(flow_run_name="table-{table.name}", log_prints=False, validate_parameters=False)
def table_flow(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """One table, start to finish: replica copy, analytics load, verification, metrics."""
    return process_table(table, opts)


# Small and light tables share `tables-<group>-<n>` batch flow runs: tasks/batches.py says which and how.
@flow(flow_run_name="tables-{group}-{batch_no}", log_prints=False, validate_parameters=False)
def small_tables_flow(group: str, batch_no: int, tables: list[ResolvedTable],
                      opts: RunOptions) -> list[TableOutcome] | State:
    """Several small tables, one after another, each its own `sync-<table>` task run (tasks/run.run_batch:
    their metrics rows and probes are written once for the batch); a failing table does not stop the
    others, and the batch's run then ends Failed (its outcomes are still the result the group reads)."""
    outcomes = plain.run_batch(opts.context(), tables, run_one=lambda t: api_retried(lambda: sync_table(t, opts)))
    return outcomes_state(outcomes)


@task(task_run_name="run-{group}-batch-{batch_no}", retries=2, retry_delay_seconds=3,
      retry_condition_fn=retry_condition)
def run_small_tables(group: str, batch_no: int, tables: list[ResolvedTable], opts: RunOptions) -> list[TableOutcome]:
    # The batch run is Failed when a table in it failed; its result is still every table's outcome.
    # Anything else (the batch itself crashed) is raised, and retried when transient.
    with child_without_heartbeat():
        state = small_tables_flow(group, batch_no, tables, opts, return_state=True)
    return outcomes_of(state, what=f"batch {group}-{batch_no}")


def process_table(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """One table in whichever flow runs it: tasks/run.run_table, each phase a task run with its retries."""
    phases = plain.Phases(replicate=lambda t: api_retried(lambda: replicate_table(t, opts)),
                          load=lambda t: api_retried(lambda: load_table(t, opts)),
                          verify=lambda t: api_retried(lambda: verify_table(t, opts)))
    return plain.run_table(opts.context(), table, phases=phases, source_slot=lambda: source_slot(opts))


@task(task_run_name="run-{table.name}")
def run_table(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """Runs a table's subflow on this worker thread (the group's ThreadPoolTaskRunner)."""
    with child_without_heartbeat():
        return api_retried(lambda: table_flow(table, opts))


@flow(flow_run_name="group-{group}", validate_parameters=False)
def group_flow(group: str, tables: list[ResolvedTable], opts: RunOptions, workers: int = 1,
               light: list[str] | None = None) -> list[TableOutcome] | State:
    """Run one priority group's tables concurrently; collect every outcome, failed or not.

    Tables with little to do share batch flow runs (see tasks/batches.py): small tables, and the
    tables in `light` (their last sync was incremental, so this run moves only what changed). The
    batches are at least `workers` many and balanced by estimated rows, so they run side by side.
    The group's run ends Failed when one of its tables failed, and still returns every outcome.
    """
    runner = run_table
    if opts.dispatch == "deployment":
        from flows.dispatch import dispatch_table as runner  # flows/dispatch.py runs table_flow: imported here
    tables, small = split_batched(tables, light=set(light or ()), dispatch=opts.dispatch)
    futures = [runner.submit(t, opts) for t in tables]
    batches = deal_batches(small, workers=workers)
    batch_futures = [run_small_tables.submit(group, n, b, opts) for n, b in enumerate(batches, start=1)]
    outcomes = collect_outcomes(zip(batches, batch_futures), zip(tables, futures))
    publish_group_report(group, outcomes, pipeline_run_id=opts.run_id)
    return outcomes_state(outcomes)


# The hooks tell the operator (ETL_NOTIFY_WEBHOOK) and record a run that failed before it wrote its
# pipeline row (tasks/notify.py); they never change the run's result.
@flow(name="etl-pipeline", flow_run_name=pipeline_run_name, validate_parameters=True,
      on_failure=[notify.on_run_end], on_crashed=[notify.on_run_end], on_completion=[notify.on_run_end])
def etl_pipeline(
    tables: list[str] | None = None,
    full_refresh: bool = False,
    config_path: str | None = None,
    blocks: BlockNames | None = None,
    groups: list[str] | None = None,
    metrics_keep_days: Annotated[int, Field(ge=0)] = 90,
    ignore_blackout: bool = False,
    dispatch: plain.Dispatch = "local",
    dbt: bool = True,
    source: str | None = None,
) -> list[TableOutcome]:
    """Copy every configured table source -> replica -> analytics, priority group by priority group.

    Args:
        tables: only these tables (default: every enabled table in the config).
        full_refresh: reload the chosen tables from scratch.
        config_path: table config file (default: ETL_CONFIG or config/tables.yml).
        blocks: read credentials from these SqlAlchemyConnector blocks instead of ETL_*_URL.
        groups: only the tables of these priority groups (e.g. ["critical"]).
        metrics_keep_days: delete run history (schema etl) older than this many days at the end of the run; 0 keeps all.
        ignore_blackout: start a manual run inside the ETL_BLACKOUT window anyway (never honoured for scheduled runs).
        dispatch: `local` runs the table subflows in this process; `deployment` runs each table as a run of
            the `etl-table/table` deployment, so every worker of the pool can take tables.
        dbt: run the table config's `dbt:` section after the load (False: skip it this run).
        source: the clinic of the sources file (ETL_SOURCES) to load: its URLs, analytics schema and table config.
    """
    logger = get_run_logger()
    started = time.monotonic()
    # Before anything else: inside a blackout window no database is touched.
    check_blackout(ignore_blackout=ignore_blackout, warn=logger.warning)
    settings, urls = plain.settings_and_urls(source, blocks)
    cfg: PipelineConfig = load_pipeline_config(config_path or settings.config)
    chosen = plain.select_tables(cfg, tables, groups)
    if dispatch == "deployment":
        from flows.dispatch import check_table_deployment

        check_table_deployment()
    run_id = str(runtime_flow_run.id or uuid.uuid4())
    # In-process table flows share these engines; dispatched table runs open their own.
    workers = max((g.workers for g in cfg.priorities), default=1) if dispatch == "local" else 1

    check_targets(settings, cfg, urls, source=source, blocks=blocks)  # reachable, and never production
    with open_engines(urls, workers=workers, max_source_connections=settings.max_source_queries) as engines:
        register(run_id, engines)
        try:
            method = plain.choose_replica_method(settings.replica_method, engines)
            opts = RunOptions.for_run(
                run_key=run_id, run_id=run_id, urls=urls, cfg=cfg, pg_schema=settings.analytics_schema,
                replica_method=method, full_refresh=full_refresh, dispatch=dispatch, config_path=config_path,
                blocks=blocks.model_dump() if blocks is not None else None, source=source)
            # Tables whose last sync was incremental move only what changed: they share batch flow runs.
            light = light_tables(engines, opts.replica_db, full_refresh=full_refresh, dispatch=dispatch)
            opts.context().metrics.run_started(tables_total=len(chosen), full_refresh=full_refresh, replica_method=method)
            logger.info("%d tables; replica copy path: %s; analytics schema %s; dispatch %s", len(chosen), method,
                        opts.pg_schema, dispatch)

            loggers = run_loggers(logger)
            blocked = capture_binlog(opts, cfg)  # binlog mode: once per source per run, not per table
            outcomes = [failed_outcome(t.name, blocked[t.name]) for t in chosen if t.name in blocked]
            skipped, to_run = probe_tables(opts, [t for t in chosen if t.name not in blocked])  # unchanged: no task
            outcomes.extend(skipped)
            for group in cfg.groups_in_order():
                members = [t for t in cfg.tables_in_group(group.name, chosen) if t.name in to_run]
                if not members:
                    continue
                runner = ThreadPoolTaskRunner(max_workers=group.workers)
                with child_without_heartbeat():
                    state = group_flow.with_options(task_runner=runner)(
                        group.name, members, opts, workers=group.workers,
                        light=[t.name for t in members if t.name in light], return_state=True)
                try:
                    done = outcomes_of(state, what=f"group {group.name}")
                except Exception as e:  # noqa: BLE001 - the group crashed: its tables failed, the next groups run
                    done = [failed_outcome(t.name, e) for t in members]
                outcomes.extend(done)
                log_failed_tables(done, loggers)

        finally:
            unregister(run_id)
    # The engines are disposed now: dbt, the run row, the report and the summary (flows/wiring.py).
    return finish_pipeline(engines, urls, cfg, run_id, outcomes, dbt=dbt, config_path=config_path or settings.config,
                           pg_schema=settings.analytics_schema, keep_days=metrics_keep_days, source=source,
                           seconds=time.monotonic() - started, loggers=loggers, logger=logger)
