"""What happened to a table in a run, as data: the outcome every runner returns, the failure
messages built from outcomes, and an outcome read back from etl.table_runs (a table that ran as a
deployment run in another process). Plain functions: no Prefect here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.engine import Engine

from tasks.errors import redact
from tasks.metrics import SCHEMA

TableStatus = Literal["ok", "failed"]


@dataclass
class TableOutcome:
    """What happened to one table in one run."""

    table: str
    status: TableStatus
    replica_rows: int = 0
    analytics_rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def failed_outcome(table: str, exc: BaseException | str) -> TableOutcome:
    message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return TableOutcome(table=table, status="failed", error=redact(message))


def failed_tables(outcomes: list[TableOutcome]) -> list[str]:
    return [o.table for o in outcomes if o.status != "ok"]


def failed_summary(outcomes: list[TableOutcome]) -> str:
    """`2 of 5 tables failed: a, b` (a batch's or a group's Failed state message)."""
    failed = failed_tables(outcomes)
    return f"{len(failed)} of {len(outcomes)} tables failed: {', '.join(failed)}"


def failure_details(outcomes: list[TableOutcome]) -> str:
    """`a: why; b: why` for the run's final error."""
    return "; ".join(f"{o.table}: {o.error}" for o in outcomes if o.status != "ok")


def read_outcome(engine: Engine, run_id: str, table: str) -> tuple[TableOutcome | None, str | None]:
    """The table's outcome as its run recorded it under `run_id` (None when it wrote no finished
    row), and the error it recorded (None when none). Notes come from the `note_list` column as a list."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.table_runs",))
            if not cur.fetchone()[0]:
                raw.rollback()
                return None, None
            cur.execute(
                f"SELECT status, replica_rows, analytics_rows, EXTRACT(EPOCH FROM ended_at - started_at), error, "
                f"note_list FROM {SCHEMA}.table_runs WHERE run_id = %s AND table_name = %s", (run_id, table))
            row = cur.fetchone()
        raw.rollback()
    if row is None:
        return None, None
    status, replica_rows, analytics_rows, seconds, error, notes = row
    if status != "ok":
        return None, error
    return TableOutcome(table=table, status="ok", replica_rows=replica_rows or 0, analytics_rows=analytics_rows or 0,
                        seconds=float(seconds or 0.0), notes=list(notes or [])), error
