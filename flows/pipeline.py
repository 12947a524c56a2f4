"""The flows: wiring only. Ordering, concurrency and retries live here; the work is in `tasks/`.

    etl-pipeline                      parent flow: blackout guard, config, engines, groups in priority order
      group-<name>                    one subflow per priority group, ThreadPoolTaskRunner(workers)
        run-<table>  (task)           dispatch=local: runs the table's subflow on a worker thread
          table-<table>               one flow run per table
            replicate-<table>         task, retried on transient database errors, resumes
            load-<table>              task, retried likewise
            verify-<table>            task
        dispatch-<table>  (task)      dispatch=deployment: a run of deployment etl-table/table instead,
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

import math
import time
import uuid
from contextlib import contextmanager, nullcontext
from typing import Annotated, Any, Iterator, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from blocks.connectors import BlockNames, urls_from_blocks, urls_from_settings
from config.models import ColumnCase, PipelineConfig, ResolvedTable, load_pipeline_config
from config.settings import Settings
from flows.run_logs import log_failed_tables, log_summary, pipeline_run_name, run_loggers
from tasks import notify
from tasks import run as plain
from tasks.connections import (
    Engines, EngineUrls, check_reachable, lookup, open_engines, open_metrics_engine, register, unregister,
)
from tasks.artifacts import merge_outcomes, publish_group_report, publish_run_report, render_dbt_section, render_report
from tasks.dbt_run import run_dbt_after_load
from tasks.errors import ConfigError, DbtFailed, LoadError, TablesFailed, redact, retry_condition
from tasks.job import PhaseStats
from tasks.metrics import MetricsWriter
from tasks.progress import Progress
from tasks.reports import run_report
from tasks.schedule_guard import check_blackout
from tasks.state import mysql_incremental_tables

RETRIES = 3
RETRY_DELAYS = [2, 10, 30]
# Reaching the databases at the start follows the same policy (a server restarting is back within
# seconds; a wrong password or database name is fatal at once). Read when the run starts, so tests
# can shorten the delays.
CONNECT_RETRIES = RETRIES
CONNECT_RETRY_DELAYS = RETRY_DELAYS
# dispatch=deployment: the deployment each table runs as (prefect.yaml), and the Prefect global
# concurrency limit a standalone table run holds one slot of while it reads the source
# (`make deploy` creates it; when it does not exist, Prefect logs a warning and does not limit).
TABLE_DEPLOYMENT = "etl-table/table"
SOURCE_LIMIT = "etl-source"


def source_limit_name(source: str | None) -> str:
    """The Prefect global concurrency limit of a source server: `etl-source`, or `etl-source-<clinic>` for a
    clinic of ETL_SOURCES (`make deploy` creates one per clinic), so thirty clinics never mean thirty times
    the load on one server and one clinic's tables never wait for another's."""
    return f"{SOURCE_LIMIT}-{source}" if source else SOURCE_LIMIT


def _settings_and_urls(source: str | None, blocks: BlockNames | None) -> tuple[Settings, EngineUrls]:
    """The run's settings and URLs: the environment's, or (`source`) those of that clinic of ETL_SOURCES."""
    settings = Settings()
    if source is None:
        return settings, urls_from_blocks(blocks) if blocks else urls_from_settings(settings)
    from blocks.connectors import urls_for_source
    from config.sources import sources_from_settings

    sources = sources_from_settings(settings)
    if sources is None:
        raise ConfigError(f"source {source!r} given but ETL_SOURCES is not set on this machine (the worker's "
                          f"environment needs it too)")
    clinic = sources.get(source)
    return clinic.settings(settings), urls_for_source(clinic, settings, blocks)


@contextmanager
def child_without_heartbeat() -> Iterator[None]:
    """Run a child flow (a group, a batch, a table) without a heartbeat thread of its own.

    Prefect joins a flow run's heartbeat thread when the run ends, and the thread sleeps in 1 s steps:
    each child flow run cost ~1 s at its end (1.22 s against 0.23 s measured for a trivial subflow),
    more than a small table's work. The parent flow keeps its heartbeat, which is what tells the server
    that this process is alive; the children run inside it, in the same process.
    """
    import prefect.context
    from prefect.settings import get_current_settings

    ctx = prefect.context.get_settings_context()
    quiet = get_current_settings().copy_with_update(updates={"flows.heartbeat_frequency": None})
    with prefect.context.SettingsContext(profile=ctx.profile, settings=quiet):
        yield


class RunOptions(BaseModel):
    """Everything a table subflow needs besides its table; plain data so Prefect can record it."""

    run_key: str = Field(description="Key of this run's engines in the process registry.")
    run_id: str = Field(description="Pipeline run id (the Prefect flow run id) used in metrics.")
    source_db: str = Field(description="Source database name.")
    replica_db: str = Field(description="Replica database name.")
    pg_schema: str = Field(description="Analytics schema.")
    column_case: ColumnCase = Field(description="`lower` or `preserve` (analytics.column_case).")
    replica_method: plain.ReplicaMethod = Field(description="`server` (INSERT..SELECT) or `stream` (LOAD DATA).")
    full_refresh: bool = Field(default=False, description="Reload from scratch.")
    dispatch: Literal["local", "deployment"] = Field(
        default="local", description="`local` (subflows in this process) or `deployment` (runs of etl-table/table).")
    source_limit: str | None = Field(default=None, description="Global concurrency limit held while reading the source.")
    config_path: str | None = Field(default=None, description="Table config path passed on to dispatched table runs.")
    blocks: dict | None = Field(default=None, description="Connector block names passed on to dispatched table runs.")
    loaded_at_column: str | None = Field(default="_etl_loaded_at", description="Load-time column of analytics tables.")
    source: str | None = Field(default=None, description="The clinic (ETL_SOURCES) this run loads; None: the one source.")


# What happened to one table: the plain runner's dataclass (tasks/run.py), returned by the flows too.
TableOutcome = plain.TableOutcome


# NO_CACHE: the task's input holds the URLs (and their passwords); nothing may hash or keep it.
@task(task_run_name="check-connections", cache_policy=NO_CACHE)
def check_connections(urls: EngineUrls) -> None:
    """Log in to source, replica and analytics, in that order, before anything is created or written."""
    for role in ("source", "replica", "analytics"):
        check_reachable(role, getattr(urls, role), getattr(urls, f"{role}_connect_args"))


def reach_databases(urls: EngineUrls) -> None:
    """`check_connections`, retried per the policy while the reason is transient.

    When it gives up the run fails here: no replica database, no schema, no metrics row was
    written (the analytics database may be the one that is down, so the failure is recorded only
    where it always can be: the Prefect run state and logs, and the CLI's exit status).
    """
    check = check_connections.with_options(retries=CONNECT_RETRIES, retry_delay_seconds=CONNECT_RETRY_DELAYS,
                                           retry_condition_fn=retry_condition)
    try:
        check(urls)
    except LoadError as e:
        if not e.retriable:
            raise
        raise LoadError(f"{e} (gave up after {CONNECT_RETRIES + 1} attempts)", table=e.table, phase=e.phase,
                        retriable=True) from None


def context(opts: RunOptions) -> plain.RunContext:
    """The plain runner's view of this run (tasks/run.py), with the engines registered for it."""
    return plain.RunContext(
        engines=lookup(opts.run_key), run_id=opts.run_id, source_db=opts.source_db, replica_db=opts.replica_db,
        pg_schema=opts.pg_schema, column_case=opts.column_case, replica_method=opts.replica_method,
        full_refresh=opts.full_refresh, loaded_at_column=opts.loaded_at_column, source=opts.source)


@task(task_run_name="capture-binlog", cache_policy=NO_CACHE)
def capture_binlog(opts: RunOptions, cfg: PipelineConfig) -> dict[str, str]:
    """Binlog mode: the run's one read of the source's log, before any table (tasks/run.capture_binlog)."""
    return plain.capture_binlog(context(opts), cfg)


def _attempt() -> int:
    try:
        return int(runtime_task_run.run_count or 1)
    except Exception:  # noqa: BLE001 - outside a task run
        return 1


def _rows_to_move(table: ResolvedTable, opts: RunOptions) -> int:
    """What a progress line counts against: the table's size for a full copy; nothing for an
    incremental window (the table's size says nothing about how much changed)."""
    # checksum mode (like incremental) moves only what differs
    return 0 if table.mode in ("incremental", "checksum") and not opts.full_refresh else (table.estimated_rows or 0)


@task(task_run_name="replicate-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def replicate_table(table: ResolvedTable, opts: RunOptions) -> PhaseStats:
    """Source -> replica for one table; a retry resumes after the last committed chunk."""
    logger = get_run_logger()
    stats = plain.replicate_phase(context(opts), table, attempt=_attempt(),
                                  progress=Progress(table.name, "replica copy", _rows_to_move(table, opts), logger))
    logger.info("%s: %s row%s to the replica in %.2fs (%s, %d chunks)", table.name, f"{stats.rows:,}",
                "" if stats.rows == 1 else "s", stats.seconds, stats.method, stats.chunks)
    return stats


@task(task_run_name="load-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def load_table(table: ResolvedTable, opts: RunOptions) -> PhaseStats:
    """Replica -> analytics for one table; a retry resumes after the last committed chunk."""
    logger = get_run_logger()
    stats = plain.load_phase(context(opts), table, attempt=_attempt(),
                             progress=Progress(table.name, "analytics load", _rows_to_move(table, opts), logger))
    logger.info("%s: %s row%s to PostgreSQL in %.2fs (%d chunks, %.0f rows/s)", table.name, f"{stats.rows:,}",
                "" if stats.rows == 1 else "s", stats.seconds, stats.chunks, stats.rows_per_second)
    return stats


@task(task_run_name="verify-{table.name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_condition)
def verify_table(table: ResolvedTable, opts: RunOptions) -> float:
    return plain.verify_phase(context(opts), table)


@flow(flow_run_name="table-{table.name}", log_prints=False, validate_parameters=False)
def table_flow(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """One table, start to finish: replica copy, analytics load, verification, metrics."""
    return process_table(table, opts)


# A flow run costs about a second of orchestration here (API round trips and the end-of-run
# bookkeeping), more than copying a table of a few hundred rows. Tables this small therefore share
# one `tables-<group>-<n>` flow run per batch: each still has its own replicate/load/verify task
# runs (with the same retries) and its own metrics row. 400 tables of 10 rows went from ~1.6 s to
# a fraction of that per table (see README, Performance).
SMALL_TABLE_ROWS = 1000
SMALL_TABLE_BATCH = 25


@flow(flow_run_name="tables-{group}-{batch_no}", log_prints=False, validate_parameters=False)
def small_tables_flow(group: str, batch_no: int, tables: list[ResolvedTable],
                      opts: RunOptions) -> list[TableOutcome] | State:
    """Several small tables, one after another; a failing table does not stop the others, and the
    batch's run then ends Failed (its outcomes are still the result the group reads)."""
    outcomes = []
    for t in tables:
        try:
            outcomes.append(process_table(t, opts))
        except Exception as e:  # noqa: BLE001 - recorded per table, like a failed table subflow
            outcomes.append(failed_outcome(t.name, e))
    return outcomes_state(outcomes)


@task(task_run_name="run-{group}-batch-{batch_no}", retries=2, retry_delay_seconds=3,
      retry_condition_fn=retry_condition)
def run_small_tables(group: str, batch_no: int, tables: list[ResolvedTable], opts: RunOptions) -> list[TableOutcome]:
    # The batch run is Failed when a table in it failed; its result is still every table's outcome.
    # Anything else (the batch itself crashed) is raised, and retried when transient.
    with child_without_heartbeat():
        state = small_tables_flow(group, batch_no, tables, opts, return_state=True)
    return outcomes_of(state,
                       what=f"batch {group}-{batch_no}")


failed_outcome = plain.failed_outcome


def failed_summary(outcomes: list[TableOutcome]) -> str:
    failed = [o.table for o in outcomes if o.status != "ok"]
    return f"{len(failed)} of {len(outcomes)} tables failed: {', '.join(failed)}"


def outcomes_state(outcomes: list[TableOutcome]) -> list[TableOutcome] | State:
    """A subflow's return value: its outcomes, as a Failed state (still carrying them) when a table
    failed, so the run that holds the failed table is red on the run graph and in the runs list."""
    if any(o.status != "ok" for o in outcomes):
        return Failed(message=failed_summary(outcomes), data=outcomes)
    return outcomes


def outcomes_of(state: State, *, what: str) -> list[TableOutcome]:
    """The outcomes a subflow's final state carries (see `outcomes_state`); raises what a crashed one raised."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, list):
        raise LoadError(f"{what} ended {state.type.value} without table outcomes: {state.message}", table=what,
                        phase="orchestration")
    return result


def process_table(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """The work of one table inside whichever flow runs it (its own, or a small-tables batch): the plain
    runner's lifecycle (tasks/run.py), each phase a task run with its retries."""
    phases = plain.Phases(replicate=lambda t: replicate_table(t, opts), load=lambda t: load_table(t, opts),
                          verify=lambda t: verify_table(t, opts))
    return plain.run_table(context(opts), table, phases=phases, source_slot=lambda: _source_slot(opts))


def _source_slot(opts: RunOptions):  # noqa: ANN202
    """A slot of the global source limit (standalone table runs), else nothing."""
    if not opts.source_limit:
        return nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(opts.source_limit, occupy=1)


@task(task_run_name="run-{table.name}")
def run_table(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """Runs a table's subflow on this worker thread (the group's ThreadPoolTaskRunner)."""
    with child_without_heartbeat():
        return table_flow(table, opts)


def _table_row(opts: RunOptions, table: str) -> dict | None:
    engines = lookup(opts.run_key)
    run = run_report(engines.analytics, opts.run_id)
    return next((t for t in (run or {}).get("tables", []) if t["table_name"] == table), None)


@task(task_run_name="dispatch-{table.name}")
def dispatch_table(table: ResolvedTable, opts: RunOptions) -> TableOutcome:
    """Runs the table as a run of the table deployment (any worker of the pool) and waits for it.

    The outcome is read back from etl.table_runs, which the table run writes under this run's id.
    """
    from prefect.deployments import run_deployment

    params: dict[str, Any] = {"table": table.name, "run_id": opts.run_id, "full_refresh": opts.full_refresh,
                              "replica_method": opts.replica_method, "analytics_schema": opts.pg_schema}
    if opts.config_path:
        params["config_path"] = opts.config_path
    if opts.blocks:
        params["blocks"] = opts.blocks
    if opts.source:
        params["source"] = opts.source
    fr = run_deployment(TABLE_DEPLOYMENT, parameters=params, flow_run_name=f"etl-table-{table.name}",
                        poll_interval=1, timeout=None)
    row = _table_row(opts, table.name)
    state = fr.state
    if state is not None and state.is_completed() and row and row["status"] == "ok":
        secs = ((row["ended_at"] - row["started_at"]).total_seconds()
                if row.get("ended_at") and row.get("started_at") else 0.0)
        return TableOutcome(table=table.name, status="ok", replica_rows=row["replica_rows"] or 0,
                            analytics_rows=row["analytics_rows"] or 0, seconds=secs,
                            notes=[n for n in (row.get("notes") or "").split("; ") if n])
    why = (row or {}).get("error") or (state.message if state else None) or "no result"
    raise LoadError(f"table run {fr.name} ({fr.id}) ended {state.type.value if state else 'without a state'}: {why}",
                    table=table.name, phase="dispatch")


@flow(flow_run_name="group-{group}", validate_parameters=False)
def group_flow(group: str, tables: list[ResolvedTable], opts: RunOptions, workers: int = 1,
               light: list[str] | None = None) -> list[TableOutcome] | State:
    """Run one priority group's tables concurrently; collect every outcome, failed or not.

    Tables with little to do share batch flow runs (see SMALL_TABLE_ROWS): small tables, and the
    tables in `light` (their last sync was incremental, so this run moves only what changed). The
    batches are at least `workers` many and balanced by estimated rows, so they run side by side.
    The group's run ends Failed when one of its tables failed, and still returns every outcome.
    """
    runner = dispatch_table if opts.dispatch == "deployment" else run_table
    # Largest first: a big table started last would leave the other workers idle at the end.
    tables = sorted(tables, key=lambda t: -(t.estimated_rows or 0))
    small: list[ResolvedTable] = []
    if opts.dispatch != "deployment":
        light_names = set(light or ())
        small = [t for t in tables if t.name in light_names
                 or (t.estimated_rows is not None and t.estimated_rows <= SMALL_TABLE_ROWS)]
        tables = [t for t in tables if t not in small]
    futures = [runner.submit(t, opts) for t in tables]
    batches = deal_batches(small, workers=workers)
    batch_futures = [run_small_tables.submit(group, n, b, opts) for n, b in enumerate(batches, start=1)]
    outcomes = []
    for b, fut in zip(batches, batch_futures):
        fut.wait()
        if fut.state.is_completed():
            outcomes.extend(fut.result())
        else:
            message = fut.state.message or "failed"
            outcomes.extend(TableOutcome(table=t.name, status="failed", error=redact(message)) for t in b)
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
    publish_group_report(group, outcomes, pipeline_run_id=opts.run_id)
    return outcomes_state(outcomes)


def deal_batches(tables: list[ResolvedTable], *, workers: int) -> list[list[ResolvedTable]]:
    """At most SMALL_TABLE_BATCH tables per batch and at least `workers` batches (when there are that
    many tables). Largest first, each table goes to the batch with the fewest estimated rows so far,
    so one big table does not hold a queue of small ones behind it."""
    if not tables:
        return []
    n = min(len(tables), max(math.ceil(len(tables) / SMALL_TABLE_BATCH), workers))
    batches: list[list[ResolvedTable]] = [[] for _ in range(n)]
    rows = [0] * n
    for t in sorted(tables, key=lambda t: -(t.estimated_rows or 0)):
        i = min((j for j in range(n) if len(batches[j]) < SMALL_TABLE_BATCH), key=lambda j: (rows[j], len(batches[j])))
        batches[i].append(t)
        rows[i] += (t.estimated_rows or 0) + 1
    return batches


def _incremental_tables(engines: Engines, replica_db: str) -> set[str]:
    with engines.replica.connect() as rc:
        return mysql_incremental_tables(rc.connection.driver_connection.cursor(), replica_db)


def _replica_method(settings: Settings, engines: Engines, requested: str | None = None) -> str:
    return plain.choose_replica_method(requested or settings.replica_method, engines)


def _check_table_deployment() -> None:
    """dispatch=deployment needs the table deployment; say so before anything starts."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(TABLE_DEPLOYMENT)
    except ObjectNotFound:
        raise ConfigError(f"dispatch=deployment: deployment {TABLE_DEPLOYMENT!r} does not exist on this Prefect "
                          f"server; run `make deploy` (prefect.yaml) first") from None


def _finish(urls, run_id: str, outcomes: list[TableOutcome], failed: list[str], usage: dict, *,  # noqa: ANN001
            keep_days: int, logger: Any, dbt_result: Any = None, source: str | None = None) -> None:
    """End-of-run bookkeeping on a fresh connection: the run row, retention, the run report artifact."""
    secrets = urls.secrets()
    with open_metrics_engine(urls.analytics, urls.analytics_connect_args) as final:
        writer = MetricsWriter(final, run_id, secrets, source=source)
        writer.pipeline_finished(
            status="failed" if failed else "ok", tables_ok=len(outcomes) - len(failed), failed=failed,
            rows_replica=sum(o.replica_rows for o in outcomes),
            rows_analytics=sum(o.analytics_rows for o in outcomes),
            connection_usage=usage,
        )
        if keep_days > 0:
            try:
                removed = writer.cleanup_old_metrics(keep_days)
                if removed:
                    logger.info("metrics retention: removed %d pipeline runs older than %d days", removed, keep_days)
            except Exception as e:  # noqa: BLE001 - history cleanup must not fail a run that loaded its tables
                logger.warning("metrics retention failed: %s", redact(str(e), secrets))
        try:
            run = run_report(final, run_id)
        except Exception as e:  # noqa: BLE001 - the report then says what the outcomes say
            logger.warning("could not read the run's table rows for the report: %s", redact(str(e), secrets))
            run = None
    markdown = render_report(run, merge_outcomes(run, outcomes), run_id=run_id, secrets=secrets)
    markdown += "\n" + render_dbt_section(dbt_result)
    # On this run's page, and on the page of the run that started it (the repair run), if any.
    publish_run_report(markdown, run_id=run_id, failed=len(failed), also_on=runtime_flow_run.parent_flow_run_id)


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
    dispatch: Literal["local", "deployment"] = "local",
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
    settings, urls = _settings_and_urls(source, blocks)
    cfg: PipelineConfig = load_pipeline_config(config_path or settings.config)
    chosen = plain.select_tables(cfg, tables, groups)
    if dispatch == "deployment":
        _check_table_deployment()
    run_id = str(runtime_flow_run.id or uuid.uuid4())
    # In-process table flows share these engines; dispatched table runs open their own.
    workers = max((g.workers for g in cfg.priorities), default=1) if dispatch == "local" else 1

    reach_databases(urls)
    with open_engines(urls, workers=workers, max_source_connections=settings.max_source_queries) as engines:
        register(run_id, engines)
        try:
            method = _replica_method(settings, engines)
            opts = RunOptions(
                run_key=run_id, run_id=run_id, source_db=plain.database_of(urls.source),
                replica_db=plain.database_of(urls.replica), pg_schema=settings.analytics_schema,
                column_case=cfg.analytics.column_case, replica_method=method, full_refresh=full_refresh,
                dispatch=dispatch, config_path=config_path,
                blocks=blocks.model_dump() if blocks is not None else None,
                loaded_at_column=cfg.analytics.loaded_at_column, source=source,
            )
            # Tables whose last sync was incremental move only what changed: they share batch flow runs
            # instead of paying a flow run each (the orchestration, not the copy, dominates them).
            light = set() if full_refresh or dispatch == "deployment" else _incremental_tables(engines, opts.replica_db)
            metrics = MetricsWriter(engines.analytics, run_id, urls.secrets(), source=source)
            metrics.ensure_schema()
            metrics.pipeline_started(tables_total=len(chosen), full_refresh=full_refresh, replica_method=method)
            logger.info("%d tables; replica copy path: %s; analytics schema %s; dispatch %s", len(chosen), method,
                        opts.pg_schema, dispatch)

            outcomes: list[TableOutcome] = []
            loggers = run_loggers(logger)
            blocked = capture_binlog(opts, cfg)  # binlog mode: once per source per run, not per table
            outcomes.extend(failed_outcome(t.name, blocked[t.name]) for t in chosen if t.name in blocked)
            for group in cfg.groups_in_order():
                members = [t for t in cfg.tables_in_group(group.name, chosen) if t.name not in blocked]
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

            failed = [o.table for o in outcomes if o.status != "ok"]
        finally:
            unregister(run_id)
    # The engines are disposed now, so the usage counters say whether any connection outlived the run.
    usage = engines.usage()
    leaked = plain.leaked_connections(engines)
    if leaked:
        logger.warning("connections still open after the run: %s", leaked)
    # After the engines are gone: a long dbt build holds no source or replica connection.
    dbt_result = run_dbt_after_load(cfg.dbt, enabled=dbt, failed_tables=failed, run_id=run_id, urls=urls,
                                    config_path=config_path or settings.config, pg_schema=settings.analytics_schema,
                                    logger=logger)
    # Published also when tables failed, before the run is failed below.
    _finish(urls, run_id, outcomes, failed, usage, keep_days=metrics_keep_days, logger=logger, dbt_result=dbt_result,
            source=source)
    # The last line of the run's log (keep it last: anything logged after it hides it).
    log_summary(outcomes, seconds=time.monotonic() - started, loggers=loggers)
    if failed:
        details = "; ".join(f"{o.table}: {o.error}" for o in outcomes if o.status != "ok")
        raise TablesFailed(f"{len(failed)} of {len(outcomes)} tables failed: {', '.join(failed)} ({details})")
    if dbt_result is not None and dbt_result.status == "failed":
        raise DbtFailed(dbt_result.summary())
    return outcomes


def _entry_run_name() -> str:
    return f"etl-table-{(runtime_flow_run.parameters or {}).get('table', '?')}"


@flow(name="etl-table", flow_run_name=_entry_run_name, validate_parameters=True)
def table_entry(
    table: str,
    run_id: str | None = None,
    full_refresh: bool = False,
    blocks: BlockNames | None = None,
    config_path: str | None = None,
    replica_method: Literal["server", "stream"] | None = None,
    analytics_schema: str | None = None,
    source: str | None = None,
) -> TableOutcome:
    """One table as a flow of its own, for a worker: `etl-pipeline` with dispatch=deployment starts these.

    It opens its own engines (the engine registry is per process), holds one slot of the global
    concurrency limit `etl-source` while it reads the source, and writes its metrics under `run_id`
    (the parent pipeline run), so `etl status` and the run report show the table with the others.

    Args:
        table: the table, as named in the table config.
        run_id: the pipeline run this table belongs to; empty when started on its own (then it is a run of one table).
        full_refresh: reload the table from scratch.
        blocks: read credentials from these SqlAlchemyConnector blocks instead of ETL_*_URL.
        config_path: table config file (default: ETL_CONFIG or config/tables.yml of the worker).
        replica_method: the replica copy path the parent chose (default: ETL_REPLICA_METHOD).
        analytics_schema: the analytics schema (default: ETL_ANALYTICS_SCHEMA of the worker).
        source: the clinic (ETL_SOURCES) of the table; its slot is one of the limit `etl-source-<clinic>`.
    """
    logger = get_run_logger()
    settings, urls = _settings_and_urls(source, blocks)
    cfg = load_pipeline_config(config_path or settings.config)
    [resolved] = cfg.resolved_tables([table])
    own_id = str(runtime_flow_run.id or uuid.uuid4())
    standalone = run_id is None
    run_id = run_id or own_id
    key = f"table:{own_id}"
    error: BaseException | None = None
    outcome: TableOutcome | None = None
    reach_databases(urls)
    with open_engines(urls, workers=1) as engines:
        register(key, engines)
        try:
            method = _replica_method(settings, engines, replica_method)
            opts = RunOptions(
                run_key=key, run_id=run_id, source_db=plain.database_of(urls.source), replica_db=plain.database_of(urls.replica),
                pg_schema=analytics_schema or settings.analytics_schema, column_case=cfg.analytics.column_case,
                replica_method=method, full_refresh=full_refresh, source_limit=source_limit_name(source),
                loaded_at_column=cfg.analytics.loaded_at_column, source=source,
            )
            metrics = MetricsWriter(engines.analytics, run_id, urls.secrets(), source=source)
            metrics.ensure_schema()
            if standalone:
                metrics.pipeline_started(tables_total=1, full_refresh=full_refresh, replica_method=method)
            try:
                with child_without_heartbeat():
                    outcome = table_flow(resolved, opts)
            except Exception as e:  # noqa: BLE001 - recorded below, then re-raised
                error = e
        finally:
            unregister(key)
    usage = engines.usage()
    with open_metrics_engine(urls.analytics, urls.analytics_connect_args) as final:
        writer = MetricsWriter(final, run_id, urls.secrets(), source=source)
        writer.table_connection_usage(table, usage)
        if standalone:
            writer.pipeline_finished(
                status="failed" if error else "ok", tables_ok=0 if error else 1, failed=[table] if error else [],
                rows_replica=outcome.replica_rows if outcome else 0,
                rows_analytics=outcome.analytics_rows if outcome else 0, connection_usage=usage)
    leaked = plain.leaked_connections(engines)
    if leaked:
        logger.warning("connections still open after the table run: %s", leaked)
    if error is not None:
        raise error
    return outcome
