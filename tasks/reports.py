"""Readable views of what ran: the per-table summary printed after `etl run` and by `etl status`."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy.engine import Engine

from tasks.metrics import SCHEMA


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows for i in range(len(headers))]
    def line(vals: list[str]) -> str:
        return "  ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
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


def last_runs(engine: Engine, *, runs: int = 5, table: str | None = None) -> list[dict]:
    """The newest pipeline runs with their table rows, newest first."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.pipeline_runs",))
            if not cur.fetchone()[0]:
                return []
            cur.execute(
                f"SELECT run_id, started_at, ended_at, status, tables_total, tables_ok, tables_failed, "
                f"rows_replica, rows_analytics, full_refresh, replica_method, failed_tables, connection_usage "
                f"FROM {SCHEMA}.pipeline_runs ORDER BY started_at DESC LIMIT %s",
                (runs,),
            )
            cols = [d[0] for d in cur.description]
            out = [dict(zip(cols, r)) for r in cur.fetchall()]
            for run in out:
                q = (f"SELECT table_name, priority, mode, status, replica_rows, analytics_rows, replica_seconds, "
                     f"analytics_seconds, verify_seconds, rows_per_second, bytes, error, notes, started_at, ended_at "
                     f"FROM {SCHEMA}.table_runs WHERE run_id = %s")
                params: tuple = (run["run_id"],)
                if table:
                    q += " AND table_name = %s"
                    params += (table,)
                cur.execute(q + " ORDER BY (status = 'ok'), started_at", params)
                tcols = [d[0] for d in cur.description]
                run["tables"] = [dict(zip(tcols, r)) for r in cur.fetchall()]
        raw.rollback()
    return out


def render_run(run: dict) -> str:
    secs = (run["ended_at"] - run["started_at"]).total_seconds() if run.get("ended_at") else None
    head = (f"run {run['run_id']}  {run['status'].upper()}  started {_fmt(run['started_at'])}"
            f"{f'  {secs:.1f}s' if secs is not None else '  (still running or interrupted)'}  "
            f"tables ok {run['tables_ok']}/{run['tables_total']}  rows {run['rows_analytics']:,}")
    rows = []
    for t in run["tables"]:
        total = (t["replica_seconds"] or 0) + (t["analytics_seconds"] or 0) + (t["verify_seconds"] or 0)
        rows.append([t["table_name"], t["priority"], t["status"], t["analytics_rows"], t["replica_seconds"],
                     t["analytics_seconds"], t["rows_per_second"],
                     (t["error"] or "")[:120] if t["status"] != "ok" else (t["notes"] or "")[:60]])
    body = format_table(["table", "group", "status", "rows", "replica s", "load s", "rows/s", "error / notes"], rows)
    return head + "\n" + body


def runs_as_json(runs: list[dict]) -> str:
    return json.dumps(runs, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v), indent=2)
