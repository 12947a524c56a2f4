"""One table's facts for one run, gathered once: `TableJob`.

Every phase of a table (replica copy or merge, analytics load or merge, delete propagation, drift)
needs the same facts: the source's columns and key, the table's effective mode and why, the
source's time zone, the names of the replica table and the analytics table. They are read once
per table per run (`build_job`, one source connection) and handed to each phase by keyword,
instead of each phase reading the schema and choosing the key again.

The replica's own shape is *not* in the job: the replica phase changes it (a full copy, drift
applied in place), so the analytics phase reads it once when it starts and passes that schema on
with the job (`job.pg_columns(schema)`, `job.keyset(schema)`).

`PhaseStats` is what a phase hands back: the other half of the same contract.

Example:
    ```python
    job = build_job(engines, table, source_db="prod", replica_db="replica", pg_schema="raw")
    print(job.key, job.mode, job.why)
    ```
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import sqlalchemy as sa

from config.models import ColumnCase, LookbackWindow, ResolvedTable
from tasks import mysql_schema, state, watermarks
from tasks.connections import Engines
from tasks.errors import SchemaError
from tasks.identifiers import mysql_ident, mysql_qualified, pg_qualified, pg_table_name
from tasks.keyset import Keyset
from tasks.mysql_schema import TableSchema
from tasks.type_mapping import PgColumn, pg_columns

Mode = Literal["full", "incremental", "binlog", "checksum"]
ProgressFn = Callable[[int], None]


@dataclass
class PhaseStats:
    """Counters of one phase of one table (replica copy or analytics load)."""

    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    chunks: int = 0
    nul_chars_removed: int = 0
    invalid_dates: int = 0  # DATE/DATETIME values outside the calendar, loaded as NULL
    resumed_at_rows: int = 0
    method: str = ""
    mode: str = "full"
    watermark_before: str | None = None
    watermark_after: str | None = None
    deleted: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self, table: str, *, to: str) -> str:
        """The phase's log line: `to` is "the replica" or "PostgreSQL"."""
        rows = f"{table}: {self.rows:,} row{'' if self.rows == 1 else 's'} to {to} in {self.seconds:.2f}s"
        if to == "the replica":
            return f"{rows} ({self.method}, {self.chunks} chunks)"
        return f"{rows} ({self.chunks} chunks, {self.rows_per_second:.0f} rows/s)"


def effective_mode(table: ResolvedTable, schema: TableSchema, key: tuple[str, ...]) -> tuple[Mode, str]:
    """(mode, why) for a table; raises SchemaError when the config names columns that do not fit."""
    for c in table.incremental_columns:
        if c not in schema.column_names:
            m = difflib.get_close_matches(c, schema.column_names, n=1)
            hint = f" (did you mean {m[0]!r}?)" if m else ""
            raise SchemaError(f"table {table.name!r}: incremental column {c!r} does not exist{hint}; "
                              f"fix tables.{table.name}.incremental_columns")
        try:
            state.watermark_kind(schema.column(c).data_type)
        except ValueError as e:
            raise SchemaError(f"table {table.name!r}: incremental column {c!r}: {e}") from None
    if table.mode == "full":
        return "full", "mode: full"
    if table.mode == "checksum":  # checksum hook (tasks/checksum_sync.py); a keyless table is compared whole
        if not key:
            return "checksum", ("checksum: no primary key, so the table is compared whole (one checksum) and copied "
                                "again in full only when it differs")
        return "checksum", ("checksum: key-range checksums of source and replica; only ranges that differ are "
                            "copied again (in-place edits and deletes included)")
    if not key:
        return "full", "no primary key: full refresh every run (rows cannot be merged)"
    if table.mode == "binlog":
        from tasks.binlog_source import key_blocker

        blocker = key_blocker(schema, key)
        if blocker:  # the apply would re-read other keys than the ones changed: a silently wrong copy
            raise SchemaError(f"table {table.name!r}: binlog mode cannot use it: its {blocker}, which the binary "
                              f"log does not give back exactly; set tables.{table.name}.mode: checksum")
        return "binlog", "binlog: the keys the source's binary log shows changed, re-read and applied"
    if not table.incremental_columns:
        return "full", "mode: incremental but no incremental_columns: full refresh"
    why = f"incremental on {', '.join(table.incremental_columns)} (any of them advanced)"
    if isinstance(table.lookback, LookbackWindow):
        for c in table.lookback.columns:
            watermarks.check_window_column(f"table {table.name!r}", c, column_types(schema),
                                           fix=f"tables.{table.name}.lookback")
        why += f"; re-reads rows whose {', '.join(table.lookback.columns)} is in the last {table.lookback.window}"
    elif table.lookback:
        why += f"; re-reads {table.lookback} before each watermark"
    return "incremental", why


@dataclass(frozen=True)
class TableJob:
    """What every phase of one table needs, read once per run (see the module docstring)."""

    table: ResolvedTable
    source_db: str
    replica_db: str
    source: TableSchema  # the source table's columns, key and statistics
    key: tuple[str, ...]  # the merge and paging key (choose_key: configured, else the primary key)
    mode: Mode
    why: str
    source_time_zone: str
    pg_schema: str = ""  # analytics schema; empty for a job that only replicates
    column_case: ColumnCase = "lower"
    loaded_at_column: str | None = "_etl_loaded_at"

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def pg_name(self) -> str:
        return pg_table_name(self.table.name)

    @property
    def source_sql(self) -> str:
        return mysql_qualified(self.source_db, self.table.name)

    @property
    def replica_sql(self) -> str:
        return mysql_qualified(self.replica_db, self.table.name)

    @property
    def pg_sql(self) -> str:
        return pg_qualified(self.pg_schema, self.pg_name)

    @property
    def keyed(self) -> bool:
        return bool(self.key)

    def keyset(self, schema: TableSchema | None = None, *, leading: str | None = None) -> Keyset:
        """Keyset paging over the key (after `leading`, a change column, when given) of `schema`
        (the source's by default; the replica's when reading the replica)."""
        columns = (leading, *self.key) if leading else self.key
        return Keyset.for_table(schema or self.source, columns, mysql_ident)

    def pg_columns(self, schema: TableSchema, *, json_text_columns: frozenset[str] | set[str] = frozenset(),
                   with_loaded_at: bool = False) -> list[PgColumn]:
        """The analytics columns of `schema` (the replica's): names, types, booleans. `with_loaded_at`
        also refuses a source column that clashes with the load-time column."""
        return pg_columns(schema, column_case=self.column_case, boolean_columns=self.table.boolean_columns,
                          loaded_at_column=self.loaded_at_column if with_loaded_at else None,
                          json_text_columns=json_text_columns)

    def for_analytics(self, *, pg_schema: str, column_case: ColumnCase, loaded_at_column: str | None) -> TableJob:
        """The same job with the analytics options of this run (no database is read)."""
        return dataclasses.replace(self, pg_schema=pg_schema, column_case=column_case,
                                   loaded_at_column=loaded_at_column)


def source_time_zone(conn: sa.Connection) -> str:
    tz, system = conn.execute(sa.text("SELECT @@global.time_zone, @@system_time_zone")).one()
    return str(system) if str(tz) == "SYSTEM" else str(tz)


def build_job(engines: Engines, table: ResolvedTable, *, source_db: str, replica_db: str, pg_schema: str = "",
              column_case: ColumnCase = "lower", loaded_at_column: str | None = "_etl_loaded_at") -> TableJob:
    """Read the table's facts from the source (one connection, metadata only) and decide its mode."""
    with engines.source.connect() as sc:
        job = read_job(sc, table, source_db=source_db, replica_db=replica_db, pg_schema=pg_schema,
                       column_case=column_case, loaded_at_column=loaded_at_column)
        sc.rollback()
    return job


def read_job(conn: sa.Connection, table: ResolvedTable, *, source_db: str, replica_db: str, pg_schema: str = "",
             column_case: ColumnCase = "lower", loaded_at_column: str | None = "_etl_loaded_at") -> TableJob:
    """`build_job` on an open source connection (`etl plan` reads every table on one)."""
    schema = mysql_schema.read_table_schema(conn, source_db, table.name)
    key = mysql_schema.choose_key(schema, table.primary_key, mysql_schema.unique_keys(conn, source_db, table.name))
    mode, why = effective_mode(table, schema, key)
    return TableJob(table=table, source_db=source_db, replica_db=replica_db, source=schema, key=key, mode=mode,
                    why=why, source_time_zone=source_time_zone(conn), pg_schema=pg_schema, column_case=column_case,
                    loaded_at_column=loaded_at_column)


def column_types(schema: TableSchema) -> dict[str, Any]:
    """{column: MySQL data type}, what the watermark and window code asks about a table."""
    return {c.name: c.data_type for c in schema.columns}


def read_jobs(conn: sa.Connection, tables: list[ResolvedTable], *, source_db: str, replica_db: str,
              pg_schema: str = "", column_case: ColumnCase = "lower",
              loaded_at_column: str | None = "_etl_loaded_at") -> dict[str, TableJob]:
    """`read_job` of many tables on one source connection, from one metadata read of the whole
    database (mysql_schema.read_database_schemas) and one time zone read. A table it cannot build
    (missing, a view, a refused key) is left out: its own `build_job` then raises its error where
    it is retried and recorded."""
    schemas = mysql_schema.read_database_schemas(conn, source_db, {t.name for t in tables})
    tz = source_time_zone(conn)
    out: dict[str, TableJob] = {}
    for table in tables:
        if table.name not in schemas:
            continue
        schema, uniques = schemas[table.name]
        try:
            key = mysql_schema.choose_key(schema, table.primary_key, uniques)
            mode, why = effective_mode(table, schema, key)
        except Exception:  # noqa: BLE001 - reported by the table's own build_job
            continue
        out[table.name] = TableJob(table=table, source_db=source_db, replica_db=replica_db, source=schema, key=key,
                                   mode=mode, why=why, source_time_zone=tz, pg_schema=pg_schema,
                                   column_case=column_case, loaded_at_column=loaded_at_column)
    return out
