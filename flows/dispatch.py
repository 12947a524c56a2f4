"""dispatch=deployment: each table as a run of the `etl-table/table` deployment, picked up by any worker.

    dispatch-<table>  (task)      in the group flow: starts a run of etl-table/table and waits for it
      etl-table-<table>           flow `table_entry` on a worker: its own engines, one slot of the global
        table-<table>             limit `etl-source` while it reads the source, metrics under the parent's run id

The outcome the parent returns is the one the table run recorded (tasks/outcomes.read_outcome), with
its notes as the list they were.
"""
from __future__ import annotations

import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as runtime_flow_run

from blocks.connectors import BlockNames
from config.models import ResolvedTable, load_pipeline_config
from flows.pipeline import child_without_heartbeat, table_flow
from flows.wiring import reach_databases
from tasks import run as plain
from tasks.connections import lookup, open_engines, register, unregister
from tasks.errors import ConfigError, LoadError
from tasks.metrics import MetricsWriter
from tasks.outcomes import TableOutcome, read_outcome
from tasks.run import RunOptions

# The deployment each table runs as (prefect.yaml), and the Prefect global concurrency limit a
# standalone table run holds one slot of while it reads the source (`make deploy` creates it; when
# it does not exist, Prefect logs a warning and does not limit).
TABLE_DEPLOYMENT = "etl-table/table"
SOURCE_LIMIT = "etl-source"


def source_limit_name(source: str | None) -> str:
    """The Prefect global concurrency limit of a source server: `etl-source`, or `etl-source-<clinic>` for a
    clinic of ETL_SOURCES (`make deploy` creates one per clinic), so thirty clinics never mean thirty times
    the load on one server and one clinic's tables never wait for another's."""
    return f"{SOURCE_LIMIT}-{source}" if source else SOURCE_LIMIT


def check_table_deployment() -> None:
    """dispatch=deployment needs the table deployment; say so before anything starts."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(TABLE_DEPLOYMENT)
    except ObjectNotFound:
        raise ConfigError(f"dispatch=deployment: deployment {TABLE_DEPLOYMENT!r} does not exist on this Prefect "
                          f"server; run `make deploy` (prefect.yaml) first") from None


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
    outcome, recorded_error = read_outcome(lookup(opts.run_key).analytics, opts.run_id, table.name)
    state = fr.state
    if state is not None and state.is_completed() and outcome is not None:
        return outcome
    why = recorded_error or (state.message if state else None) or "no result"
    raise LoadError(f"table run {fr.name} ({fr.id}) ended {state.type.value if state else 'without a state'}: {why}",
                    table=table.name, phase="dispatch")


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
    settings, urls = plain.settings_and_urls(source, blocks)
    cfg = load_pipeline_config(config_path or settings.config)
    [resolved] = cfg.resolved_tables([table])
    own_id = str(runtime_flow_run.id or uuid.uuid4())
    standalone = run_id is None
    run_id = run_id or own_id
    key = f"table:{own_id}"
    error: BaseException | None = None
    outcome: TableOutcome | None = None
    reach_databases(urls)
    if standalone:  # a table run of a pipeline run was checked by it (tasks/guard.py)
        from tasks.guard import check_run

        own = settings.model_copy(update={"analytics_schema": analytics_schema}) if analytics_schema else settings
        check_run(own, cfg, urls, source=source, blocks=blocks, claim=True)
    with open_engines(urls, workers=1) as engines:
        register(key, engines)
        try:
            method = plain.choose_replica_method(replica_method or settings.replica_method, engines)
            opts = RunOptions.for_run(
                run_key=key, run_id=run_id, urls=urls, cfg=cfg, pg_schema=analytics_schema or settings.analytics_schema,
                replica_method=method, full_refresh=full_refresh, source_limit=source_limit_name(source),
                source=source)
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
    plain.finish_table_run(urls, run_id, table, engines.usage(), standalone=standalone, outcome=outcome, error=error,
                           source=source)
    plain.warn_leaks(engines, logger.warning, after="the table run")
    if error is not None:
        raise error
    return outcome
