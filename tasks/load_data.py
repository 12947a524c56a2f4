"""LOAD DATA through a FIFO: how a table's rows travel into the replica on the stream path.

The source prints each row as a LOAD DATA line (tasks/type_mapping); a writer thread feeds the lines
into a FIFO while the replica connection runs `LOAD DATA LOCAL INFILE` on it, and every warning of
the chunk is inspected (a value LOAD DATA changed fails the chunk). Shared by the full copy
(tasks/replica_full), the incremental merge (tasks/replica_merge) and repair (tasks/repair).
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from tasks.errors import SchemaError
from tasks.identifiers import mysql_ident
from tasks.mysql_schema import TableSchema
from tasks.streaming import ChunkResult, LineQuery, read_chunk_blocks
from tasks.type_mapping import is_generated, join_fields, load_data_column


@dataclass(frozen=True)
class LoadDataPlan:
    """How a table's rows travel through LOAD DATA: the source's line and the replica's statement."""

    line_expr: str
    load_sql: str  # format form, with one %s: the FIFO path
    enum_columns: frozenset[str]


def writable_columns(schema: TableSchema) -> list[str]:
    """The columns a copy writes: all but generated ones (the replica computes those; invisible
    columns are written like any other, they are only left out of SELECT *)."""
    return [c.name for c in schema.columns if not is_generated(c)]


def load_data_plan(schema: TableSchema, target_table: str) -> LoadDataPlan:
    ld = [load_data_column(c, i) for i, c in enumerate(schema.columns) if not is_generated(c)]
    line = join_fields([c.select_expr for c in ld])
    targets = ", ".join(c.target for c in ld)
    sets = [c.set_clause for c in ld if c.set_clause]
    set_sql = (" SET " + ", ".join(sets)) if sets else ""
    load_sql = (
        f"LOAD DATA LOCAL INFILE %s INTO TABLE {mysql_ident(target_table)} CHARACTER SET utf8mb4 "
        f"FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({targets}){set_sql}"
    )
    return LoadDataPlan(line, load_sql, frozenset(c.name for c in schema.columns if c.data_type == "enum"))


def packet_size(dbapi_conn: Any) -> int:
    with dbapi_conn.cursor() as c:
        c.execute("SELECT @@max_allowed_packet")
        return int(c.fetchone()[0])


@contextmanager
def fifo_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="etl-fifo-") as tmp:
        path = os.path.join(tmp, "rows")
        os.mkfifo(path, 0o600)
        yield path


def load_chunk(src: Any, cur: Any, fifo: str, load_sql: str, query: LineQuery, after: tuple | None,
                    chunk: ChunkResult, enum_columns: set[str]) -> None:
    """Stream one chunk: a writer thread reads the source into the FIFO, LOAD DATA reads it."""
    error: list[BaseException] = []

    def writer() -> None:
        try:
            with open(fifo, "wb", buffering=1 << 16) as f:
                for block in read_chunk_blocks(src, query, after, chunk, strip_nul=False):
                    f.write(block)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            error.append(e)

    t = threading.Thread(target=writer, name="etl-replica-writer", daemon=True)
    t.start()
    try:
        cur.execute(load_sql, (fifo,))
        warnings = cur.warning_count
    except BaseException:
        # Unblock a writer still waiting to open or write the FIFO, then report the real error.
        drain(fifo, t)
        raise
    t.join()
    if error:
        raise error[0]
    if warnings:
        check_load_warnings(cur, warnings, enum_columns)


def check_load_warnings(cur: Any, count: int, enum_columns: set[str]) -> None:
    """Refuse a chunk whose values LOAD DATA changed.

    One warning is expected and harmless: an ENUM holding the empty error value '' (which MySQL
    stores for an invalid value) warns "Data truncated" when loaded, and stores the same ''.
    Source and replica share the column definition, so that is the only truncation an ENUM can see.
    """
    cur.execute("SHOW WARNINGS")
    shown = cur.fetchall()
    real = []
    for level, code, message in shown:
        m = re.match(r"Data truncated for column '(.+)' at row \d+$", str(message))
        if int(code) == 1265 and m and m.group(1) in enum_columns:
            continue
        real.append(str(message))
    if real or len(shown) < count:
        sample = "; ".join(real[:3]) or f"{count - len(shown)} warnings beyond max_error_count"
        raise SchemaError(f"LOAD DATA into the replica changed values ({count} warnings: {sample}); "
                          f"the replica would not equal the source")


def drain(fifo: str, t: threading.Thread) -> None:
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        deadline = time.monotonic() + 30
        while t.is_alive() and time.monotonic() < deadline:
            try:
                if not os.read(fd, 1 << 16):
                    time.sleep(0.01)
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        os.close(fd)
