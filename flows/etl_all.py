"""The flow `etl-all`: every clinic of the sources file (ETL_SOURCES), then the union schema. Wiring only.

    etl-all                           parent: blackout guard, the sources file, clinics, union, report
      clinic-<name>  (task)           one per clinic, at most `max_sources` at once in this process
        <name>                        an `etl-pipeline` flow run with source=<name> (dispatch=local), or a
                                      run of deployment etl-pipeline/clinic on the pool (dispatch=deployment)
      (end)                           union views (tasks/union.py), artifact `etl-clinics-report`

A clinic that fails (unreachable, a table failed, bad config) fails alone: the other clinics load, its
row in the report carries one line naming it, and `etl-all` ends Failed naming every failed clinic.
"""
from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from blocks.connectors import BlockNames
from config.settings import Settings
from config.sources import SourcesFile, sources_from_settings
from flows.dispatch import source_limit_name  # noqa: F401 - re-exported
from flows.pipeline import child_without_heartbeat, etl_pipeline
from tasks.clinics import (
    ClinicResult, clinic_error, clinics_failed_message, order_results, render_clinics, union_for,
)
from tasks.errors import ConfigError, EtlError, redact
from tasks.guard import check_clinics
from tasks.reports import run_report
from tasks.schedule_guard import check_blackout
from tasks.union import render_union

# The deployment each clinic runs as with dispatch=deployment (prefect.yaml).
CLINIC_DEPLOYMENT = "etl-pipeline/clinic"
# Threads of the parent's task runner; `max_sources` (a semaphore) bounds how many clinics run at once.
MAX_THREADS = 32


class ClinicsFailed(EtlError):
    """At least one clinic failed; the message names them, `results` has every clinic's row."""

    def __init__(self, message: str, results: list[ClinicResult]):
        super().__init__(message)
        self.results = results


def _sources(settings: Settings) -> SourcesFile:
    sources = sources_from_settings(settings)
    if sources is None:
        raise ConfigError("etl-all needs a sources file: set ETL_SOURCES (see README, Many clinics)")
    return sources


def _analytics(settings: Settings, blocks: BlockNames | None) -> tuple[str, dict]:
    if blocks is None:
        return settings.url("analytics"), {}
    from blocks.connectors import load_block

    return load_block(blocks.analytics, "analytics")


def _result(name: str, run_id: str | None, state_ok: bool, message: str | None,
            analytics: tuple[str, dict]) -> ClinicResult:
    """A clinic's row from its pipeline run's metrics (or, when it wrote none, from its run state)."""
    from tasks.connections import open_metrics_engine

    run = None
    if run_id:
        try:
            with open_metrics_engine(*analytics) as engine:
                run = run_report(engine, run_id)
        except Exception:  # noqa: BLE001 - the row then says what the state says
            run = None
    ok = state_ok and (run is None or run["status"] == "ok")
    return ClinicResult(
        source=name, status="ok" if ok else "failed", run_id=run_id,
        tables_ok=(run or {}).get("tables_ok") or 0, tables_total=(run or {}).get("tables_total") or 0,
        rows_analytics=(run or {}).get("rows_analytics") or 0, failed_tables=list((run or {}).get("failed_tables") or []),
        error=None if ok else clinic_error(name, message or (run or {}).get("error") or "failed"))


@task(task_run_name="clinic-{name}", cache_policy=NO_CACHE)
def run_clinic(name: str, params: dict[str, Any], gate: Any, dispatch: str,
               analytics: tuple[str, dict]) -> ClinicResult:
    """One clinic's `etl-pipeline` run, in this process or on the pool; never raises (the clinic fails alone)."""
    with gate:
        if dispatch == "deployment":
            from prefect.deployments import run_deployment

            fr = run_deployment(CLINIC_DEPLOYMENT, parameters={**params, "source": name}, flow_run_name=name,
                                poll_interval=2, timeout=None)
            return _result(name, str(fr.id), bool(fr.state and fr.state.is_completed()),
                           fr.state.message if fr.state else "no state", analytics)
        with child_without_heartbeat():
            state = etl_pipeline.with_options(flow_run_name=name)(**params, source=name, return_state=True)
        message = None
        if not state.is_completed():
            err = state.result(raise_on_failure=False)
            message = str(err) if isinstance(err, BaseException) else state.message
        return _result(name, str(state.state_details.flow_run_id or "") or None, state.is_completed(), message,
                       analytics)


def _run_name() -> str:
    from flows.run_logs import base_run_name

    base = base_run_name()
    return base if base.startswith("etl-all") else f"etl-all-{base}"


@flow(name="etl-all", flow_run_name=_run_name, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS))
def etl_all(
    sources: list[str] | None = None,
    tables: list[str] | None = None,
    full_refresh: bool = False,
    blocks: BlockNames | None = None,
    max_sources: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 2,
    dispatch: Literal["local", "deployment"] = "local",
    table_dispatch: Literal["local", "deployment"] = "local",
    metrics_keep_days: Annotated[int, Field(ge=0)] = 90,
    ignore_blackout: bool = False,
    dbt: bool = True,
) -> list[ClinicResult]:
    """Every clinic of ETL_SOURCES (or those named), `max_sources` at once, then the union views.

    Args:
        sources: only these clinics (default: every clinic of the sources file).
        tables: only these tables in every clinic.
        full_refresh: reload the chosen tables from scratch.
        blocks: the analytics block (and, for clinics without their own, nothing else) instead of ETL_ANALYTICS_URL.
        max_sources: clinics running at once (dispatch=local: in this process; deployment: runs waiting for workers).
        dispatch: `local` runs each clinic's etl-pipeline in this process; `deployment` as runs of
            etl-pipeline/clinic, so every worker of the pool takes clinics.
        table_dispatch: the clinics' own dispatch (`deployment`: their tables as runs of etl-table/table too).
        metrics_keep_days: passed to every clinic's run.
        ignore_blackout: start a manual run inside the ETL_BLACKOUT window anyway.
        dbt: run the clinics' dbt sections after their loads.
    """
    logger = get_run_logger()
    check_blackout(ignore_blackout=ignore_blackout, warn=logger.warning)
    settings = Settings()
    file = _sources(settings)
    chosen = file.select(sources)
    params: dict[str, Any] = dict(tables=tables, full_refresh=full_refresh, metrics_keep_days=metrics_keep_days,
                                  ignore_blackout=ignore_blackout, dispatch=table_dispatch, dbt=dbt)
    if blocks is not None:
        params["blocks"] = blocks.model_dump() if dispatch == "deployment" else blocks
    logger.info("%d clinics (%s), %d at once, dispatch %s", len(chosen), ", ".join(s.name for s in chosen),
                max_sources, dispatch)
    gate = threading.BoundedSemaphore(max_sources)
    analytics = _analytics(settings, blocks)
    # A clinic whose replica is another clinic's source or replica fails alone, before it runs (tasks/guard.py).
    refused = check_clinics(settings, file, chosen, blocks=blocks)
    results = [ClinicResult(source=n, status="failed", error=clinic_error(n, e)) for n, e in refused.items()]
    chosen = [s for s in chosen if s.name not in refused]
    futures = [run_clinic.submit(s.name, params, gate, dispatch, analytics) for s in chosen]
    for s, fut in zip(chosen, futures):
        fut.wait()
        try:
            results.append(fut.result())
        except Exception as e:  # noqa: BLE001 - the task itself broke: this clinic failed
            results.append(ClinicResult(source=s.name, status="failed", error=clinic_error(s.name, e)))
    results = order_results(results)
    union_text = ""
    if file.union_schema:
        from tasks.connections import open_metrics_engine

        try:
            with open_metrics_engine(*analytics) as engine:
                union = union_for(engine, file)
            union_text = render_union(union, file.union_schema)
            for line in union_text.splitlines():
                (logger.error if "FAILED" in line else logger.info)("%s", line.strip())
        except Exception as e:  # noqa: BLE001 - the clinics' loads stand; the union is retried next run
            union_text = f"union schema {file.union_schema} not built: {redact(str(e))}"
            logger.error("%s", union_text)
    report = render_clinics(results)
    _publish(report, union_text, failed=sum(r.status != "ok" for r in results))
    for r in results:
        if r.status != "ok":
            logger.error("%s", r.error)
    logger.info("%s", report.splitlines()[-1])
    if any(r.status != "ok" for r in results):
        raise ClinicsFailed(clinics_failed_message(results), results)
    return results


def _publish(report: str, union_text: str, *, failed: int) -> None:
    """The clinics report as the markdown artifact `etl-clinics-report` of this run."""
    try:
        from prefect.artifacts import create_markdown_artifact

        body = "# etl-all: clinics\n\n```\n" + report + "\n```\n" + (f"\n```\n{union_text}\n```\n" if union_text else "")
        create_markdown_artifact(markdown=body, key="etl-clinics-report",
                                 description=f"{failed} clinic(s) failed" if failed else "every clinic ok")
    except Exception:  # noqa: BLE001 - a report must not fail the run
        get_run_logger().debug("no clinics report artifact", exc_info=True)
