"""COPY into PostgreSQL, one keyset chunk at a time: shared by the full load and the merge.

MySQL prints each row of a chunk as a COPY text line (tasks/type_mapping); a reader thread fetches
the blocks (tasks/streaming.Prefetcher) while psycopg2 feeds them to `COPY ... FROM STDIN`. What can
go wrong is said once, here: a row MySQL cannot print is that error (not psycopg2's "error in
.read() call"), a value PostgreSQL rejects is one line naming the table and what to change, and
the NUL characters PostgreSQL cannot store are removed, counted and reported with the columns that
hold them. Used by tasks/analytics_full.py (the reload) and tasks/analytics_merge.py (the merge).
"""
from __future__ import annotations

import logging
from typing import Any

import psycopg2

from tasks.connections import Engines
from tasks.errors import DataError, redact
from tasks.identifiers import copy_expert, execute, mysql_ident
from tasks.job import PhaseStats
from tasks.streaming import BLOCK_BYTES, BlockFile, ChunkResult, LineQuery, Prefetcher, read_chunk_blocks
from tasks.type_mapping import PgColumn, reaches_pg_as_text

log = logging.getLogger("etl.copy")



def copy_chunk(pg: Any, cur: Any, my: Any, *, copy_sql: str, query: LineQuery, after: tuple | None, table: str,
               cols: list[PgColumn]) -> ChunkResult:
    """One chunk of `query` (rows after key `after`) from the MySQL connection `my` through
    `copy_sql` on the PostgreSQL cursor `cur`. Not committed; on any error `pg` is rolled back
    and the error raised says which side failed (the caller discards the MySQL connection)."""
    chunk = ChunkResult()
    reader = Prefetcher(read_chunk_blocks(my, query, after, chunk, strip_nul=True))
    source = BlockFile(iter(reader))
    try:
        copy_expert(cur, copy_sql, source, size=BLOCK_BYTES)
    except psycopg2.Error as e:
        pg.rollback()
        if source.error is not None:  # the MySQL side failed (e.g. a row it cannot print)
            raise source.error from None
        if isinstance(e, psycopg2.DataError):
            raise copy_error(e, table, cols) from e
        raise
    except BaseException:
        pg.rollback()
        raise
    finally:
        reader.close()
    return chunk


def copy_error(e: psycopg2.Error, table: str, cols: list[PgColumn]) -> Exception:
    """A value PostgreSQL rejected, as one line naming the table and, where known, what to change."""
    first = (e.pgerror or str(e)).strip().splitlines()[0]
    context = (e.diag.context or "").strip().splitlines()[0] if e.diag and e.diag.context else ""
    hint = ""
    if "unsupported Unicode escape sequence" in first or "\\u0000 cannot be converted" in first \
            or (e.pgcode == "22P05"):
        hint = ("; a JSON document holds \\u0000 or a lone surrogate escape, which jsonb cannot store: reload the "
                "table with a full refresh (the column is then created as json)")
    for c in cols:
        if c.as_boolean and f"column {c.name}:" in context:
            hint = f"; column {c.source.name!r} holds a value other than 0/1: remove it from boolean_columns or fix the data"
    return DataError(f"table {table!r}: PostgreSQL rejected a value: {first} ({context}){hint}")


def report_invalid_dates(table: str, stats: PhaseStats) -> None:
    """Dates outside the calendar (2024-02-30) are loaded as NULL like zero dates; say how many."""
    if stats.invalid_dates:
        note = (f"{stats.invalid_dates} DATE/DATETIME values outside the calendar (e.g. 2024-02-30) loaded as NULL; "
                f"the replica keeps them as they are")
        stats.notes.append(note)
        log.warning("%s: %s", table, note)


def report_nul_chars(engines: Engines, table_sql: str, table: str, cols: list[PgColumn], stats: PhaseStats) -> None:
    """When a load removed NUL characters (PostgreSQL text cannot hold them), say so in the run's notes
    and log, naming the columns and how many replica rows hold one, so the source can be fixed."""
    if not stats.nul_chars_removed:
        return
    text_cols = [c.source.name for c in cols if reaches_pg_as_text(c.source)]
    where = ""
    try:
        with engines.replica.connect() as rc:
            cur = rc.connection.driver_connection.cursor()
            execute(cur, "SELECT " + ", ".join(f"SUM(LOCATE(CHAR(0), {mysql_ident(c)}) > 0)" for c in text_cols)
                    + f" FROM {table_sql}")
            counts = cur.fetchone()
            found = [f"{c} ({int(n)} rows)" for c, n in zip(text_cols, counts) if n]
            if found:
                where = "; columns holding them: " + ", ".join(found)
    except Exception as e:  # noqa: BLE001 - the note is a courtesy; the load itself succeeded
        log.warning("%s: could not find the columns holding NUL characters: %s", table, redact(str(e)))
    note = f"{stats.nul_chars_removed} NUL characters removed from text (PostgreSQL cannot store them){where}"
    stats.notes.append(note)
    log.warning("%s: %s", table, note)
