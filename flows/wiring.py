"""Prefect glue the flows share (flows/pipeline.py, flows/dispatch.py): child flow runs without a
heartbeat of their own, subflow states that carry table outcomes, task futures turned into outcomes,
the connection check at the start (retried), the run's probe task, and the run report artifact at
the end of a run. No table work here (that is tasks/)."""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterable, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run
from prefect.states import Failed, State

from config.models import ResolvedTable
from tasks import run as plain
from tasks.artifacts import merge_outcomes, publish_run_report, render_dbt_section, render_report
from tasks.connections import EngineUrls, check_reachable
from tasks.errors import LoadError, api_unavailable, retry_condition
from tasks.outcomes import TableOutcome, failed_outcome, failed_summary, failed_tables


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


def collect_outcomes(batches: Iterable[tuple[list[ResolvedTable], Any]],
                     tables: Iterable[tuple[ResolvedTable, Any]]) -> list[TableOutcome]:
    """Every outcome of a group's futures, batches first: a batch or table task that ended without
    outcomes (crashed, failed) gives a failed outcome per table with its message."""
    outcomes: list[TableOutcome] = []
    for b, fut in batches:
        fut.wait()
        if fut.state.is_completed():
            outcomes.extend(fut.result())
        else:
            outcomes.extend(failed_outcome(t.name, fut.state.message or "failed") for t in b)
    for t, fut in tables:
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
            outcomes.append(failed_outcome(t.name, message))
    return outcomes


def publish_report(urls: EngineUrls, run_id: str, outcomes: list[TableOutcome], usage: dict, *, keep_days: int,
                   logger, dbt_result=None, source: str | None = None) -> None:  # noqa: ANN001
    """The run row and retention (tasks/run.finish_run), then the run report artifact: on this run's
    page, and on the page of the run that started it (the repair run), if any."""
    run = plain.finish_run(urls, run_id, outcomes, usage, keep_days=keep_days, report=True, logger=logger,
                           source=source)
    markdown = render_report(run, merge_outcomes(run, outcomes), run_id=run_id, secrets=urls.secrets())
    markdown += "\n" + render_dbt_section(dbt_result)
    publish_run_report(markdown, run_id=run_id, failed=len(failed_tables(outcomes)),
                       also_on=runtime_flow_run.parent_flow_run_id)


# Reaching the databases at the start: retried like a table phase (a server restarting is back within
# seconds; a wrong password or database name is fatal at once). Read when the run starts, so tests
# can shorten the delays.
CONNECT_RETRIES = 3
CONNECT_RETRY_DELAYS = [2, 10, 30]


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


def api_retried(call: Any, *, attempts: int = 4, delay: float = 3.0) -> Any:
    """`call()` (a task or subflow call), made again when the Prefect API was unavailable (502/503/504).

    A task's own retries start once its task run exists; a 503 while the run is being created (or its
    first state set) is raised from the call itself, and a bench run lost a table to it. Calling again
    creates a new run, which is safe: every phase resumes or starts over (tasks/run.py)."""
    for n in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - classified, re-raised unless the API was unavailable
            if n == attempts or not api_unavailable(e):
                raise
            time.sleep(delay * n)
    return None


def check_targets(settings: Any, cfg: Any, urls: EngineUrls, *, source: str | None, blocks: Any) -> None:
    """The run's start: every database reachable (`reach_databases`), then never write to production:
    the replica is not the source, nor an application database; the analytics schema is ours
    (tasks/guard.py). Before open_engines creates the replica database."""
    from tasks.guard import check_run

    reach_databases(urls)
    check_run(settings, cfg, urls, source=source, blocks=blocks, claim=True)


def attempt() -> int:
    """This task run's attempt (1 for the first; outside a task run 1)."""
    try:
        return int(runtime_task_run.run_count or 1)
    except Exception:  # noqa: BLE001 - outside a task run
        return 1


def source_slot(opts: plain.RunOptions):  # noqa: ANN201
    """A slot of the global source limit (standalone table runs), else nothing."""
    if not opts.source_limit:
        return nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(opts.source_limit, occupy=1)


@task(task_run_name="probe-tables", cache_policy=NO_CACHE)
def probe_tables(opts: plain.RunOptions, tables: list[ResolvedTable]) -> tuple[list[TableOutcome], list[str]]:
    """Every table probed before any table task exists (tasks/skips.py): the unchanged ones get no task
    run, one metrics write for all of them and a line here; returns (their outcomes, the tables to run)."""
    from prefect import get_run_logger

    from tasks import skips

    ctx = opts.context()
    skipped, rest = skips.sort_out(ctx, tables, workers=skips.probe_workers(ctx))
    if skipped:
        get_run_logger().info("%d of %d tables unchanged since their last run (skipped): %s", len(skipped),
                              len(tables), ", ".join(o.table for o in skipped))
    return skipped, [t.name for t in rest]


@task(task_run_name="sync-{table.name}", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_condition)
def sync_table(table: ResolvedTable, opts: plain.RunOptions) -> TableOutcome:
    """A batch member (a small table, or one last synced incrementally) in one task run: its replica
    copy, analytics load and count check (tasks/run.run_table). Three task runs cost more than such a
    table's work; a retry runs the table again, each phase resuming after what it committed."""
    ctx = opts.context()
    return plain.run_table(ctx, table, phases=plain.Phases.plain(ctx, attempt=attempt()))


def finish_pipeline(engines: Any, urls: EngineUrls, cfg: Any, run_id: str, outcomes: list[TableOutcome], *,
                    dbt: bool, config_path: str, pg_schema: str, keep_days: int, source: str | None, seconds: float,
                    loggers: Any, logger: Any) -> list[TableOutcome]:
    """The end of `etl_pipeline`, after its engines are disposed: the leak warning, dbt (a long build
    holds no source or replica connection), the run row and report (published also when tables
    failed), the summary as the log's last line, then the run failed when a table or dbt failed."""
    from flows.run_logs import log_summary
    from tasks.dbt_run import run_dbt_after_load
    from tasks.errors import DbtFailed, TablesFailed
    from tasks.outcomes import failure_details

    usage = engines.usage()  # the counters say whether any connection outlived the run
    plain.warn_leaks(engines, logger.warning)
    failed = failed_tables(outcomes)
    dbt_result = run_dbt_after_load(cfg.dbt, enabled=dbt, failed_tables=failed, run_id=run_id, urls=urls,
                                    config_path=config_path, pg_schema=pg_schema, logger=logger)
    publish_report(urls, run_id, outcomes, usage, keep_days=keep_days, logger=logger, dbt_result=dbt_result,
                   source=source)
    log_summary(outcomes, seconds=seconds, loggers=loggers)  # keep it last: anything logged after it hides it
    if failed:
        raise TablesFailed(f"{failed_summary(outcomes)} ({failure_details(outcomes)})")
    if dbt_result is not None and dbt_result.status == "failed":
        raise DbtFailed(dbt_result.summary())
    return outcomes
