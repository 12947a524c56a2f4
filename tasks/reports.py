"""Readable views of what ran: the per-table summary printed after `etl run` and by `etl status`,
and the per-database connection report of `etl connections` with its sizing advice."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy.engine import Engine

from tasks.metrics import SCHEMA

# Columns of etl.pipeline_runs added after the first release (read when they exist).
RUN_EXTRA = ("prefect_run_name", "prefect_run_url", "error", "source")
# `etl status` without --table: errors cut to fit a line; with --table they are shown whole.
ERROR_CHARS = 120
NOTES_CHARS = 96  # the probe's "unchanged" note fits; a longer one is cut with "…" here, `etl status --table T` shows it whole


def format_table(headers: list[str], rows: list[list[Any]], *, under: list[list[str]] | None = None) -> str:
    """A plain-text table with right-aligned numbers; `under[i]` are lines printed, indented, below row i
    (long text that would make every row as wide as its longest value)."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows for i in range(len(headers))]
    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    for i, r in enumerate(cells):
        out.append(line(r))
        out += [f"    {text}" for text in (under[i] if under else [])]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    return str(v)


def _has_history(cur) -> bool:  # noqa: ANN001
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.pipeline_runs",))
    return bool(cur.fetchone()[0])


def last_runs(engine: Engine, *, runs: int = 5, table: str | None = None, source: str | None = None) -> list[dict]:
    """The newest pipeline runs with their table rows, newest first; `source`: only that clinic's runs."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            if not _has_history(cur):
                return []
            have = _optional_columns(cur, "pipeline_runs", RUN_EXTRA)
            run_extra = "".join(f", {c}" for c in have)
            if source is not None and "source" not in have:
                return []  # no run of any clinic recorded yet
            where = " WHERE source = %s" if source is not None else ""
            cur.execute(
                f"SELECT run_id, started_at, ended_at, status, tables_total, tables_ok, tables_failed, "
                f"rows_replica, rows_analytics, full_refresh, replica_method, failed_tables, connection_usage"
                f"{run_extra} FROM {SCHEMA}.pipeline_runs{where} ORDER BY started_at DESC LIMIT %s",
                (*([source] if source is not None else []), runs),
            )
            cols = [d[0] for d in cur.description]
            out = [dict(zip(cols, r)) for r in cur.fetchall()]
            extra = "".join(f", {c}" for c in _optional_columns(cur, "table_runs", ("worker",)))
            for run in out:
                q = (f"SELECT table_name, priority, mode, status, replica_rows, analytics_rows, replica_seconds, "
                     f"analytics_seconds, verify_seconds, rows_per_second, bytes, error, notes, started_at, ended_at"
                     f"{extra} FROM {SCHEMA}.table_runs WHERE run_id = %s")
                params: tuple = (run["run_id"],)
                if table:
                    q += " AND table_name = %s"
                    params += (table,)
                cur.execute(q + " ORDER BY (status = 'ok'), started_at", params)
                tcols = [d[0] for d in cur.description]
                run["tables"] = [dict(zip(tcols, r)) for r in cur.fetchall()]
        raw.rollback()
    return out


def render_run(run: dict, *, full_errors: bool = False, table: str | None = None) -> str:
    """One run: a head line (status, Prefect run name and link, totals), the run's own error when it
    failed outside the tables, and a row per table. `full_errors` (`etl status --table T`): table errors
    and notes whole, each on a line of its own below the table, not cut. `table`: the one table the rows
    were read for (a run without it says so, not "no table started")."""
    secs = (run["ended_at"] - run["started_at"]).total_seconds() if run.get("ended_at") else None
    head = (f"{'clinic ' + run['source'] + '  ' if run.get('source') else ''}run {run['run_id']}  {run['status'].upper()}  started {_fmt(run['started_at'])}"
            f"{f'  {secs:.1f}s' if secs is not None else '  (still running or interrupted)'}  "
            f"tables ok {run['tables_ok']}/{run['tables_total']}  rows {run['rows_analytics']:,}")
    lines = [head]
    if run.get("prefect_run_name") or run.get("prefect_run_url"):
        link = run.get("prefect_run_url")
        lines.append(f"prefect run {run.get('prefect_run_name') or '?'}" + (f"  {link}" if link else ""))
    if run.get("error"):
        lines.append(f"error: {run['error']}")
    if not run["tables"] and table:
        return "\n".join(lines + [f"(table {table} is not in this run)"])
    if not run["tables"]:
        return "\n".join(lines + (["(no table started)"] if run["status"] != "running" else []))
    rows = []
    # The worker column only when the tables were spread over several processes (dispatch=deployment).
    show_worker = len({t.get("worker") for t in run["tables"]}) > 1
    details = []
    for t in run["tables"]:
        error = " ".join((t["error"] or "").split())
        notes = " ".join((t["notes"] or "").split())
        cell = error if t["status"] != "ok" else notes
        if t["status"] == "ok" and len(notes) > NOTES_CHARS:
            if full_errors:
                details.append(f"{t['table_name']}: {notes}")
                cell = "(below)"
            else:
                cell = notes[: NOTES_CHARS - 1] + "…"
        if t["status"] != "ok" and len(error) > ERROR_CHARS:
            if full_errors:
                details.append(f"{t['table_name']}: {error}")
                cell = "(below)"
            else:
                cell = error[: ERROR_CHARS - 1] + "…"
        rows.append([t["table_name"], t["priority"], t["status"], t["analytics_rows"], t["replica_seconds"],
                     t["analytics_seconds"], t["rows_per_second"],
                     *([t.get("worker")] if show_worker else []), cell])
    headers = ["table", "group", "status", "rows", "replica s", "load s", "rows/s",
               *(["worker"] if show_worker else []), "error / notes"]
    return "\n".join(lines) + "\n" + format_table(headers, rows) + "".join(f"\n{d}" for d in details)


def previous_status(engine: Engine, run_id: str) -> str | None:
    """Status of the newest pipeline run that started before `run_id` (None: there is none)."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            if not _has_history(cur):
                return None
            cur.execute(f"SELECT status FROM {SCHEMA}.pipeline_runs WHERE run_id <> %s AND started_at < "
                        f"(SELECT started_at FROM {SCHEMA}.pipeline_runs WHERE run_id = %s) "
                        f"ORDER BY started_at DESC LIMIT 1", (run_id, run_id))
            row = cur.fetchone()
        raw.rollback()
    return row[0] if row else None


def runs_as_json(runs: list[dict]) -> str:
    return json.dumps(runs, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v), indent=2)


def _optional_columns(cur: Any, table: str, wanted: tuple[str, ...]) -> list[str]:
    """Those of `wanted` that exist in etl.<table> (columns added after the first release)."""
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (SCHEMA, table))
    have = {r[0] for r in cur.fetchall()}
    return [c for c in wanted if c in have]


def run_report(engine: Engine, run_id: str) -> dict | None:
    """One pipeline run and all of its table rows (failed first), or None when it is not recorded."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.pipeline_runs",))
            if not cur.fetchone()[0]:
                return None
            run_extra = "".join(f", {c}" for c in _optional_columns(cur, "pipeline_runs", RUN_EXTRA))
            cur.execute(
                f"SELECT run_id, started_at, ended_at, status, tables_total, tables_ok, tables_failed, "
                f"rows_replica, rows_analytics, full_refresh, replica_method, failed_tables{run_extra} "
                f"FROM {SCHEMA}.pipeline_runs WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
            if row is None:
                return None
            run = dict(zip([d[0] for d in cur.description], row))
            extra = "".join(f", {c}" for c in _optional_columns(cur, "table_runs", ("worker",)))
            cur.execute(
                f"SELECT table_name, priority, mode, status, replica_rows, analytics_rows, replica_seconds, "
                f"analytics_seconds, verify_seconds, rows_per_second, error, notes, started_at, ended_at{extra} "
                f"FROM {SCHEMA}.table_runs WHERE run_id = %s ORDER BY (status = 'ok'), table_name", (run_id,))
            cols = [d[0] for d in cur.description]
            run["tables"] = [dict(zip(cols, r)) for r in cur.fetchall()]
        raw.rollback()
    return run


# --- connections ---------------------------------------------------------------------------------


def connection_runs(engine: Engine, *, runs: int = 5) -> list[dict]:
    """The newest runs' connection counters: the run's own engines per database, and those of every
    table run that opened engines of its own (dispatch=deployment), newest run first."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            if not _has_history(cur):
                return []
            cur.execute(
                f"SELECT run_id, started_at, ended_at, status, connection_usage FROM {SCHEMA}.pipeline_runs "
                f"ORDER BY started_at DESC LIMIT %s", (runs,))
            cols = [d[0] for d in cur.description]
            out = [dict(zip(cols, r)) for r in cur.fetchall()]
            has_table_usage = bool(_optional_columns(cur, "table_runs", ("connection_usage",)))
            extra = "".join(f", {c}" for c in _optional_columns(cur, "table_runs", ("worker",)))
            for run in out:
                run["table_usage"] = []
                if has_table_usage:
                    cur.execute(f"SELECT table_name, connection_usage{extra} FROM {SCHEMA}.table_runs "
                                f"WHERE run_id = %s AND connection_usage IS NOT NULL ORDER BY table_name",
                                (run["run_id"],))
                    tcols = [d[0] for d in cur.description]
                    run["table_usage"] = [dict(zip(tcols, r)) for r in cur.fetchall()]
        raw.rollback()
    for run in out:
        run["advice"] = [f"{role}: {a}" for role, u in (run["connection_usage"] or {}).items()
                         for a in connection_advice(u)]
        for t in run["table_usage"]:
            run["advice"] += [f"table {t['table_name']} {role}: {a}" for role, u in (t["connection_usage"] or {}).items()
                              for a in connection_advice(u)]
    return out


def connection_advice(u: dict) -> list[str]:
    """What to change about one database's pool, judged from one run's counters (empty: nothing)."""
    advice = []
    peak, opened, still = u.get("peak_checked_out") or 0, u.get("opened") or 0, u.get("still_open") or 0
    size, overflow = u.get("pool_size"), u.get("max_overflow")
    if still > 0:
        advice.append(
            f"LEAK: {still} connection(s) still open after the engines were disposed: something checked a "
            f"connection out and never returned it (a connect() outside a `with`, or a thread still running)")
    if size is not None and overflow is not None:
        limit = size + (overflow if overflow >= 0 else 0)
        if overflow >= 0 and peak >= limit:
            advice.append(
                f"POOL EXHAUSTED: peak {peak} reached pool_size {size} + max_overflow {overflow}: tables waited "
                f"for a connection. Lower the group's `workers` or give each worker more connections "
                f"(open_engines sizes the pool as 2 x workers, plus as many overflow)")
        elif peak > size:
            advice.append(
                f"overflow used: peak {peak} > pool_size {size}: {peak - size} connection(s) were opened beyond "
                f"the pool and closed again on return; if this shows every run, raise the pool size "
                f"(open_engines: 2 x workers)")
    if opened > max(peak, 1) * 2 and opened - peak >= 4:
        advice.append(
            f"churn: {opened} connections opened for a peak of {peak}: connections were discarded and reopened "
            f"(overflow returns, invalidation after errors, or pool_recycle)")
    return advice


def render_connections(runs: list[dict]) -> str:
    if not runs:
        return "no runs recorded yet (etl schema is empty)"
    blocks = []
    for run in runs:
        usage = run["connection_usage"] or {}
        workers = next((u.get("workers") for u in usage.values() if u.get("workers")), None)
        head = (f"{'clinic ' + run['source'] + '  ' if run.get('source') else ''}run {run['run_id']}  {run['status'].upper()}  started {_fmt(run['started_at'])}"
                f"{f'  workers {workers}' if workers else ''}")
        rows = [[role, u.get("pool_size"), u.get("max_overflow"), u.get("peak_checked_out"), u.get("opened"),
                 u.get("checkouts"), u.get("still_open")] for role, u in usage.items()]
        for t in run["table_usage"]:
            for role, u in (t["connection_usage"] or {}).items():
                rows.append([f"{role} (table {t['table_name']})", u.get("pool_size"), u.get("max_overflow"),
                             u.get("peak_checked_out"), u.get("opened"), u.get("checkouts"), u.get("still_open")])
        if not rows:
            blocks.append(head + "\n(no connection counters recorded: the run did not finish)")
            continue
        body = format_table(["database", "pool", "overflow", "peak", "opened", "checkouts", "still open"], rows)
        advice = run["advice"] or ["ok: every pool within its size, no connection left open"]
        blocks.append(head + "\n" + body + "\n" + "\n".join(f"  - {a}" for a in advice))
    return "\n\n".join(blocks)
