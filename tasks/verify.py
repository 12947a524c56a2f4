"""Load verification: after a table is loaded, the copies must agree.

Row counts of the replica and the analytics table are compared exactly (both are ours and quiet
once the table's load has finished). The source can change while we read it, so it is compared
only when the caller asks (`etl verify` in a quiet window).
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from tasks.connections import Engines
from tasks.identifiers import mysql_qualified, pg_qualified, pg_table_name


@dataclass(frozen=True)
class CountCheck:
    table: str
    replica_rows: int
    analytics_rows: int
    source_rows: int | None = None

    @property
    def ok(self) -> bool:
        same = self.replica_rows == self.analytics_rows
        return same and (self.source_rows is None or self.source_rows == self.replica_rows)

    def describe(self) -> str:
        src = f"source {self.source_rows:,}, " if self.source_rows is not None else ""
        return f"{self.table}: {src}replica {self.replica_rows:,}, analytics {self.analytics_rows:,}"


def count_check(engines: Engines, table: str, *, source_db: str | None, replica_db: str, pg_schema: str) -> CountCheck:
    with engines.replica.connect() as c:
        rep = int(c.execute(sa.text(f"SELECT COUNT(*) FROM {mysql_qualified(replica_db, table)}")).scalar_one())
    with engines.analytics.connect() as c:
        ana = int(c.execute(sa.text(f"SELECT COUNT(*) FROM {pg_qualified(pg_schema, pg_table_name(table))}")).scalar_one())
    src = None
    if source_db is not None:
        with engines.source.connect() as c:
            src = int(c.execute(sa.text(f"SELECT COUNT(*) FROM {mysql_qualified(source_db, table)}")).scalar_one())
    return CountCheck(table, rep, ana, src)
