"""Key-range checksums of one table on the source and the replica, computed in SQL.

The replica's key space (ours, cheap to read) is cut into ranges of `page` keys (low exclusive,
high inclusive, boundaries found by keyset paging, tasks/keyset.py). For each range both sides
compute COUNT(*) and the SUM of a 60-bit hash of every row's exact canonical text (the text
`etl verify` compares source and replica by, tasks/verify.exact_row_sql): nothing per row reaches
Python. A range whose pair differs is split `fanout` ways (boundaries again from the replica) until
it holds at most `leaf` replica rows; those leaves are what the checksum mode re-copies.

Production is read with one bounded query at a time per table (the table holds one source
connection, the run's pool caps them at ETL_MAX_SOURCE_QUERIES): the source's aggregate reads at
most the replica's count + 1 rows of the range (`LIMIT`), which decides equality exactly (more
rows than the replica has is a difference already), so a burst of inserts in the source never
turns one checksum query into a scan of the burst.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tasks.keyset import Keyset

PAGE = 20_000  # rows per top-level range
LEAF = 500  # a differing range this small (replica rows) is re-copied, not split further
FANOUT = 8  # a differing larger range is split this many ways


@dataclass
class Range:
    """Keys in (low, high]; None: open at that end."""

    low: tuple | None
    high: tuple | None
    replica_rows: int = 0
    source_rows: int = 0  # at most replica_rows + 1 (the source query's cap)


@dataclass
class ChecksumResult:
    ranges: int = 0  # ranges compared, every level
    queries: int = 0  # checksum queries sent to the source
    replica_rows: int = 0  # rows of the replica (top-level ranges)
    differing: list[Range] = field(default_factory=list)  # leaf ranges to re-copy, in key order


def range_where(ks: Keyset, low: tuple | None, high: tuple | None) -> tuple[str, list[Any]]:
    """(condition, parameters) for keys in (low, high]."""
    cond, params = ks.after(low)
    if high is not None:
        hcond, hparams = ks.after(high)
        cond, params = f"{cond} AND NOT {hcond}", [*params, *hparams]
    return cond, params


def split_points(count: int, fanout: int) -> list[int]:
    """Offsets (1-based row numbers inside a range of `count` rows) of the inner boundaries that cut
    it into at most `fanout` parts of nearly equal size; empty when it cannot be split."""
    if count <= 1 or fanout <= 1:
        return []
    parts = min(fanout, count)
    return sorted({round(count * i / parts) for i in range(1, parts)} - {0, count})


def subranges(low: tuple | None, high: tuple | None, cuts: list[tuple]) -> list[tuple[tuple | None, tuple | None]]:
    """(low, high] cut at the keys `cuts` (in order, inside the range): consecutive, covering it exactly."""
    edges = [low, *cuts, high]
    return list(zip(edges[:-1], edges[1:]))


def _aggregate(cur: Any, table_sql: str, hash_sql: str, ks: Keyset, where: str, params: list[Any],
               cap: int | None) -> tuple[int, int]:
    if cap is None:
        cur.execute(f"SELECT COUNT(*), COALESCE(SUM({hash_sql}), 0) FROM {table_sql} WHERE {where}", params)
    else:
        cur.execute(f"SELECT COUNT(*), COALESCE(SUM(h), 0) FROM (SELECT {hash_sql} AS h FROM {table_sql} "
                    f"WHERE {where} ORDER BY {ks.order_by} LIMIT {int(cap)}) AS t", params)
    n, s = cur.fetchone()
    return int(n), int(s)


def _boundary(cur: Any, replica_sql: str, ks: Keyset, where: str, params: list[Any], offset: int) -> tuple | None:
    cur.execute(f"SELECT {ks.select_list} FROM {replica_sql} WHERE {where} ORDER BY {ks.order_by} "
                f"LIMIT 1 OFFSET {int(offset) - 1}", params)
    row = cur.fetchone()
    return tuple(row) if row else None


def whole_table(src_cur: Any, rep_cur: Any, *, source_sql: str, replica_sql: str, hash_sql: str) -> bool:
    """A keyless table compared whole: True when the source and the replica hold the same rows."""
    rn, rs = _aggregate(rep_cur, replica_sql, hash_sql, Keyset((), str), "1=1", [], None)
    # Bounded like a range: a source with more rows than the replica differs already.
    src_cur.execute(f"SELECT COUNT(*), COALESCE(SUM(h), 0) FROM (SELECT {hash_sql} AS h FROM {source_sql} "
                    f"LIMIT {rn + 1}) AS t")
    sn, ss = (int(x) for x in src_cur.fetchone())
    return (rn, rs) == (sn, ss)


def differing_ranges(src_cur: Any, rep_cur: Any, *, source_sql: str, replica_sql: str, ks: Keyset, hash_sql: str,
                     page: int = PAGE, leaf: int = LEAF, fanout: int = FANOUT) -> ChecksumResult:
    """The leaf ranges (key order) whose rows differ between the source and the replica."""
    result = ChecksumResult()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-checksum") as pool:
        def compare(low: tuple | None, high: tuple | None) -> Range:
            where, params = range_where(ks, low, high)
            rn, rs = _aggregate(rep_cur, replica_sql, hash_sql, ks, where, params, None)
            # The source's aggregate runs beside the replica's next one would; here one at a time per
            # table, each bounded by the replica's count.
            sn, ss = pool.submit(_aggregate, src_cur, source_sql, hash_sql, ks, where, params, rn + 1).result()
            result.ranges += 1
            result.queries += 1
            return Range(low, high, rn, sn), (rn, rs) != (sn, ss)

        def drill(r: Range) -> None:
            stack = [r]
            while stack:
                cur_r = stack.pop()
                if cur_r.replica_rows <= leaf:
                    result.differing.append(cur_r)
                    continue
                where, params = range_where(ks, cur_r.low, cur_r.high)
                cuts = []
                for off in split_points(cur_r.replica_rows, fanout):
                    b = _boundary(rep_cur, replica_sql, ks, where, params, off)
                    if b is not None and (not cuts or b != cuts[-1]):
                        cuts.append(b)
                parts = []
                for lo, hi in subranges(cur_r.low, cur_r.high, cuts):
                    d, differs = compare(lo, hi)
                    if differs:
                        parts.append(d)
                stack.extend(reversed(parts))  # depth first, key order kept

        low: tuple | None = None
        while True:
            where, params = ks.after(low)
            high = _boundary(rep_cur, replica_sql, ks, where, params, page)
            d, differs = compare(low, high)
            result.replica_rows += d.replica_rows
            if differs:
                drill(d)
            if high is None:
                break
            low = high
    return result
