"""`etl discover`: write a table config for every base table of the source.

Nobody should hand-write 450 entries. For each table discover records the primary key, the
columns that look like change tracking (OpenDental's DateTStamp / SecDateTEdit, any TIMESTAMP
maintained by ON UPDATE CURRENT_TIMESTAMP, *updated_at*-style names), a size estimate and a
priority guess; the output is plain YAML a person can edit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import yaml
from sqlalchemy.engine import Connection

from tasks.mysql_schema import TableSchema, list_base_tables, read_table_schema
from tasks.type_mapping import is_time_type

# OpenDental's core clinical and financial tables: what a practice looks at first in the morning.
CRITICAL_TABLES = {
    "patient", "appointment", "procedurelog", "claim", "claimproc", "payment", "paysplit",
    "adjustment", "insplan", "inssub", "patplan", "provider", "procedurecode", "definition",
}
BULK_ROWS = 1_000_000  # tables this large run in the sequential `bulk` group, gentle on the source

_CHANGE_NAME = re.compile(
    r"^(DateTStamp|SecDateTEdit|DateTEdit|.*updated_?at|.*modified(_?(at|on|date))?|last_?update|.*_?tstamp)$", re.I
)


@dataclass(frozen=True)
class DiscoveredTable:
    name: str
    primary_key: tuple[str, ...]
    incremental_columns: tuple[str, ...]
    estimated_rows: int
    priority: str
    comment: str
    mode: str = "full"


def choose_mode(schema: TableSchema, changes: tuple[str, ...]) -> tuple[str, str]:
    """Incremental only where the change columns catch every insert and every update.

    That takes a column the *server* maintains: NOT NULL, DEFAULT CURRENT_TIMESTAMP and ON UPDATE
    CURRENT_TIMESTAMP, so no application code path can forget it. A nullable column, or one only
    the application writes, cannot be trusted alone: such tables stay on full refresh.
    """
    if not schema.primary_key:
        return "full", "no primary key: copied whole every run"
    trusted = [c for c in changes if schema.column(c).on_update_timestamp and not schema.column(c).nullable
               and "current_timestamp" in str(schema.column(c).default or "").lower()]
    if trusted:
        return "incremental", f"incremental: {trusted[0]} is maintained by the server on insert and update"
    # A keyed table without a column to trust: key-range checksums find in-place edits and deletes
    # that no timestamp shows, and only the ranges that differ are copied (README, "Checksum mode").
    if changes:
        return "checksum", (f"checksum: {', '.join(changes)} not maintained by the server (nullable or written by "
                            f"the application), so key-range checksums find what changed; set mode: incremental "
                            f"with a lookback if you trust it")
    return "checksum", ("checksum: no change-tracking column; key-range checksums find edits, inserts and deletes, "
                        "only ranges that differ are copied")


def change_columns(schema: TableSchema) -> tuple[str, ...]:
    """Columns that look like they record when a row last changed, best first."""
    found: list[str] = []
    for c in schema.columns:
        if is_time_type(c.data_type) and c.data_type != "date" and (c.on_update_timestamp or _CHANGE_NAME.match(c.name)):
            found.append(c.name)
    # Server-maintained (ON UPDATE CURRENT_TIMESTAMP) columns first: the application cannot forget them.
    found.sort(key=lambda n: not schema.column(n).on_update_timestamp)
    return tuple(found)


def guess_priority(name: str, rows: int) -> str:
    if name.lower() in CRITICAL_TABLES:
        return "critical"
    if rows >= BULK_ROWS:
        return "bulk"
    return "normal"


def binlog_blockers(conn: Connection) -> list[str]:
    """What keeps the source from serving binlog mode (empty: it can), each with its fix."""
    from tasks.binlog_source import missing_settings

    return missing_settings(conn.connection.driver_connection.cursor())


def discover_tables(conn: Connection, database: str) -> list[DiscoveredTable]:
    from tasks.binlog_source import key_blocker

    out = []
    binlog_ready = not binlog_blockers(conn)
    for info in list_base_tables(conn, database):
        schema = read_table_schema(conn, database, info.name)
        inc = change_columns(schema)
        mode, why = choose_mode(schema, inc)
        blocker = key_blocker(schema, schema.primary_key) if binlog_ready and schema.primary_key else None
        if binlog_ready and schema.primary_key and blocker:
            why += f" (not binlog: {blocker}, which the log does not give back exactly)"
        elif binlog_ready and schema.primary_key:
            # The log sees every change, timestamps or not (README, "Binlog mode").
            mode, why = "binlog", "binlog: the source's binary log serves every change of this keyed table"
        out.append(DiscoveredTable(
            name=info.name,
            primary_key=schema.primary_key,
            incremental_columns=inc,
            estimated_rows=info.estimated_rows,
            priority=guess_priority(info.name, info.estimated_rows),
            comment=why,
            mode=mode,
        ))
    return out


def render_config(tables: list[DiscoveredTable], *, source_label: str) -> str:
    """The YAML text of a complete table config."""
    doc = {
        "version": 1,
        "priorities": [
            {"name": "critical", "workers": 2},
            {"name": "normal", "workers": 2},
            {"name": "bulk", "workers": 1},
        ],
        "analytics": {"column_case": "lower"},
        "defaults": {"enabled": True, "mode": "full", "batch_size": 50000, "deletes": "detect"},
        "tables": {},
    }
    for t in tables:
        entry: dict = {"priority": t.priority}
        if t.mode != "full":
            entry["mode"] = t.mode
        entry["primary_key"] = list(t.primary_key)
        if t.incremental_columns:
            entry["incremental_columns"] = list(t.incremental_columns)
        entry["estimated_rows"] = t.estimated_rows
        if t.comment:
            entry["comment"] = t.comment
        doc["tables"][t.name] = entry
    header = (
        f"# Table config written by `etl discover` from {source_label}.\n"
        "# Edit freely: keys under a table override `defaults:`; `enabled: false` skips a table.\n"
        "# Priority groups run in the order listed; `workers` tables of a group run at once.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
