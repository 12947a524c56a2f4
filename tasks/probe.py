"""One cheap read per table decides "nothing to do": the probe.

Before a table's phases run, one statement on the source reads what would show a change:

- a table synced on change columns (no lookback): the row count and each change column's MAX;
- any other table (full mode, no key, a lookback that re-reads rows whatever their change columns
  say): the row count and a whole-table hash sum computed by the server (the canonical row text of
  `etl verify`, MD5 per row, the first 60 bits summed: order free, exact in SUM; nothing per row
  reaches Python). It reads the whole table on the source, but moves nothing.

After a table finished and was verified, its probe is recorded in analytics (`etl.table_probe`,
with a digest of the table's shape and config). The next run skips the table (no DDL, no state,
checkpoint or lock work, no write to the replica or analytics) when the probe reads the same again,
the shape digest is the same, the run is not a full refresh, and the replica and analytics tables
still exist. Anything else runs the table as before, and records the new probe after it.

A change-column probe is recorded as *trusted* only when it cannot miss a later edit: each time
column's MAX lies before the earliest stamp a later commit can carry, i.e. before both now and the
start of the oldest source transaction still open that has written (it could commit rows stamped
below MAX: the late commits of tasks/watermarks.py), less a margin (TIMESTAMP: 2 s; DATE/DATETIME,
a local time in some zone: 15 h more, for UTC+14 and an hour of daylight saving repeated); an
integer change column only when no such transaction is open. An untrusted probe is never skipped on.
Without the PROCESS privilege (INNODB_TRX unreadable) change-column probes are never trusted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pymysql

from tasks.checkpoints import encode_key
from tasks.identifiers import mysql_ident
from tasks.job import TableJob
from tasks.type_mapping import INTEGER_TYPES
from tasks.verify import row_hash_sum_sql
from tasks.watermarks import NO_PRIVILEGE_CODES, OPEN_WRITERS

PG_TABLE = "etl.table_probe"
_TIME = {"timestamp"}
_LOCAL_TIME = {"date", "datetime"}


@dataclass(frozen=True)
class Probe:
    """What the source showed of one table: comparable, JSON-recordable."""

    kind: str  # "change" (count + MAX of the change columns) or "hash" (count + whole-table hash sum)
    values: str  # JSON of the values read
    shape: str  # digest of the table's columns, key, mode and config
    trusted: bool  # may a later run skip on it (see the module docstring)

    def same_as(self, recorded: dict | None) -> bool:
        return bool(recorded) and recorded.get("trusted") is True and self.trusted \
            and recorded.get("kind") == self.kind and recorded.get("values") == self.values \
            and recorded.get("shape") == self.shape

    def as_record(self) -> str:
        return json.dumps({"kind": self.kind, "values": self.values, "shape": self.shape, "trusted": self.trusted})


def probed(job: TableJob) -> bool:
    """Binlog tables are not probed: the run's log capture already says which of their keys changed."""
    return job.mode != "binlog"


def kind_of(job: TableJob) -> str:
    return "change" if job.mode == "incremental" and not job.table.lookback else "hash"


def shape_digest(job: TableJob) -> str:
    facts = [job.mode, list(job.key), job.table.model_dump(mode="json") if hasattr(job.table, "model_dump")
             else repr(job.table), [repr(c) for c in job.source.columns], job.pg_schema, job.column_case,
             job.loaded_at_column]
    return hashlib.sha1(json.dumps(facts, default=str, sort_keys=True).encode()).hexdigest()


_OLDEST_WRITER = f"(SELECT MIN(trx_started) FROM information_schema.INNODB_TRX WHERE {OPEN_WRITERS})"


def probe_sql(job: TableJob, *, writers: bool = True) -> tuple[str, list[str]]:
    """The probe's SELECT on the source, and the names of what it returns after the count.
    `writers=False`: without reading INNODB_TRX (no PROCESS privilege; never trusted then)."""
    t = job.source_sql
    if kind_of(job) == "hash":
        return f"SELECT COUNT(*), COALESCE({row_hash_sum_sql(job.source)}, 0) FROM {t}", ["hash"]
    exprs, names = [], []
    types = {c.name: c.data_type for c in job.source.columns}
    # A writer still open started at `oldest`: it can only stamp rows at or after its start (trx_started
    # is truncated to the second, hence the margins), so a MAX before that start cannot be passed by it.
    horizon = f"LEAST(UTC_TIMESTAMP(6), IFNULL({_OLDEST_WRITER}, UTC_TIMESTAMP(6)))" if writers else None
    for c in job.table.incremental_columns:
        q = mysql_ident(c)
        exprs.append(f"MAX({q})")
        names.append(f"max:{c}")
        if not writers:
            exprs.append("0")
        elif types[c] in _TIME:
            exprs.append(f"IFNULL(MAX({q}) < {horizon} - INTERVAL 2 SECOND, 1)")
        elif types[c] in _LOCAL_TIME:  # a local time in some zone: UTC+14 at most, an hour of DST repeat
            exprs.append(f"IFNULL(MAX({q}) < {horizon} - INTERVAL 15 HOUR - INTERVAL 2 SECOND, 1)")
        elif types[c] in INTEGER_TYPES:  # ids are handed out at INSERT and committed in any order
            exprs.append(f"{_OLDEST_WRITER} IS NULL")
        else:
            exprs.append("0")
        names.append(f"settled:{c}")
    return f"SELECT COUNT(*), {', '.join(exprs)} FROM {t}", names


def read_probe(cur: Any, job: TableJob) -> Probe:
    """One statement on the source."""
    sql, names = probe_sql(job)
    # Arguments (none) make the driver read the statement in format form, as the identifiers are
    # written (`%` doubled): without them a table name with `%` would reach the server doubled.
    try:
        cur.execute(sql, ())
    except (pymysql.err.OperationalError, pymysql.err.ProgrammingError, pymysql.err.InternalError) as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        if kind_of(job) != "change" or code not in NO_PRIVILEGE_CODES:
            raise
        sql, names = probe_sql(job, writers=False)
        cur.execute(sql, ())
    row = cur.fetchone()
    values = {"count": int(row[0])}
    trusted = True
    for name, v in zip(names, row[1:]):
        if name.startswith("settled:"):
            trusted = trusted and bool(int(v or 0))
        else:
            values[name] = encode_key((v,)) if not isinstance(v, (int, float)) or isinstance(v, bool) else str(v)
    return Probe(kind=kind_of(job), values=json.dumps(values, sort_keys=True), shape=shape_digest(job), trusted=trusted)


# --- the record in analytics ---------------------------------------------------------------------

def pg_ensure(cur: Any) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))")
    cur.execute("CREATE SCHEMA IF NOT EXISTS etl")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {PG_TABLE} (target_schema text NOT NULL, table_name text NOT NULL, "
                "probe jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (target_schema, table_name))")


def pg_recorded(cur: Any, schema: str, table: str, regclass: str) -> tuple[dict | None, bool]:
    """(the recorded probe or None, whether the analytics table exists): one read."""
    cur.execute(f"SELECT (SELECT probe FROM {PG_TABLE} WHERE target_schema = %s AND table_name = %s), "
                "to_regclass(%s) IS NOT NULL", (schema, table, regclass))
    probe, live = cur.fetchone()
    return probe, bool(live)


def pg_record_many(cur: Any, probes: list[tuple[str, str, Probe]]) -> None:
    """Record the probes of several tables, (schema, table, probe) each, in one statement; the caller commits."""
    if not probes:
        return
    from psycopg2.extras import execute_values

    execute_values(cur, f"INSERT INTO {PG_TABLE} (target_schema, table_name, probe) VALUES %s "
                   "ON CONFLICT (target_schema, table_name) DO UPDATE SET probe = EXCLUDED.probe, recorded_at = now()",
                   [(schema, table, p.as_record()) for schema, table, p in probes], page_size=1000)


def pg_forget_many(cur: Any, schema: str, tables: list[str]) -> None:
    """Forget the recorded probes of tables about to run (one statement; the caller commits): a probe is
    recorded again only after its table finished, so a run that stops in between leaves none that could
    match the source while the copies hold something else."""
    if tables:
        cur.execute(f"DELETE FROM {PG_TABLE} WHERE target_schema = %s AND table_name = ANY(%s)", (schema, tables))


def pg_record(cur: Any, schema: str, table: str, probe: Probe | None) -> None:
    """Record (or, with None, forget) a table's probe; the caller commits."""
    if probe is None:
        cur.execute(f"DELETE FROM {PG_TABLE} WHERE target_schema = %s AND table_name = %s", (schema, table))
        return
    cur.execute(f"INSERT INTO {PG_TABLE} (target_schema, table_name, probe) VALUES (%s, %s, %s) "
                "ON CONFLICT (target_schema, table_name) DO UPDATE SET probe = EXCLUDED.probe, recorded_at = now()",
                (schema, table, probe.as_record()))
