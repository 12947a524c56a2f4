"""The replica tables the ETL owns, and the one way it drops or replaces a replica table.

A full copy ends by renaming its shadow over the live table and dropping the old one. Pointed at a
database that is not our copy (a wrong ETL_REPLICA_URL, an application database), that would drop
someone's table with its triggers and foreign keys. So every DROP and RENAME the replica leg issues
goes through here:

- `drop_scratch` drops only tables in the ETL's own namespace (`_etl_new_*`, `_etl_old_*`,
  `_etl_stage_*`: names the ETL made for this work);
- `swap_in` replaces a live table only when the ETL owns it: a row in `_etl_owned` (written here
  before the first swap of a table, or by `replica: {adopt: true}`, tasks/guard.py) or, for
  replicas built before `_etl_owned` existed, a row for it in `_etl_state` or `_etl_state_history`.
  Any other table is refused with one line naming it and what to do.

The ownership row is committed before the rename, so a crash between the two never leaves a table
of ours that the next run would refuse.
"""
from __future__ import annotations

from typing import Any

from tasks.errors import SchemaError
from tasks.identifiers import execute, mysql_ident, mysql_qualified, shadow_name
from tasks.mysql_schema import NAME_COLUMN

OWNED = "_etl_owned"
SCRATCH_PREFIX = "_etl_"
# Tables whose rows name a table the ETL built (the upgrade path: replicas older than _etl_owned).
_STATE_TABLES = ("_etl_state", "_etl_state_history")


def ensure(cur: Any, database: str | None = None) -> None:
    """`_etl_owned` in the current database (or `database`): one row per replica table the ETL owns."""
    from tasks import once

    if not once.first_time(cur.connection, f"replica:owned:{database or ''}"):  # once per connection
        return
    name = mysql_qualified(database, OWNED) if database else mysql_ident(OWNED)
    execute(cur, f"CREATE TABLE IF NOT EXISTS {name} (table_name {NAME_COLUMN} PRIMARY KEY, "
                 "how VARCHAR(16) NOT NULL, recorded_at DATETIME(6) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")


def record(cur: Any, tables: list[str] | tuple[str, ...], *, how: str, database: str | None = None) -> None:
    """Record `tables` as the ETL's (`how`: `created` by a full copy, `adopted` by `replica: {adopt: true}`)."""
    if not tables:
        return
    ensure(cur, database)
    name = mysql_qualified(database, OWNED) if database else mysql_ident(OWNED)
    execute(cur, f"INSERT IGNORE INTO {name} (table_name, how, recorded_at) VALUES "
                 + ", ".join(["(%s, %s, UTC_TIMESTAMP(6))"] * len(tables)),
            [v for t in tables for v in (t, how)])


def _bookkeeping(cur: Any, database: str) -> list[str]:
    """Which of `_etl_owned`, `_etl_state`, `_etl_state_history` exist in `database`."""
    execute(cur, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN "
                 f"({', '.join(['%s'] * (1 + len(_STATE_TABLES)))})", (database, OWNED, *_STATE_TABLES))
    return sorted(str(r[0]) for r in cur.fetchall())


def owned_tables(cur: Any, database: str) -> set[str]:
    """Every table of `database` the ETL owns (recorded, or with state rows: the upgrade path)."""
    present = _bookkeeping(cur, database)
    if not present:
        return set()
    execute(cur, " UNION ".join(f"SELECT table_name FROM {mysql_qualified(database, t)}" for t in present))
    return {str(r[0]) for r in cur.fetchall()}


def owns(cur: Any, database: str, table: str) -> bool:
    """Whether the ETL owns `table` of `database` (two small queries, once per full copy)."""
    present = _bookkeeping(cur, database)
    if not present:
        return False
    execute(cur, "SELECT 1 FROM (" + " UNION ALL ".join(
        f"SELECT 1 AS x FROM {mysql_qualified(database, t)} WHERE table_name = %s" for t in present)
        + ") AS o LIMIT 1", [table] * len(present))
    return cur.fetchone() is not None


def refuse_unowned(cur: Any, database: str, table: str) -> None:
    """Raise (SchemaError, one line) when `table` exists in `database` and the ETL does not own it."""
    execute(cur, "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (database, table))
    if cur.fetchone() is not None and not owns(cur, database, table):
        raise SchemaError(not_owned_message(database, table))


def not_owned_message(database: str, table: str) -> str:
    return (f"replica table {database}.{table} was not created by the ETL (no row for it in {database}.{OWNED} "
            f"or _etl_state), so a full copy will not replace it: rename or drop it yourself if it is not needed "
            f"(or point ETL_REPLICA_URL at a database of its own), or set `replica: {{adopt: true}}` in the table "
            f"config to let the ETL take it over")


def drop_created(cur: Any, database: str, table: str) -> None:
    """DROP a live-named table the ETL owns (a failed first copy it created); any other is refused."""
    if not owns(cur, database, table):
        raise SchemaError(not_owned_message(database, table))
    execute(cur, f"DROP TABLE IF EXISTS {mysql_qualified(database, table)}")


def drop_scratch(cur: Any, name: str, *, database: str | None = None) -> None:
    """DROP TABLE IF EXISTS for a table of the ETL's own namespace (`_etl_*`); any other name is refused."""
    if not name.startswith(SCRATCH_PREFIX):
        raise SchemaError(f"refusing to drop replica table {name!r}: the replica leg drops only its own "
                          f"{SCRATCH_PREFIX}* work tables")
    execute(cur, f"DROP TABLE IF EXISTS {mysql_qualified(database, name) if database else mysql_ident(name)}")


def swap_in(cur: Any, *, database: str, table: str, shadow: str, live_exists: bool) -> None:
    """Put `shadow` in place of `table` (current database: `database`) with one atomic RENAME TABLE.

    Refuses (SchemaError, nothing changed) when `table` exists and the ETL does not own it. Before
    the rename the table is recorded as the ETL's and that is committed (a RENAME commits anyway)."""
    if not shadow.startswith(SCRATCH_PREFIX):
        raise SchemaError(f"refusing to swap {shadow!r} in for replica table {table!r}: not an ETL shadow table")
    if live_exists and not owns(cur, database, table):
        raise SchemaError(not_owned_message(database, table))
    record(cur, [table], how="created")
    cur.connection.commit()
    old = shadow_name(table, "old")
    drop_scratch(cur, old)
    if live_exists:
        execute(cur, f"RENAME TABLE {mysql_ident(table)} TO {mysql_ident(old)}, "
                     f"{mysql_ident(shadow)} TO {mysql_ident(table)}")
        drop_scratch(cur, old)
    else:
        execute(cur, f"RENAME TABLE {mysql_ident(shadow)} TO {mysql_ident(table)}")
