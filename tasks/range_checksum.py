"""Key-range checksums of one table on the source and the replica, computed in SQL.

The replica's key space (ours, cheap to read) is cut into ranges of `page` keys (low exclusive,
high inclusive, boundaries found by keyset paging, tasks/keyset.py). For each range both sides
compute COUNT(*) and the SUM of a 60-bit hash of every row's exact canonical text (the text
`etl verify` compares source and replica by, tasks/verify.exact_row_sql): nothing per row reaches
Python. A range whose pair differs is bisected: cut at replica keys into up to `fanout` sub-ranges
of nearly equal size, and every sub-range's pair computed by one statement per side (a GROUP BY over
a bucket expression, a binary search over the cut keys), for many differing ranges at once. A
differing sub-range of more than `leaf` replica rows is cut again; the leaves that differ are what
the checksum mode re-copies. With `leaf` 1 a leaf is one replica row and the source's rows between
it and its predecessor (inserts), so an edit moves the edited row alone. A table of one range (most
of a clinic's) is not checksummed whole first: its first level tells as exactly whether it differs. Where most of a range
differs (a bulk update), cutting further saves little: the range is re-copied whole.

Production is read with one bounded query at a time per table (the table holds one source
connection, the run's pool caps them at ETL_MAX_SOURCE_QUERIES): the source's aggregate of a range
reads at most the replica's count + 1 rows of it (`LIMIT`, key order), which decides equality
exactly (more rows than the replica has is a difference already; the sub-ranges past the last row
read are taken as differing), so a burst of inserts never turns one checksum query into a scan of
the burst. The replica's statement runs beside the source's.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tasks.keyset import Keyset

PAGE = 20_000  # rows per top-level range
FANOUT = 1_024  # sub-ranges one differing range is cut into per level, at most
LEAF = 1  # a differing range of at most this many replica rows is re-copied, not cut further
DENSE = 0.5  # a range whose differing sub-ranges hold more than this share of its rows is re-copied whole,
DENSE_MIN_PARTS = 16  # when it was cut into at least this many (fewer say little about the rest)
CUTS_PER_STATEMENT = 2_048  # cut keys per checksum statement (its text stays ~100 KB)
PARTS_PER_STATEMENT = 256  # ranges per checksum statement


@dataclass
class Range:
    """Keys in (low, high]; None: open at that end."""

    low: tuple | None
    high: tuple | None
    replica_rows: int = 0
    source_rows: int = 0  # at most replica_rows + 1 (the source query's cap)
    path: tuple[int, ...] = ()  # position in the bisection (sorts ranges into key order)


@dataclass
class ChecksumResult:
    ranges: int = 0  # ranges compared, every level
    queries: int = 0  # checksum statements sent to the source
    levels: int = 0  # bisection levels below the top-level ranges, deepest
    replica_rows: int = 0  # rows of the replica (top-level ranges)
    differing: list[Range] = field(default_factory=list)  # leaf ranges to re-copy, in key order, adjacent merged


def range_where(ks: Keyset, low: tuple | None, high: tuple | None) -> tuple[str, list[Any]]:
    """(condition, parameters) for keys in (low, high]."""
    cond, params = ks.after(low)
    if high is not None:
        hcond, hparams = ks.after(high)
        cond, params = f"{cond} AND NOT {hcond}", [*params, *hparams]
    return cond, params


def ranges_where(ks: Keyset, ranges: list[Range]) -> tuple[str, list[Any]]:
    """(condition, parameters) for keys in any of `ranges`."""
    conds, params = [], []
    for r in ranges:
        c, p = range_where(ks, r.low, r.high)
        conds.append(f"({c})")
        params.extend(p)
    return " OR ".join(conds) or "1=0", params


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


def bucket_sql(ks: Keyset, cuts: list[tuple]) -> tuple[str, list[Any]]:
    """SQL numbering a row's sub-range: b when cuts[b-1] < key <= cuts[b] (0 up to cuts[0], len(cuts)
    after the last), a binary search over the cut keys, compared by the server the way its ORDER BY
    sorts (tasks/keyset.py): no key is compared in Python."""
    def build(lo: int, hi: int) -> tuple[str, list[Any]]:
        if lo == hi:
            return str(lo), []
        mid = (lo + hi) // 2
        cond, params = ks.after(cuts[mid])
        above, ap = build(mid + 1, hi)
        below, bp = build(lo, mid)
        return f"CASE WHEN {cond} THEN {above} ELSE {below} END", [*params, *ap, *bp]
    return build(0, len(cuts))


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


def _cuts(cur: Any, replica_sql: str, ks: Keyset, parents: list[Range], offsets: list[list[int]]) -> list[list[tuple]]:
    """The replica's keys at the given row numbers inside each parent range: one statement."""
    parts, params = [], []
    for i, (r, offs) in enumerate(zip(parents, offsets)):
        if not offs:
            continue
        where, wp = range_where(ks, r.low, r.high)
        parts.append(f"SELECT {i} AS _etl_p, _etl_rn, {ks.select_list} FROM (SELECT {ks.select_list}, "
                     f"ROW_NUMBER() OVER (ORDER BY {ks.order_by}) AS _etl_rn FROM {replica_sql} WHERE {where}) AS w{i} "
                     f"WHERE _etl_rn IN ({', '.join(str(int(o)) for o in offs)})")
        params.extend(wp)
    out: list[list[tuple]] = [[] for _ in parents]
    if not parts:
        return out
    cur.execute(f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS u ORDER BY _etl_p, _etl_rn", params)
    for row in cur.fetchall():
        out[int(row[0])].append(tuple(row[2:]))
    return out


def _sub_sums(cur: Any, table_sql: str, hash_sql: str, ks: Keyset, parents: list[Range], cuts: list[list[tuple]],
              *, capped: bool) -> dict[tuple[int, int], tuple[int, int]]:
    """{(parent, sub-range): (rows, hash sum)} of every sub-range holding rows: one statement. `capped`
    (the source): each parent read in key order up to its replica count + 1 rows.

    The parts (one per parent) number their rows' keys; the row hash, a long expression on a wide
    table (~3 KB for 45 columns), is written once, over the rows joined back by key, not once per
    part: 60 parts made a 180 KB statement that cost as much as hashing the whole table."""
    keys = [f"_etl_k{j}" for j in range(len(ks.columns))]
    select_keys = ", ".join(f"{ks.quote(c)} AS {k}" for c, k in zip(ks.columns, keys))
    parts, params = [], []
    for i, (r, cs) in enumerate(zip(parents, cuts)):
        bucket, bp = bucket_sql(ks, cs)
        where, wp = range_where(ks, r.low, r.high)
        inner = f"SELECT {i} AS _etl_p, {bucket} AS _etl_b, {select_keys} FROM {table_sql} WHERE {where}"
        if capped:
            inner += f" ORDER BY {ks.order_by} LIMIT {int(r.replica_rows) + 1}"
        parts.append(f"SELECT * FROM ({inner}) AS d{i}")
        params.extend([*bp, *wp])
    on = " AND ".join(f"_etl_t.{ks.quote(c)} = u.{k}" for c, k in zip(ks.columns, keys))
    cur.execute(f"SELECT u._etl_p, u._etl_b, COUNT(*), SUM({hash_sql}) FROM ({' UNION ALL '.join(parts)}) AS u "
                f"JOIN {table_sql} AS _etl_t ON {on} GROUP BY u._etl_p, u._etl_b", params)
    return {(int(p), int(b)): (int(n), int(s)) for p, b, n, s in cur.fetchall()}


def _statements(parents: list[Range], offsets: list[list[int]]) -> list[list[int]]:
    """Parent indexes grouped into statements of bounded size."""
    groups: list[list[int]] = []
    cuts = 0
    for i, offs in enumerate(offsets):
        if not groups or len(groups[-1]) >= PARTS_PER_STATEMENT or cuts + len(offs) > CUTS_PER_STATEMENT:
            groups.append([])
            cuts = 0
        groups[-1].append(i)
        cuts += len(offs)
    return groups


def recopy_groups(ranges: list[Range], *, rows: int, most: int = PARTS_PER_STATEMENT) -> list[list[Range]]:
    """Leaf ranges (key order) in groups re-copied together: at most `most` ranges and about `rows`
    rows (the larger of each range's two counts; a range larger than that is a group of its own)."""
    groups: list[list[Range]] = []
    held = 0
    for r in ranges:
        size = max(r.replica_rows, r.source_rows)
        if not groups or len(groups[-1]) >= most or (groups[-1] and held + size > rows):
            groups.append([])
            held = 0
        groups[-1].append(r)
        held += size
    return groups


def merge_adjacent(ranges: list[Range]) -> list[Range]:
    """Ranges in key order with each run of touching ranges (one's high is the next one's low) as one."""
    out: list[Range] = []
    for r in ranges:
        last = out[-1] if out else None
        if last is not None and last.high is not None and last.high == r.low:
            out[-1] = Range(last.low, r.high, last.replica_rows + r.replica_rows, last.source_rows + r.source_rows,
                            last.path)
        else:
            out.append(r)
    return out


class _Bisect:
    """One table's comparison: the top-level ranges, then differing ranges bisected level by level."""

    def __init__(self, src_cur: Any, rep_cur: Any, pool: ThreadPoolExecutor, *, source_sql: str, replica_sql: str,
                 ks: Keyset, hash_sql: str, leaf: int, fanout: int, result: ChecksumResult) -> None:
        self.src_cur, self.rep_cur, self.pool = src_cur, rep_cur, pool
        self.source_sql, self.replica_sql, self.ks, self.hash_sql = source_sql, replica_sql, ks, hash_sql
        self.leaf, self.fanout, self.result = max(1, leaf), max(2, fanout), result

    def compare(self, low: tuple | None, high: tuple | None, path: tuple[int, ...]) -> tuple[Range, bool]:
        where, params = range_where(self.ks, low, high)
        rn, rs = _aggregate(self.rep_cur, self.replica_sql, self.hash_sql, self.ks, where, params, None)
        sn, ss = self.pool.submit(_aggregate, self.src_cur, self.source_sql, self.hash_sql, self.ks, where, params,
                                  rn + 1).result()
        self.result.ranges += 1
        self.result.queries += 1
        return Range(low, high, rn, sn, path), (rn, rs) != (sn, ss)

    def bisect(self, roots: list[Range]) -> list[Range]:
        """The differing leaves under `roots` (each known to differ), in key order."""
        leaves: list[Range] = []
        level = [r for r in roots if not self._is_leaf(r, leaves)]
        depth = 0
        while level:
            depth += 1
            self.result.levels = max(self.result.levels, depth)
            offsets = [split_points(r.replica_rows, min(self.fanout, -(-r.replica_rows // self.leaf)))
                       for r in level]
            nxt: list[Range] = []
            for group in _statements(level, offsets):
                nxt.extend(self._level(level, offsets, group, leaves))
            level = nxt
        leaves.sort(key=lambda r: r.path)
        return leaves

    def _is_leaf(self, r: Range, leaves: list[Range]) -> bool:
        if r.replica_rows <= self.leaf:
            leaves.append(r)
            return True
        return False

    def _level(self, level: list[Range], offsets: list[list[int]], group: list[int],
               leaves: list[Range]) -> list[Range]:
        parents = [level[i] for i in group]
        cuts = _cuts(self.rep_cur, self.replica_sql, self.ks, parents, [offsets[i] for i in group])
        pending = self.pool.submit(_sub_sums, self.src_cur, self.source_sql, self.hash_sql, self.ks, parents, cuts,
                                   capped=True)
        rep = _sub_sums(self.rep_cur, self.replica_sql, self.hash_sql, self.ks, parents, cuts, capped=False)
        src = pending.result()
        self.result.queries += 1
        nxt: list[Range] = []
        for i, (parent, cs) in enumerate(zip(parents, cuts)):
            subs = subranges(parent.low, parent.high, cs)
            self.result.ranges += len(subs)
            read = sum(src.get((i, b), (0, 0))[0] for b in range(len(subs)))
            # The source's read stopped at its cap: the sub-range it stopped in and those after it are
            # not known to be equal.
            unknown_from = (max((b for b in range(len(subs)) if (i, b) in src), default=0)
                            if read > parent.replica_rows else len(subs))
            differing = []
            for b, (lo, hi) in enumerate(subs):
                r_pair, s_pair = rep.get((i, b), (0, 0)), src.get((i, b), (0, 0))
                if b >= unknown_from or r_pair != s_pair:
                    differing.append(Range(lo, hi, r_pair[0], s_pair[0], (*parent.path, b)))
            if len(subs) >= DENSE_MIN_PARTS and sum(d.replica_rows for d in differing) > DENSE * parent.replica_rows:
                leaves.append(parent)  # most of it differs (a bulk update): cutting further would save little
                continue
            nxt.extend(d for d in differing if not self._is_leaf(d, leaves))
        return nxt


def whole_table(src_cur: Any, rep_cur: Any, *, source_sql: str, replica_sql: str, hash_sql: str) -> bool:
    """A keyless table compared whole: True when the source and the replica hold the same rows."""
    rn, rs = _aggregate(rep_cur, replica_sql, hash_sql, Keyset((), str), "1=1", [], None)
    # Bounded like a range: a source with more rows than the replica differs already.
    src_cur.execute(f"SELECT COUNT(*), COALESCE(SUM(h), 0) FROM (SELECT {hash_sql} AS h FROM {source_sql} "
                    f"LIMIT {rn + 1}) AS t")
    sn, ss = (int(x) for x in src_cur.fetchone())
    return (rn, rs) == (sn, ss)


def differing_ranges(src_cur: Any, rep_cur: Any, *, source_sql: str, replica_sql: str, ks: Keyset, hash_sql: str,
                     page: int | None = None, leaf: int | None = None, fanout: int | None = None) -> ChecksumResult:
    """The leaf ranges (key order, touching ones merged) whose rows differ between the source and the
    replica. `page`, `leaf`, `fanout`: PAGE, LEAF and FANOUT unless given."""
    page, leaf, fanout = page or PAGE, leaf or LEAF, fanout or FANOUT
    result = ChecksumResult()
    leaves: list[Range] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-checksum") as pool:
        bis = _Bisect(src_cur, rep_cur, pool, source_sql=source_sql, replica_sql=replica_sql, ks=ks,
                      hash_sql=hash_sql, leaf=leaf, fanout=fanout, result=result)
        low: tuple | None = None
        n = 0
        while True:
            where, params = ks.after(low)
            high = _boundary(rep_cur, replica_sql, ks, where, params, page)
            if low is None and high is None:
                # The table is one range (most of a clinic's): its first bisection level compares it as
                # exactly as the range's own checksum would, so that pass over both sides is saved.
                rep_cur.execute(f"SELECT COUNT(*) FROM {replica_sql}")
                whole = Range(None, None, int(rep_cur.fetchone()[0]), 0, (0,))
                if whole.replica_rows > leaf:  # (a smaller one is compared, then re-copied only if it differs)
                    result.replica_rows = whole.replica_rows
                    leaves.extend(bis.bisect([whole]))
                    break
            d, differs = bis.compare(low, high, (n,))
            result.replica_rows += d.replica_rows
            if differs:
                leaves.extend(bis.bisect([d]))  # one top-level range bisected at a time
            if high is None:
                break
            low, n = high, n + 1
    result.differing = merge_adjacent(leaves)  # key order: touching leaves as one range
    return result
