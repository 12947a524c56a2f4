"""What people read about a run: its name, its log lines about failed tables, its summary line.

Wiring helpers for flows/pipeline.py (and flows/deployments.py), kept apart from the flows:
- `pipeline_run_name`: `nightly-2026-12-02`, `critical-manual-...`, `manual-...`, not Prefect's random names;
- `QuietEngineFailures`: Prefect's failure tracebacks to DEBUG, so each failed table is one ERROR line;
- `run_loggers`, `log_failed_tables`, `log_summary`: those lines, on the run's page and on its parent's (repair).
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import TYPE_CHECKING, Any

from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run

from tasks.errors import TablesFailed

if TYPE_CHECKING:  # flows.pipeline imports this module
    from flows.pipeline import TableOutcome

REPAIR_DEPLOYMENT = "etl-repair/repair"
# Flows whose own end-of-run line ("Finished in state ...") would come after the summary line: their
# state is the badge on the run's page, and the summary (logged just before) is the last line.
SUMMARY_FLOWS = {"etl-pipeline", "etl-repair"}


class QuietEngineFailures(logging.Filter):
    """Prefect logs each failed task and flow run at ERROR with its whole traceback: one failed table
    gave ~30 lines per run level (task, table flow, group, parent), and the line that matters was
    lost among them. Here those records go to DEBUG (the traceback is kept, under the Logs tab's
    DEBUG level); the runs log one ERROR line per failed table themselves. Dropped: the parent's
    TablesFailed (its traceback only points at the `raise`) and the end-of-run line of the parent
    flows, which would follow the summary (their state is the badge on the run's page).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.exc_info, tuple) and isinstance(record.exc_info[1], TablesFailed):
            return False  # the parent's own failure: its lines (one per table, the summary) say it all
        if record.exc_info and record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif getattr(record, "flow_name", None) in SUMMARY_FLOWS and not getattr(record, "task_run_id", None):
            text = str(record.msg)
            if text.startswith("Finished in state"):
                return False
            if text.startswith(("Running hook", "Hook ")):
                # The state hooks (tasks/notify.py) run after the flow: these engine lines would follow
                # the summary (the hook logs what it did itself, when there is anything to say).
                return False
        return True


def _install_quiet_engine_failures() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, QuietEngineFailures) for f in lg.filters):
            lg.addFilter(QuietEngineFailures())


# At import: the worker's flow-run process and `etl run` both import this module before a run starts.
_install_quiet_engine_failures()


def pipeline_run_name() -> str:
    """`_base_run_name()`, prefixed by the clinic for a run of one clinic of ETL_SOURCES (`north-manual-...`);
    a clinic's run started by `etl-all` is named by the clinic alone, in its process or as a run of the
    deployment etl-pipeline/clinic on a worker (which would otherwise be `north-clinic-manual-...`)."""
    source = (runtime_flow_run.parameters or {}).get("source")
    base = base_run_name()
    if not source:
        return base
    return source if base == "pipeline" or runtime_flow_run.parent_flow_run_id else f"{source}-{base}"


def base_run_name() -> str:
    """`nightly-2026-12-02` for a scheduled run of deployment `nightly` (the date it was scheduled for),
    `critical-manual-2026-12-02-0915` when a deployment is run by hand, `manual-2026-12-02-091512` for
    `etl run`, `<parent>-pipeline` when another flow (the repair) runs it: never Prefect's random name."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    fr = ctx.flow_run if ctx else None
    parent = runtime_flow_run.parent_flow_run_id
    deployment = runtime_deployment.name if fr is not None and fr.deployment_id else None
    when = runtime_flow_run.scheduled_start_time or dt.datetime.now(dt.timezone.utc)
    if deployment and fr is not None and fr.auto_scheduled:
        tz = _schedule_timezone(fr)
        return f"{deployment}-{when.astimezone(tz) if tz else when:%Y-%m-%d}"
    if deployment:
        return f"{deployment}-manual-{when:%Y-%m-%d-%H%M}"
    if parent:
        return "pipeline"  # the caller names it (flows/deployments.py); a bare subflow call gets this
    return f"manual-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d-%H%M%S}"


def _schedule_timezone(fr: Any) -> dt.tzinfo | None:
    """The deployment schedule's timezone: a 02:00 America/New_York run is that date's nightly, not UTC's."""
    from zoneinfo import ZoneInfo

    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            dep = client.read_deployment(fr.deployment_id)
        zones = {getattr(s.schedule, "timezone", None) for s in dep.schedules or []} - {None}
        return ZoneInfo(zones.pop()) if len(zones) == 1 else None
    except Exception:  # noqa: BLE001 - the name is a courtesy; UTC's date then
        return None


def run_loggers(logger: Any) -> list[Any]:
    """This run's logger, plus one on the run that started it as a subflow (the repair run), so the
    per-table ERROR lines and the summary are on the page of the run people opened."""
    parent = runtime_flow_run.parent_flow_run_id
    if not parent:
        return [logger]
    try:
        from prefect.client.orchestration import get_client
        from prefect.logging.loggers import flow_run_logger

        with get_client(sync_client=True) as client:
            parent_run = client.read_flow_run(uuid.UUID(str(parent)))
        return [logger, flow_run_logger(flow_run=parent_run)]
    except Exception:  # noqa: BLE001 - the lines are still in this run's log
        return [logger]


def repair_hint(table: str) -> str:
    return f'repair: deployment {REPAIR_DEPLOYMENT} with tables=["{table}"]'


def log_failed_tables(outcomes: list[TableOutcome], loggers: list[Any]) -> None:
    """One ERROR line per failed table, with its error (one line, passwords removed) and the fix."""
    for o in outcomes:
        if o.status == "ok":
            continue
        error = " ".join(str(o.error or o.status).split())
        if len(error) > 500:
            error = error[:499] + "…"
        for lg in loggers:
            lg.error("table %s failed: %s (%s)", o.table, error, repair_hint(o.table))


def summary_line(outcomes: list[TableOutcome], seconds: float) -> str:
    failed = [o.table for o in outcomes if o.status != "ok"]
    rows = sum(o.analytics_rows for o in outcomes)
    text = (f"summary: {len(outcomes) - len(failed)} of {len(outcomes)} tables ok, {len(failed)} failed"
            + (f" ({', '.join(failed)})" if failed else "")
            + f"; {rows:,} row{'' if rows == 1 else 's'} to analytics; {seconds:.1f} s")
    return text


def log_summary(outcomes: list[TableOutcome], *, seconds: float, loggers: list[Any]) -> None:
    text = summary_line(outcomes, seconds)
    for lg in loggers:
        lg.info(text)
