"""The run report every pipeline run publishes as a Prefect markdown artifact (key `etl-run-report`).

It is built from the run's rows in `etl.table_runs` (so it also covers tables that ran on other
workers), completed with the in-memory outcomes of tables that never reached the metrics. Failed
tables come first, with their (redacted) error; then every table with rows, seconds and rows/s; then
the totals and the slowest tables. In the UI: the run's Artifacts tab, or Artifacts > etl-run-report
for the history of every run.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterable

from tasks.errors import redact

log = logging.getLogger("etl.artifacts")

ARTIFACT_KEY = "etl-run-report"
GROUP_ARTIFACT_KEY = "etl-group-report"
REPAIR_DEPLOYMENT = "etl-repair/repair"
SLOWEST = 5


def _md(text: Any, limit: int = 300) -> str:
    """A value as one markdown table cell: no newlines, no bare pipes, bounded length."""
    if text is None:
        return ""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("|", "\\|")


_MD_PUNCTUATION = "\\`*_[]<>~"


def _md_text(text: Any, limit: int) -> str:
    """Free text as one markdown paragraph, shown as written (markup characters escaped), bounded."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    # `*` and `_` are left as they are: a redacted URL reads `etl:***@db` (no closing run follows it),
    # and identifiers are full of underscores (intraword, so no emphasis).
    return "".join("\\" + ch if ch in "\\`[]<>~|#" else ch for ch in s)


def _code(name: Any) -> str:
    """A table name inside `code` in the report: a backtick would end the code span."""
    return str(name).replace("`", "'")


def _md_name(name: Any) -> str:
    """A table name as one markdown cell, shown exactly: a backtick or `*` in it is text, not markup."""
    return _md("".join("\\" + ch if ch in _MD_PUNCTUATION else ch for ch in str(name)), limit=1000)


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:,}"


def table_seconds(t: dict) -> float | None:
    """Wall time of one table (start to end of its flow), else the sum of its phases."""
    if isinstance(t.get("started_at"), dt.datetime) and isinstance(t.get("ended_at"), dt.datetime):
        return max(0.0, (t["ended_at"] - t["started_at"]).total_seconds())
    parts = [t.get(k) for k in ("replica_seconds", "analytics_seconds", "verify_seconds")]
    return sum(p for p in parts if p) if any(parts) else None


def merge_outcomes(run: dict | None, outcomes: Iterable[Any]) -> list[dict]:
    """The run's table rows, plus a row for every outcome the metrics never saw (failed before them)."""
    rows = [dict(t) for t in (run or {}).get("tables", [])]
    seen = {t["table_name"] for t in rows}
    for o in outcomes:
        if o.table in seen:
            continue
        rows.append({"table_name": o.table, "priority": None, "status": o.status, "analytics_rows": o.analytics_rows,
                     "replica_rows": o.replica_rows, "error": o.error, "notes": "; ".join(o.notes) or None,
                     "replica_seconds": None, "analytics_seconds": o.seconds or None, "verify_seconds": None,
                     "rows_per_second": None})
    return rows


def render_report(run: dict | None, tables: list[dict], *, run_id: str, secrets: tuple[str, ...] = ()) -> str:
    """The markdown of one run's report."""
    failed = sorted((t for t in tables if t["status"] != "ok"), key=lambda t: t["table_name"])
    ok = sorted((t for t in tables if t["status"] == "ok"), key=lambda t: t["table_name"])
    status = "FAILED" if failed else "OK"
    rows_total = sum(t.get("analytics_rows") or 0 for t in tables)
    wall = None
    if run and isinstance(run.get("started_at"), dt.datetime):
        end = run.get("ended_at") or dt.datetime.now(dt.timezone.utc)
        wall = (end - run["started_at"]).total_seconds()

    out = [f"# ETL run {status}: {len(ok)} of {len(tables)} tables ok"
           + (f", {len(failed)} failed" if failed else ""), ""]
    meta = [f"run `{run_id}`"]
    if run:
        meta.append(f"started {run['started_at']:%Y-%m-%d %H:%M:%S} UTC" if isinstance(run.get("started_at"), dt.datetime)
                    else "")
        if run.get("replica_method"):
            meta.append(f"replica path `{run['replica_method']}`")
        if run.get("full_refresh"):
            meta.append("full refresh")
    out += [" · ".join(m for m in meta if m), ""]

    if failed:
        # Paragraphs, not a table: the UI does not wrap table cells, and the end of an error (what to
        # change) was cut off.
        out += ["## Failed tables", ""]
        for t in failed:
            err = redact(str(t.get("error") or t["status"]), secrets)
            group = f" (group {_md(t.get('priority'))})" if t.get("priority") else ""
            out += [f"### {_md_name(t['table_name'])}{group}", "", _md_text(err, 2000), "",
                    f"Repair: run deployment `{REPAIR_DEPLOYMENT}` with `tables` = "
                    f"`[\"{_code(t['table_name'])}\"]` (UI: Deployments > repair > Run > Custom run), or "
                    f"`prefect deployment run {REPAIR_DEPLOYMENT} --param 'tables=[\"{_code(t['table_name'])}\"]'`", ""]

    out += ["## Tables", "", "| table | group | status | rows | seconds | rows/s | notes / error |",
            "|---|---|---|---:|---:|---:|---|"]
    for t in failed + ok:
        secs = table_seconds(t)
        rows = t.get("analytics_rows")
        rps = t.get("rows_per_second") or (rows / secs if rows and secs else None)
        text = "see Failed tables above" if t["status"] != "ok" else (t.get("notes") or "")
        out.append(f"| {_md_name(t['table_name'])} | {_md(t.get('priority'))} | {_md(t['status'])} | {_num(rows)} | "
                   f"{_num(secs)} | {_num(rps)} | {_md(text, 200)} |")
    out.append("")

    out += ["## Totals", "", "| tables | ok | failed | rows to analytics | seconds | rows/s |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {len(tables)} | {len(ok)} | {len(failed)} | {_num(rows_total)} | {_num(wall)} | "
            f"{_num(rows_total / wall if wall else None)} |", ""]

    timed = sorted(((table_seconds(t), t) for t in tables if table_seconds(t) is not None),
                   key=lambda x: -x[0])[:SLOWEST]
    if timed:
        out += ["## Slowest tables", ""]
        for i, (secs, t) in enumerate(timed, 1):
            out.append(f"{i}. **{_md_name(t['table_name'])}**: {_num(secs)} s, {_num(t.get('analytics_rows') or 0)} rows"
                       f"{' (failed)' if t['status'] != 'ok' else ''}")
        out.append("")
    return "\n".join(out)


def publish_run_report(markdown: str, *, run_id: str, failed: int, also_on: Any = None) -> Any:
    """Create the artifact on the current flow run, and on flow run `also_on` (the run that started
    this one as a subflow, e.g. the repair run), so the report is on the page people open.
    A failure to publish is logged, never raised."""
    description = f"ETL run {run_id}: " + (f"{failed} table(s) failed" if failed else "every table ok")
    try:
        from prefect.artifacts import create_markdown_artifact

        created = create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description=description)
        if also_on:
            _artifact_on(also_on, markdown=markdown, key=ARTIFACT_KEY, description=description)
        return created
    except Exception:  # noqa: BLE001 - the report is a courtesy; the run's state says what matters
        log.warning("could not publish the run report artifact", exc_info=True)
        return None


def render_dbt_section(result: Any) -> str:
    """The report's dbt section (a tasks.dbt_run.DbtResult); empty when the config has no `dbt:`."""
    if result is None:
        return ""
    out = ["## dbt", ""]
    if result.status == "skipped":
        out += [f"**dbt skipped**: {_md(result.reason, 600)}", ""]
        return "\n".join(out)
    out += [f"**dbt {result.status.upper()}**: `{_md(result.command, 600)}`", ""]
    if result.excluded_tables:
        out += [f"Not run, downstream of failed tables: {', '.join(_md_name(t) for t in result.excluded_tables)} "
                f"(on_table_failure: run_rest)", ""]
    if result.error:
        out += [f"dbt could not run: {_md(result.error, 600)}", ""]
        return "\n".join(out)
    out += ["| models ok | models failed | models skipped | tests passed | tests failed | tests warned | seconds |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result.models_ok} | {result.models_failed} | {result.models_skipped} | {result.tests_passed} | "
            f"{result.tests_failed} | {result.tests_warned} | {_num(result.seconds)} |", ""]
    bad = [n for n in result.nodes if n.status not in ("success", "pass")]
    if bad:
        out += ["| dbt node | status | message |", "|---|---|---|"]
        out += [f"| {_md_name(n.unique_id)} | {_md(n.status)} | {_md(n.message, 300)} |" for n in bad]
        out.append("")
    return "\n".join(out)


def _artifact_on(flow_run_id: Any, *, markdown: str, key: str, description: str) -> None:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    with get_client(sync_client=True) as client:
        client.create_artifact(artifact=ArtifactCreate(
            key=key, type="markdown", data=markdown, description=description, flow_run_id=uuid.UUID(str(flow_run_id))))


def render_group_report(group: str, outcomes: Iterable[Any], *, pipeline_url: str | None) -> str:
    """A group run's short report: its failed tables with their errors, the counts, where the full one is."""
    outcomes = list(outcomes)
    failed = sorted((o for o in outcomes if o.status != "ok"), key=lambda o: o.table)
    rows = sum(o.analytics_rows for o in outcomes)
    out = [f"# Group {_md_text(group, 200)}: {len(outcomes) - len(failed)} of {len(outcomes)} tables ok"
           + (f", {len(failed)} failed" if failed else ""), "",
           f"{rows:,} rows to analytics. The full run report (every table, totals, slowest tables) is on the "
           + (f"[pipeline run's Artifacts tab]({pipeline_url})." if pipeline_url else "pipeline run's Artifacts tab."),
           ""]
    for o in failed:
        out += [f"### {_md_name(o.table)}", "", _md_text(redact(str(o.error or o.status)), 2000), "",
                f"Repair: deployment `{REPAIR_DEPLOYMENT}` with `tables` = `[\"{_code(o.table)}\"]`", ""]
    return "\n".join(out)


def publish_group_report(group: str, outcomes: Iterable[Any], *, pipeline_run_id: str) -> Any:
    """The group's short report on the group run's own page; never raises."""
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value()
        url = f"{ui.rstrip('/')}/runs/flow-run/{pipeline_run_id}?tab=Artifacts" if ui else None
        outcomes = list(outcomes)
        failed = sum(1 for o in outcomes if o.status != "ok")
        return create_markdown_artifact(
            markdown=render_group_report(group, outcomes, pipeline_url=url), key=GROUP_ARTIFACT_KEY,
            description=f"group {group}: " + (f"{failed} table(s) failed" if failed else "every table ok"))
    except Exception:  # noqa: BLE001 - a courtesy, like the run report
        log.warning("could not publish the group report artifact", exc_info=True)
        return None
