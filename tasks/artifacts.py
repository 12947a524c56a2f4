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
        out += ["## Failed tables", "", "| table | group | error |", "|---|---|---|"]
        for t in failed:
            err = redact(str(t.get("error") or t["status"]), secrets)
            out.append(f"| **{_md_name(t['table_name'])}** | {_md(t.get('priority'))} | {_md(err, 600)} |")
        out.append("")

    out += ["## Tables", "", "| table | group | status | rows | seconds | rows/s | notes / error |",
            "|---|---|---|---:|---:|---:|---|"]
    for t in failed + ok:
        secs = table_seconds(t)
        rows = t.get("analytics_rows")
        rps = t.get("rows_per_second") or (rows / secs if rows and secs else None)
        text = redact(str(t.get("error") or ""), secrets) if t["status"] != "ok" else (t.get("notes") or "")
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


def publish_run_report(markdown: str, *, run_id: str, failed: int) -> Any:
    """Create the artifact on the current flow run; a failure to publish is logged, never raised."""
    try:
        from prefect.artifacts import create_markdown_artifact

        return create_markdown_artifact(
            markdown=markdown, key=ARTIFACT_KEY,
            description=f"ETL run {run_id}: " + (f"{failed} table(s) failed" if failed else "every table ok"))
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
