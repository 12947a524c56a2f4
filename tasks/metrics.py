"""Run history in the analytics database, schema `etl` (kept apart from `raw` so dbt never reads it).

- `etl.pipeline_runs`: one row per pipeline run (run id = the Prefect flow run id).
- `etl.table_runs`: one row per table per run: phase timings, rows, bytes, mode, error.
- `etl.errors`: every failed attempt (table, phase, error class, message, retriable?, attempt).
Rows are written as the run goes (each write commits on its own), so a crash still leaves the
rows that say where it stopped. Tables of one batch (tasks/run.run_batch) are the exception: their
rows are held in memory and written in one statement when the batch ends (also when it fails), with
the probes they recorded; a process killed mid-batch loses those rows, never data or sync state.
Every message is passed through `redact` before it is stored.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

from sqlalchemy.engine import Engine

from tasks.errors import is_retriable, redact

log = logging.getLogger("etl.metrics")

SCHEMA = "etl"

DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.pipeline_runs (
        run_id text PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT now(),
        ended_at timestamptz,
        status text NOT NULL,
        tables_total integer NOT NULL DEFAULT 0,
        tables_ok integer NOT NULL DEFAULT 0,
        tables_failed integer NOT NULL DEFAULT 0,
        rows_replica bigint NOT NULL DEFAULT 0,
        rows_analytics bigint NOT NULL DEFAULT 0,
        full_refresh boolean NOT NULL DEFAULT false,
        replica_method text,
        failed_tables text[],
        connection_usage jsonb
    )""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.table_runs (
        run_id text NOT NULL,
        table_name text NOT NULL,
        priority text,
        mode text,
        status text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        ended_at timestamptz,
        replica_seconds double precision,
        analytics_seconds double precision,
        verify_seconds double precision,
        replica_rows bigint,
        analytics_rows bigint,
        bytes bigint,
        rows_per_second double precision,
        replica_method text,
        watermark_before text,
        watermark_after text,
        verified boolean,
        notes text,
        error text,
        PRIMARY KEY (run_id, table_name)
    )""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.errors (
        id bigserial PRIMARY KEY,
        run_id text NOT NULL,
        table_name text,
        phase text NOT NULL,
        error_class text NOT NULL,
        message text NOT NULL,
        retriable boolean NOT NULL,
        attempt integer NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    )""",
    # Added later: which process ran the table (several workers can share one run), and the
    # connection counters of a table run that opened engines of its own (dispatch=deployment).
    f"ALTER TABLE {SCHEMA}.table_runs ADD COLUMN IF NOT EXISTS worker text",
    f"ALTER TABLE {SCHEMA}.table_runs ADD COLUMN IF NOT EXISTS connection_usage jsonb",
    f"ALTER TABLE {SCHEMA}.pipeline_runs ADD COLUMN IF NOT EXISTS worker text",
    # Added later: the Prefect run an operator looks for (for a repair run the `etl-repair` run, not
    # the inner pipeline subflow whose id is run_id), its UI link when a server is configured, and why
    # a run failed before any table started (config, connections).
    f"ALTER TABLE {SCHEMA}.pipeline_runs ADD COLUMN IF NOT EXISTS prefect_run_name text",
    f"ALTER TABLE {SCHEMA}.pipeline_runs ADD COLUMN IF NOT EXISTS prefect_run_url text",
    f"ALTER TABLE {SCHEMA}.pipeline_runs ADD COLUMN IF NOT EXISTS error text",
    # Added with many clinics (ETL_SOURCES): the source a row belongs to; NULL for a single-source run.
    f"ALTER TABLE {SCHEMA}.pipeline_runs ADD COLUMN IF NOT EXISTS source text",
    f"ALTER TABLE {SCHEMA}.table_runs ADD COLUMN IF NOT EXISTS source text",
    f"ALTER TABLE {SCHEMA}.errors ADD COLUMN IF NOT EXISTS source text",
    # Added later: the notes as a list (`notes` joins them with "; " for people), so a dispatching run
    # reads a table run's outcome back as it was made (tasks/outcomes.read_outcome).
    f"ALTER TABLE {SCHEMA}.table_runs ADD COLUMN IF NOT EXISTS note_list jsonb",
    f"CREATE INDEX IF NOT EXISTS table_runs_started ON {SCHEMA}.table_runs (started_at)",
    f"CREATE INDEX IF NOT EXISTS pipeline_runs_started ON {SCHEMA}.pipeline_runs (started_at)",
]


def _process_gone(worker: str, host: str) -> bool:
    """True when `worker` (`name@host:pid`) names a process on `host` that does not exist any more."""
    at = worker.rpartition("@")[2]
    whose_host, _, pid = at.rpartition(":")
    if whose_host != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by someone else
    return False


def worker_identity() -> str:
    """Who runs this code: `<prefect worker name>@<host>:<pid>`, or `local@<host>:<pid>` outside a worker.

    A process worker starts each flow run as a subprocess with PREFECT__WORKER_NAME set, so the
    name tells which worker took a table and the pid which flow-run process ran it.
    """
    return f"{os.environ.get('PREFECT__WORKER_NAME') or 'local'}@{socket.gethostname()}:{os.getpid()}"


def prefect_identity(flow_run: Any = None) -> tuple[str | None, str | None]:
    """(name, UI link) of the Prefect run an operator knows this run by: the outermost flow run (a
    repair deployment run wraps the pipeline as a subflow), except that a clinic's run (a flow run with
    a `source` parameter, under `etl-all`) is its own: each clinic's row names its own run, not etl-all's.
    `flow_run` (an API flow run) or the current run; (None, None) outside Prefect."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run as current

        from tasks.notify import ui_url

        run_id = str(flow_run.id) if flow_run is not None else current.id
        if not run_id:
            return None, None
        with get_client(sync_client=True) as client:
            run = flow_run if flow_run is not None else client.read_flow_run(run_id)
            # Up through parent task runs to the root flow run (a handful of API reads at most).
            for _ in range(10):
                if not run.parent_task_run_id or (run.parameters or {}).get("source"):
                    break
                parent = client.read_task_run(run.parent_task_run_id)
                run = client.read_flow_run(parent.flow_run_id)
        return run.name, ui_url(str(run.id))
    except Exception:  # noqa: BLE001 - a name for humans; the run id still identifies the run
        log.debug("no Prefect run name", exc_info=True)
        return None, None


# The columns a table's finished row may set (MetricsWriter.table_finished, BatchRows).
FINISHED_COLUMNS = (
    "status", "replica_seconds", "analytics_seconds", "verify_seconds", "replica_rows", "analytics_rows",
    "bytes", "rows_per_second", "replica_method", "watermark_before", "watermark_after", "verified",
    "notes", "error", "mode", "note_list",
)


@dataclass
class BatchRows:
    """The metrics rows and recorded probes of one batch's tables, held until the batch ends."""

    run_id: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> columns (+ its monotonic times)
    probes: dict[tuple[str, str], Any] = field(default_factory=dict)  # (schema, table) -> tasks.probe.Probe

    def started(self, table: str, *, priority: str, mode: str, worker: str) -> None:
        self.rows[table] = {"priority": priority, "mode": mode, "status": "running", "worker": worker,
                            "_started": time.monotonic(), "_ended": None}

    def finished(self, table: str, values: dict[str, Any]) -> None:
        row = self.rows.setdefault(table, {"status": "running", "_started": time.monotonic()})
        row.update({k: v for k, v in values.items() if k in FINISHED_COLUMNS})
        row["_ended"] = time.monotonic()


_BATCH: ContextVar[BatchRows | None] = ContextVar("etl_metrics_batch", default=None)


@dataclass
class MetricsWriter:
    """Writes metric rows through its own short transactions on the analytics engine."""

    engine: Engine
    run_id: str
    secrets: tuple[str, ...] = ()
    source: str | None = None  # the clinic (sources file); None for the one source of ETL_SOURCE_URL

    def _exec(self, sql: str, params: tuple = ()) -> None:
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                cur.execute(sql, params)
            raw.commit()

    def ensure_schema(self) -> None:
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                # Two runs starting together must not race on CREATE TABLE IF NOT EXISTS.
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))")
                for stmt in DDL:
                    cur.execute(stmt)
            raw.commit()

    def clean(self, text: str | None) -> str | None:
        return None if text is None else redact(text, self.secrets)[:4000]

    def _stored(self, column: str, value: Any) -> Any:
        """A table row's value as stored: messages redacted, the note list as JSON of redacted notes."""
        if column in ("error", "notes"):
            return self.clean(value)
        if column == "note_list" and value is not None:
            return json.dumps([self.clean(n) for n in value])
        return value

    def pipeline_started(self, *, tables_total: int, full_refresh: bool, replica_method: str,
                         prefect_run_name: str | None = None, prefect_run_url: str | None = None) -> None:
        self.mark_abandoned()
        if prefect_run_name is None and prefect_run_url is None:
            prefect_run_name, prefect_run_url = prefect_identity()
        self._exec(
            f"INSERT INTO {SCHEMA}.pipeline_runs (run_id, status, tables_total, full_refresh, replica_method, worker, "
            "prefect_run_name, prefect_run_url, source) VALUES (%s, 'running', %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id) DO UPDATE SET status = 'running', started_at = now(), ended_at = NULL, "
            "worker = EXCLUDED.worker, prefect_run_name = EXCLUDED.prefect_run_name, "
            "prefect_run_url = EXCLUDED.prefect_run_url",
            (self.run_id, tables_total, full_refresh, replica_method, worker_identity(), prefect_run_name,
             prefect_run_url, self.source),
        )

    def run_started(self, **kw: Any) -> None:
        """The metrics schema made sure of, then the run's row (`pipeline_started`'s arguments)."""
        self.ensure_schema()
        self.pipeline_started(**kw)

    def pipeline_failed(self, error: str, *, status: str = "failed") -> None:
        """Close a run that stopped outside the tables (before any started, or in the bookkeeping)."""
        self._exec(
            f"UPDATE {SCHEMA}.pipeline_runs SET ended_at = now(), status = %s, error = %s WHERE run_id = %s",
            (status, self.clean(error), self.run_id),
        )

    def mark_abandoned(self) -> int:
        """Rows left `running` by a process of this host that no longer exists (killed, crashed) become
        `abandoned`, so `etl status` does not show a dead run as running forever. Rows of other hosts
        are left alone: from here nobody can tell whether their process still lives."""
        host = socket.gethostname()
        n = 0
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                for table, key in (("table_runs", "run_id, table_name"), ("pipeline_runs", "run_id")):
                    cur.execute(f"SELECT {key}, worker FROM {SCHEMA}.{table} WHERE status = 'running' "
                                "AND worker IS NOT NULL")
                    dead = [row[:-1] for row in cur.fetchall() if _process_gone(row[-1], host)]
                    for ids in dead:
                        where = " AND ".join(f"{k.strip()} = %s" for k in key.split(","))
                        cur.execute(f"UPDATE {SCHEMA}.{table} SET status = 'abandoned', ended_at = now()"
                                    + (", error = 'its process stopped before the table finished (killed or "
                                       "crashed); the next run converges'" if table == "table_runs" else "")
                                    + f" WHERE status = 'running' AND {where}", ids)
                    n += len(dead)
            raw.commit()
        if n:
            log.warning("marked %d run row(s) abandoned: their process on this host is gone", n)
        return n

    def pipeline_finished(self, *, status: str, tables_ok: int, failed: list[str], rows_replica: int,
                          rows_analytics: int, connection_usage: dict | None) -> None:
        self._exec(
            f"UPDATE {SCHEMA}.pipeline_runs SET ended_at = now(), status = %s, tables_ok = %s, tables_failed = %s, "
            "failed_tables = %s, rows_replica = %s, rows_analytics = %s, connection_usage = %s WHERE run_id = %s",
            (status, tables_ok, len(failed), failed, rows_replica, rows_analytics,
             json.dumps(connection_usage) if connection_usage is not None else None, self.run_id),
        )

    def _batch(self) -> BatchRows | None:
        batch = _BATCH.get()
        return batch if batch is not None and batch.run_id == self.run_id else None

    @contextmanager
    def batched(self) -> Iterator[BatchRows]:
        """Inside: this run's table rows and recorded probes (tasks/run.record_probe) are held; at the
        end, also after an error, they are written in one transaction (two statements for the batch,
        where each table wrote three). A failed write is logged, never raised: the tables' data and sync
        state are committed by then, and a probe that was not recorded only means the next run syncs
        the table instead of skipping it."""
        batch = BatchRows(self.run_id)
        token = _BATCH.set(batch)
        try:
            yield batch
        finally:
            _BATCH.reset(token)
            try:
                self.write_batch(batch)
            except Exception:  # noqa: BLE001 - see above
                log.warning("could not write the metrics rows of a batch (%s)", ", ".join(batch.rows), exc_info=True)

    def write_batch(self, batch: BatchRows) -> None:
        if not batch.rows and not batch.probes:
            return
        from psycopg2.extras import execute_values

        from tasks import probe

        now = time.monotonic()
        cols = ("priority", "mode", "status", "worker", *[c for c in FINISHED_COLUMNS if c not in ("status", "mode")])
        values = []
        for table, row in batch.rows.items():
            vals = [self._stored(c, row.get(c)) for c in cols]
            ended = row.get("_ended")
            # Times as the server's clock saw them: now() less how long ago they were, measured here.
            values.append((self.run_id, table, self.source, now - row["_started"],
                           None if ended is None else now - ended, *vals))
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                if values:
                    execute_values(
                        cur, f"INSERT INTO {SCHEMA}.table_runs (run_id, table_name, source, started_at, ended_at, "
                        f"{', '.join(cols)}) VALUES %s ON CONFLICT (run_id, table_name) DO UPDATE SET "
                        + ", ".join(f"{k} = EXCLUDED.{k}" for k in ("started_at", "ended_at", *cols)),
                        values, page_size=1000,
                        template="(%s, %s, %s, now() - make_interval(secs => %s), "
                                 "now() - make_interval(secs => %s), " + ", ".join(["%s"] * len(cols)) + ")")
                probe.pg_record_many(cur, [(schema, table, p) for (schema, table), p in batch.probes.items()])
            raw.commit()

    def record_probe(self, schema: str, table: str, found: Any) -> bool:
        """Inside `batched()`: hold the probe for the batch's write (True); else False (the caller writes it)."""
        batch = self._batch()
        if batch is None:
            return False
        batch.probes[(schema, table)] = found
        return True

    def table_started(self, table: str, *, priority: str, mode: str, worker: str | None = None) -> None:
        worker = worker or worker_identity()
        if (batch := self._batch()) is not None:
            batch.started(table, priority=priority, mode=mode, worker=worker)
            return
        self._exec(
            f"INSERT INTO {SCHEMA}.table_runs (run_id, table_name, priority, mode, status, worker, source) "
            "VALUES (%s, %s, %s, %s, 'running', %s, %s) ON CONFLICT (run_id, table_name) DO UPDATE SET "
            "status = 'running', started_at = now(), ended_at = NULL, error = NULL, worker = EXCLUDED.worker",
            (self.run_id, table, priority, mode, worker, self.source),
        )

    def tables_unchanged(self, skipped: list[tuple[str, str, str]]) -> None:
        """The rows of tables the probe skipped, (table, priority, why) each: one statement for all of
        them (tasks/skips.py), where a table that runs writes two (started, finished)."""
        if not skipped:
            return
        from psycopg2.extras import execute_values

        worker = worker_identity()
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                execute_values(
                    cur, f"INSERT INTO {SCHEMA}.table_runs (run_id, table_name, priority, mode, status, worker, "
                    "source, ended_at, replica_rows, analytics_rows, notes, note_list) VALUES %s "
                    "ON CONFLICT (run_id, table_name) DO UPDATE SET status = EXCLUDED.status, mode = EXCLUDED.mode, "
                    "started_at = now(), ended_at = now(), error = NULL, worker = EXCLUDED.worker, "
                    "replica_rows = 0, analytics_rows = 0, notes = EXCLUDED.notes, note_list = EXCLUDED.note_list",
                    [(self.run_id, t, priority, "unchanged", "ok", worker, self.source, 0, 0, self.clean(why),
                      json.dumps([self.clean(why)])) for t, priority, why in skipped],
                    template="(%s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s, %s)", page_size=500)
            raw.commit()

    def table_connection_usage(self, table: str, usage: dict) -> None:
        """Connection counters of a table run that had engines of its own (a standalone table flow)."""
        self._exec(
            f"UPDATE {SCHEMA}.table_runs SET connection_usage = %s WHERE run_id = %s AND table_name = %s",
            (json.dumps(usage), self.run_id, table),
        )

    def table_finished(self, table: str, values: dict[str, Any]) -> None:
        if (batch := self._batch()) is not None:
            batch.finished(table, values)
            return
        cols = [k for k in values if k in FINISHED_COLUMNS]
        vals = [self._stored(k, values[k]) for k in cols]
        sets = ", ".join(f"{k} = %s" for k in cols)
        self._exec(
            f"UPDATE {SCHEMA}.table_runs SET ended_at = now(), {sets} WHERE run_id = %s AND table_name = %s",
            (*vals, self.run_id, table),
        )

    def error(self, *, table: str | None, phase: str, exc: BaseException, attempt: int) -> None:
        try:
            self._exec(
                f"INSERT INTO {SCHEMA}.errors (run_id, table_name, phase, error_class, message, retriable, attempt, "
                "source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (self.run_id, table, phase, type(exc).__name__, self.clean(str(exc)) or type(exc).__name__,
                 is_retriable(exc), attempt, self.source),
            )
        except Exception:  # noqa: BLE001 - losing a metrics row must not hide the real error
            log.warning("could not record an error row for %s/%s", table, phase, exc_info=True)

    def cleanup_old_metrics(self, keep_days: int) -> int:
        """Delete history older than `keep_days`; returns the number of pipeline runs removed.

        Rows are judged by their own start time (an error row by when it happened), so a run
        that started within `keep_days` keeps all of its rows.
        """
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                cutoff = "now() - make_interval(days => %s)"
                cur.execute(f"DELETE FROM {SCHEMA}.errors WHERE at < {cutoff}", (keep_days,))
                cur.execute(f"DELETE FROM {SCHEMA}.table_runs WHERE started_at < {cutoff}", (keep_days,))
                cur.execute(f"DELETE FROM {SCHEMA}.pipeline_runs WHERE started_at < {cutoff}", (keep_days,))
                n = cur.rowcount
            raw.commit()
        return n
