"""The run report markdown and the connection advice, from plain rows (no database, no Prefect)."""
from __future__ import annotations

import datetime as dt

from tasks.artifacts import merge_outcomes, render_report
from tasks.reports import connection_advice, render_connections

T0 = dt.datetime(2024, 5, 1, 2, 0, tzinfo=dt.timezone.utc)


def _row(name: str, status: str, rows: int, seconds: float, **kw) -> dict:
    return {"table_name": name, "priority": kw.pop("priority", "critical"), "status": status,
            "analytics_rows": rows, "replica_rows": rows, "replica_seconds": seconds / 2,
            "analytics_seconds": seconds / 2, "verify_seconds": 0.0,
            "rows_per_second": rows / seconds if status == "ok" else None,
            "error": kw.pop("error", None), "notes": kw.pop("notes", None),
            "started_at": T0, "ended_at": T0 + dt.timedelta(seconds=seconds), **kw}


def test_report_puts_failed_tables_first_with_their_redacted_error_then_totals_and_slowest() -> None:
    run = {"run_id": "r1", "started_at": T0, "ended_at": T0 + dt.timedelta(seconds=40), "replica_method": "server",
           "full_refresh": False,
           "tables": [_row("appointment", "ok", 5000, 20.0), _row("patient", "ok", 300, 2.0),
                      _row("claim", "failed", 0, 1.0,
                           error="LoadError: cannot reach mysql://etl:hunter2@db/clinic | lost | connection")]}

    class Outcome:  # a table that failed before it reached the metrics (only the parent knows about it)
        table, status, analytics_rows, replica_rows, error, notes, seconds = "ghost", "failed", 0, 0, "no such table", [], 0

    tables = merge_outcomes(run, [Outcome()])
    md = render_report(run, tables, run_id="r1", secrets=("hunter2",))

    assert md.startswith("# ETL run FAILED: 2 of 4 tables ok, 2 failed")
    failed_section = md.index("## Failed tables")
    assert failed_section < md.index("## Tables") < md.index("## Totals") < md.index("## Slowest tables")
    body = md[md.index("## Tables"):md.index("## Totals")]
    order = [name for name in ("claim", "ghost", "appointment", "patient")]
    positions = [body.index(f"| {n} |") for n in order]
    assert positions == sorted(positions), body  # failed (by name) first, then the ok ones
    assert "hunter2" not in md and "etl:***@db" in md
    assert "\\| lost \\| connection" in md  # a pipe in an error does not break the table
    assert "| 5,000 | 20.00 | 250 |" in md  # rows, seconds, rows/s of appointment
    slowest = md[md.index("## Slowest tables"):]
    assert slowest.index("appointment") < slowest.index("patient")
    assert "| 4 | 2 | 2 | 5,300 | 40.00 | 132 |" in md  # totals: tables, ok, failed, rows, seconds, rows/s


def test_report_of_a_clean_run() -> None:
    run = {"run_id": "r2", "started_at": T0, "ended_at": T0 + dt.timedelta(seconds=3), "tables": [
        _row("patient", "ok", 300, 2.0)]}
    md = render_report(run, merge_outcomes(run, []), run_id="r2")
    assert md.startswith("# ETL run OK: 1 of 1 tables ok")
    assert "## Failed tables" not in md


def _usage(**kw) -> dict:
    base = {"opened": 4, "closed": 4, "still_open": 0, "checkouts": 40, "peak_checked_out": 4,
            "pool_size": 4, "max_overflow": 4, "workers": 2}
    return {**base, **kw}


def test_connection_advice() -> None:
    assert connection_advice(_usage()) == []
    leak = connection_advice(_usage(closed=3, still_open=1))
    assert len(leak) == 1 and leak[0].startswith("LEAK: 1 connection(s) still open")
    exhausted = connection_advice(_usage(peak_checked_out=8, opened=8, closed=8))
    assert len(exhausted) == 1 and exhausted[0].startswith("POOL EXHAUSTED: peak 8 reached pool_size 4 + max_overflow 4")
    overflow = connection_advice(_usage(peak_checked_out=6, opened=6, closed=6))
    assert len(overflow) == 1 and overflow[0].startswith("overflow used: peak 6 > pool_size 4")
    churn = connection_advice(_usage(peak_checked_out=2, opened=12, closed=12))
    assert len(churn) == 1 and churn[0].startswith("churn: 12 connections opened for a peak of 2")
    # Counters recorded before pool sizes were: only what can be judged.
    assert connection_advice({"opened": 2, "closed": 2, "still_open": 0, "peak_checked_out": 2}) == []


def test_render_connections_shows_each_database_and_the_advice() -> None:
    runs = [{"run_id": "r1", "status": "ok", "started_at": T0, "ended_at": T0,
             "connection_usage": {"source": _usage(peak_checked_out=2), "analytics": _usage(closed=3, still_open=1)},
             "table_usage": [{"table_name": "patient", "worker": "w1@h:1",
                              "connection_usage": {"replica": _usage(pool_size=2, max_overflow=2, peak_checked_out=1)}}],
             "advice": ["analytics: LEAK: 1 connection(s) still open ..."]},
            {"run_id": "r0", "status": "running", "started_at": T0, "ended_at": None, "connection_usage": None,
             "table_usage": [], "advice": []}]
    text = render_connections(runs)
    assert "run r1  OK" in text and "workers 2" in text
    assert "replica (table patient)" in text
    assert "- analytics: LEAK" in text
    assert "run r0  RUNNING" in text and "did not finish" in text
