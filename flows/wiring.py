"""Prefect glue the flows share (flows/pipeline.py, flows/dispatch.py): child flow runs without a
heartbeat of their own, subflow states that carry table outcomes, task futures turned into outcomes,
and the run report artifact at the end of a run. No table work here (that is tasks/)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Failed, State

from config.models import ResolvedTable
from tasks import run as plain
from tasks.artifacts import merge_outcomes, publish_run_report, render_dbt_section, render_report
from tasks.connections import EngineUrls
from tasks.errors import LoadError
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
