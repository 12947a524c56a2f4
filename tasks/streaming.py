"""Moving ready-made lines from a MySQL server-side cursor to a target in bounded blocks.

MySQL formats each row as one line (see `type_mapping`), returned as bytes (the SELECT casts it
to BINARY, so PyMySQL does not decode it and psycopg2 does not re-encode it). A reader thread
fetches blocks into a small bounded queue while the caller writes them, so reading MySQL and
writing the target overlap, and memory holds at most `depth` blocks whatever the table size.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import pymysql.cursors

from tasks.errors import DataError
from tasks.identifiers import readable
from tasks.keyset import Keyset
from tasks.type_mapping import TEXT_ESCAPES

FETCH_ROWS = 2000  # rows per fetchmany from the server-side cursor
BLOCK_BYTES = 1 << 20  # bytes per block handed to the writer
GROUP_BYTES = 4 << 20  # target size of one GROUP_CONCAT block


def group_rows_for(avg_row_length: int, batch_size: int, max_allowed_packet: int) -> int:
    """Rows per GROUP_CONCAT block so a block stays well under max_allowed_packet.

    Formatted lines run up to about twice the stored row size (hex for binary data).
    """
    target = min(GROUP_BYTES, max_allowed_packet // 4)
    per_row = max(2 * avg_row_length, 32)
    return max(1, min(batch_size, target // per_row))


@dataclass
class ChunkResult:
    """What one keyset chunk read: its row count, bytes, and the key of its last row."""

    rows: int = 0
    bytes: int = 0
    last_key: tuple | None = None
    nul_chars_removed: int = 0
    flagged: int = 0  # sum of LineQuery.count_expr over the rows read (e.g. invalid dates loaded as NULL)


@dataclass
class LineQuery:
    """SELECT <key columns>, <line> FROM <table> [WHERE ...] ORDER BY <key> LIMIT n."""

    table_sql: str  # qualified, quoted table name (format form, see tasks/identifiers.py)
    line_expr: str  # SQL printing one row as one line (bytes), format form
    keyset: Keyset | None  # None: the table has no primary key and is read whole
    batch_size: int
    where: str | None = None  # extra condition, e.g. an incremental window
    where_params: Sequence[Any] = ()
    group_rows: int = 0  # >0: read GROUP_CONCAT blocks of this many rows (see read_chunk_blocks)
    integer_key: bool = False  # single integer key: blocks are key ranges (no LIMIT, no temporary table)
    count_expr: str | None = None  # per-row SQL number summed into ChunkResult.flagged

    def count_sql(self) -> str:
        return f"({self.count_expr})" if self.count_expr else "0"

    def conditions(self, after: tuple | None) -> tuple[list[str], list[Any]]:
        conds: list[str] = []
        params: list[Any] = []
        if self.where:
            conds.append(f"({self.where})")
            params.extend(self.where_params)
        if self.keyset is not None:
            cond, kparams = self.keyset.after(after)
            conds.append(cond)
            params.extend(kparams)
        return conds, params

    def sql(self, after: tuple | None) -> tuple[str, list[Any]]:
        conds, params = self.conditions(after)
        if self.keyset is None:
            where = f" WHERE {' AND '.join(conds)}" if conds else ""
            return (f"SELECT CAST({self.line_expr} AS BINARY), {self.count_sql()} FROM {self.table_sql}{where}",
                    params)
        sql = (
            f"SELECT {self.keyset.select_list}, CAST({self.line_expr} AS BINARY), {self.count_sql()} "
            f"FROM {self.table_sql} "
            f"WHERE {' AND '.join(conds)} ORDER BY {self.keyset.order_by} LIMIT {int(self.batch_size)}"
        )
        return sql, params


def read_chunk_blocks(dbapi_conn: Any, query: LineQuery, after: tuple | None, result: ChunkResult,
                      *, strip_nul: bool) -> Iterator[bytes]:
    """Yield the lines of one chunk (up to `batch_size` rows after key `after`) as byte blocks."""
    if query.keyset is not None and query.group_rows > 0:
        if query.integer_key and len(query.keyset.columns) == 1:
            return _read_key_ranges(dbapi_conn, query, after, result, strip_nul=strip_nul)
        return _read_grouped(dbapi_conn, query, after, result, strip_nul=strip_nul)
    return _read_rows(dbapi_conn, query, after, result, strip_nul=strip_nul)


_LINE = "`_etl_line`"


def _read_grouped(dbapi_conn: Any, query: LineQuery, after: tuple | None, result: ChunkResult,
                  *, strip_nul: bool) -> Iterator[bytes]:
    """Read a chunk as a few GROUP_CONCAT blocks, each holding `group_rows` ready-made lines.

    One result row per block instead of one per table row: the Python side does next to no work
    per row (PyMySQL's per-row parsing costs more CPU than the whole COPY on a 2-core box). Every
    block is checked: its line count must equal COUNT(*), so a block that MySQL truncated
    (group_concat_max_len) or could not send (max_allowed_packet) is never taken as complete; it is
    re-read in smaller groups, and a single row that cannot be sent is an error naming its key.
    """
    ks = query.keyset
    assert ks is not None
    single = len(ks.columns) == 1 and ks.max_is_last  # MAX(enum) compares text, not position
    remaining = query.batch_size
    group = max(1, query.group_rows)
    cur = dbapi_conn.cursor()
    try:
        while remaining > 0:
            n = min(group, remaining)
            conds, params = query.conditions(after)
            inner = (f"SELECT {ks.select_list}, {query.line_expr} AS {_LINE}, {query.count_sql()} AS {_FLAG} "
                     f"FROM {query.table_sql} WHERE {' AND '.join(conds)} ORDER BY {ks.order_by} LIMIT {int(n)}")
            head = f"MAX({ks.select_list}), " if single else ""
            cur.execute(f"SELECT {head}SUM({_FLAG}), COUNT(*), CAST(GROUP_CONCAT({_LINE} SEPARATOR '\\n') AS BINARY) "
                        f"FROM ({inner}) AS `_etl_group`", params)
            row = cur.fetchone()
            count, blob = int(row[-2]), row[-1]
            if count == 0:
                return
            if not _complete(blob, count):
                if n == 1:
                    cur.execute(f"SELECT {ks.select_list} FROM {query.table_sql} WHERE {' AND '.join(conds)} "
                                f"ORDER BY {ks.order_by} LIMIT 1", params)
                    raise unprintable_row(query.table_sql, tuple(cur.fetchone()), dbapi_conn)
                group = max(1, n // 2)
                continue
            if single:
                last = (row[0],)
            else:
                cur.execute(f"SELECT {ks.select_list} FROM {query.table_sql} WHERE {' AND '.join(conds)} "
                            f"ORDER BY {ks.order_by} LIMIT 1 OFFSET {count - 1}", params)
                last = tuple(cur.fetchone())
            block = _take_block(blob, count, result, strip_nul)
            result.flagged += int(row[-3] or 0)
            result.last_key = last
            after = last
            remaining -= count
            yield block
            if count < n:
                return
    finally:
        cur.close()


_FLAG = "`_etl_flag`"


def unprintable_row(table_sql: str, key: tuple | None, dbapi_conn: Any | None) -> DataError:
    """The one-line error for a row MySQL could not print: which row, and what to raise.

    A value whose printed form (hex doubles a blob, escaping grows text) or whose whole line passes
    max_allowed_packet comes back as NULL with warning 1301. It is never loaded as NULL.
    """
    packet = ""
    try:
        if dbapi_conn is not None:  # None: an unbuffered result is still open on the connection
            with dbapi_conn.cursor() as c:
                c.execute("SELECT @@max_allowed_packet")
                packet = f" ({int(c.fetchone()[0]):,} bytes)"
    except Exception:  # noqa: BLE001 - the error below matters, not the figure
        pass
    where = f"the row with key {key!r}" if key is not None else "a row"
    return DataError(
        f"{readable(table_sql)}: {where} cannot be printed by MySQL (its formatted line, blobs in hex, is "
        f"larger than max_allowed_packet{packet}, or a value has no printed form); raise max_allowed_packet "
        f"on the MySQL server to more than twice the row's largest value, or exclude the table"
    )


def decode_text_bytes(block: bytes, *, strip_nul: bool) -> bytes:
    """Turn the text placeholders (type_mapping.TEXT_ESCAPES) into the target's escapes.

    bytes.replace is linear in the block size, unlike MariaDB's REPLACE with a longer
    replacement. LOAD DATA also needs NUL escaped (strip_nul=False is the LOAD DATA path); the
    PostgreSQL path removes NULs and counts them itself.
    """
    for code, esc in TEXT_ESCAPES.items():
        if code in block:
            block = block.replace(code, esc)
    if not strip_nul and b"\x00" in block:
        block = block.replace(b"\x00", b"\\0")
    return block


def _complete(blob: bytes | None, count: int) -> bool:
    """A block holds every row only if it has one line per row (lines never contain a raw newline)."""
    return blob is not None and blob.count(b"\n") == count - 1


def _take_block(blob: bytes, count: int, result: ChunkResult, strip_nul: bool) -> bytes:
    block = decode_text_bytes(blob + b"\n", strip_nul=strip_nul)
    if strip_nul and b"\x00" in block:
        k = block.count(b"\x00")
        block = block.replace(b"\x00", b"")
        result.nul_chars_removed += k
    result.rows += count
    result.bytes += len(block)
    return block


def _read_key_ranges(dbapi_conn: Any, query: LineQuery, after: tuple | None, result: ChunkResult,
                     *, strip_nul: bool) -> Iterator[bytes]:
    """GROUP_CONCAT blocks over integer key ranges `k > lo AND k <= lo + span`.

    Without LIMIT the aggregate needs no derived table, so MySQL never materializes a temporary
    table (which goes to disk as soon as a row holds TEXT or BLOB). The span adapts: it doubles
    while the keys are sparse, halves when a block comes back truncated, and an empty range jumps
    straight to the next existing key. The checkpoint key is the range end, so a resumed read
    starts exactly after the last block committed.
    """
    ks = query.keyset
    assert ks is not None
    k = ks.quote(ks.columns[0])
    base_conds, base_params = query.conditions(None)
    base = " AND ".join(c for c in base_conds if c != "1=1") or "1=1"
    cur = dbapi_conn.cursor()
    remaining = query.batch_size
    target = max(1, query.group_rows)
    span = target
    try:
        if after is None:
            cur.execute(f"SELECT MIN({k}) FROM {query.table_sql} WHERE {base}", base_params)
            first = cur.fetchone()[0]
            if first is None:
                return
            lo = int(first) - 1
        else:
            lo = int(after[0])
        while remaining > 0:
            width = max(1, min(span, remaining))
            hi = lo + width
            cur.execute(f"SELECT SUM({query.count_sql()}), COUNT(*), "
                        f"CAST(GROUP_CONCAT({query.line_expr} SEPARATOR '\\n') AS BINARY) "
                        f"FROM {query.table_sql} WHERE {base} AND {k} > %s AND {k} <= %s", [*base_params, lo, hi])
            flagged, count, blob = cur.fetchone()
            count = int(count)
            if count == 0:
                cur.execute(f"SELECT MIN({k}) FROM {query.table_sql} WHERE {base} AND {k} > %s", [*base_params, hi])
                nxt = cur.fetchone()[0]
                if nxt is None:
                    return
                lo = int(nxt) - 1
                continue
            if not _complete(blob, count):
                if width == 1:
                    raise unprintable_row(query.table_sql, (hi,), dbapi_conn)
                span = max(1, width // 2)
                continue
            block = _take_block(blob, count, result, strip_nul)
            result.flagged += int(flagged or 0)
            result.last_key = (hi,)
            remaining -= count
            lo = hi
            if count * 2 < width:
                span = min(width * 2, target * 64)  # sparse keys: widen, the bytes stay bounded by count
            elif count >= target:
                span = target
            yield block
    finally:
        cur.close()


def _read_rows(dbapi_conn: Any, query: LineQuery, after: tuple | None, result: ChunkResult,
               *, strip_nul: bool) -> Iterator[bytes]:
    """Row by row from a server-side cursor (tables without a key, and the fallback).

    A NULL line means MySQL could not build the row (it exceeded max_allowed_packet): that is an
    error, never a silently missing row.
    """
    sql, params = query.sql(after)
    nkey = len(query.keyset.columns) if query.keyset else 0
    cur = dbapi_conn.cursor(pymysql.cursors.SSCursor)
    try:
        cur.execute(sql, params)
        pending: list[bytes] = []
        pending_bytes = 0
        while True:
            rows = cur.fetchmany(FETCH_ROWS)
            if not rows:
                break
            lines = [r[nkey] for r in rows] if nkey else [r[0] for r in rows]
            if None in lines:
                bad = rows[lines.index(None)][:nkey]
                raise unprintable_row(query.table_sql, tuple(bad) if nkey else None, None)
            result.flagged += sum(int(r[-1] or 0) for r in rows)
            block = decode_text_bytes(b"\n".join(lines) + b"\n", strip_nul=strip_nul)
            if strip_nul and b"\x00" in block:
                n = block.count(b"\x00")
                block = block.replace(b"\x00", b"")
                result.nul_chars_removed += n
            result.rows += len(rows)
            result.bytes += len(block)
            if nkey:
                result.last_key = tuple(rows[-1][:nkey])
            pending.append(block)
            pending_bytes += len(block)
            if pending_bytes >= BLOCK_BYTES:
                yield b"".join(pending)
                pending, pending_bytes = [], 0
        if pending:
            yield b"".join(pending)
    finally:
        try:
            cur.close()  # drains an unfinished unbuffered result so the connection stays usable
        except Exception:  # noqa: BLE001 - the connection is discarded by the caller on error
            pass


_DONE = object()


@dataclass
class Prefetcher:
    """Runs an iterator in a thread, `depth` items ahead of the consumer."""

    source: Iterator[bytes]
    depth: int = 4
    _q: queue.Queue = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._q = queue.Queue(maxsize=self.depth)

    def _run(self) -> None:
        try:
            for item in self.source:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put_final(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put_final(e)

    def _put_final(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[bytes]:
        self._thread = threading.Thread(target=self._run, name="etl-reader", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)


class BlockFile:
    """A read-only file over an iterator of byte blocks, for psycopg2 `copy_expert`."""

    def __init__(self, blocks: Iterator[bytes]):
        self._it = iter(blocks)
        # psycopg2 turns an exception raised in read() into QueryCanceled("error in .read() call");
        # the caller re-raises this one instead (a DataError naming the row stays a DataError).
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:  # noqa: ARG002 - psycopg2 accepts any length
        try:
            for block in self._it:
                if block:
                    return block
        except BaseException as e:
            self.error = e
            raise
        return b""

    def readline(self, size: int = -1) -> bytes:  # pragma: no cover - COPY uses read()
        return self.read(size)

