"""Which tables of a group share a batch flow run, and how the batches are dealt (the flows' batching policy).

A flow run costs about a second of orchestration here (API round trips and the end-of-run
bookkeeping), more than copying a table of a few hundred rows. Tables this small therefore share
one `tables-<group>-<n>` flow run per batch (up to SMALL_TABLE_BATCH): each is its own `sync-<table>`
task run (with the same retries) and keeps its own metrics row, written with the batch's others in
one statement when the batch ends (tasks/run.run_batch). Creating a batch's flow run cost ~0.6 s
against a Prefect server and ~1.3 s against the temporary API (a parent task run, the flow run, its
states), so batches hold up to 100 tables: 400 tiny tables are 4 batches, not 16. Tables whose last
sync was incremental ("light") move only what changed and share batches too. Plain functions: no
Prefect here.
"""
from __future__ import annotations

import math

from config.models import ResolvedTable
from tasks.connections import Engines
from tasks.state import mysql_incremental_tables

SMALL_TABLE_ROWS = 1000
SMALL_TABLE_BATCH = 100


def largest_first(tables: list[ResolvedTable]) -> list[ResolvedTable]:
    """A big table started last would leave the other workers idle at the end."""
    return sorted(tables, key=lambda t: -(t.estimated_rows or 0))


def split_batched(tables: list[ResolvedTable], *, light: set[str],
                  dispatch: str) -> tuple[list[ResolvedTable], list[ResolvedTable]]:
    """(tables with a flow run of their own, tables that share batches), both largest first.
    dispatch=deployment batches nothing: every table is a run of the table deployment."""
    ordered = largest_first(tables)
    if dispatch == "deployment":
        return ordered, []
    small = [t for t in ordered if t.name in light
             or (t.estimated_rows is not None and t.estimated_rows <= SMALL_TABLE_ROWS)]
    return [t for t in ordered if t not in small], small


def deal_batches(tables: list[ResolvedTable], *, workers: int) -> list[list[ResolvedTable]]:
    """At most SMALL_TABLE_BATCH tables per batch and at least `workers` batches (when there are that
    many tables). Largest first, each table goes to the batch with the fewest estimated rows so far,
    so one big table does not hold a queue of small ones behind it."""
    if not tables:
        return []
    n = min(len(tables), max(math.ceil(len(tables) / SMALL_TABLE_BATCH), workers))
    batches: list[list[ResolvedTable]] = [[] for _ in range(n)]
    rows = [0] * n
    for t in largest_first(tables):
        i = min((j for j in range(n) if len(batches[j]) < SMALL_TABLE_BATCH), key=lambda j: (rows[j], len(batches[j])))
        batches[i].append(t)
        rows[i] += (t.estimated_rows or 0) + 1
    return batches


def light_tables(engines: Engines, replica_db: str, *, full_refresh: bool, dispatch: str) -> set[str]:
    """Tables whose last sync was incremental (they move only what changed this run), read from the
    replica's state; none on a full refresh or when tables run as deployments."""
    if full_refresh or dispatch == "deployment":
        return set()
    with engines.replica.connect() as rc:
        return mysql_incremental_tables(rc.connection.driver_connection.cursor(), replica_db)


def rows_to_move(table: ResolvedTable, *, full_refresh: bool) -> int:
    """What a progress line counts against: the table's size for a full copy; nothing for an
    incremental window (the table's size says nothing about how much changed)."""
    # checksum mode (like incremental) moves only what differs
    return 0 if table.mode in ("incremental", "checksum") and not full_refresh else (table.estimated_rows or 0)
