"""Delete propagation: find primary keys that vanished from the source and remove them downstream.

The replica's key space is cut into ranges of `page` keys (boundaries found on the replica, which
is ours). For each range both sides compute COUNT(*) and BIT_XOR(CRC32(key)) in SQL; only ranges
whose aggregates differ are drilled into. The source sees one cheap index-range aggregate per range
and never a full key download.

A drilled range is compared in SQL, never as a Python set difference of raw values: the source's
keys of the range go into a temporary table on the replica connection whose key columns are copied
from the replica table (same types and collations), and the replica's keys without an equal one
there are the deleted ones. "Equal" is then the server's own equality: 'abc' = 'ABC' under a
case-insensitive collation, 'zz' = 'zz ' under PAD SPACE, so a key respelled in the source is
never taken for a deleted one. (The CRC32 aggregate is byte-wise: a respelled key only costs a
drill-down.)

Guard: a partial read or a truncated source table must never empty a table downstream. If more
than `max_fraction` of the table *and* more than `min_rows` rows would go in one run, the table
fails loudly instead and nothing is deleted. Deleting 1 row of 6 is ordinary business.

Rows are deleted from analytics first, then from the replica: if a run stops in between, the
replica still holds the keys, so the next run finds them again and converges.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg2.extras

from tasks.errors import DataError
from tasks.identifiers import execute, mysql_ident, pg_ident, pg_qualified
from tasks.keyset import Keyset

log = logging.getLogger("etl.deletes")


@dataclass
class DeleteResult:
    ranges: int = 0
    ranges_differing: int = 0
    deleted: int = 0
    replica_rows: int = 0


def _key_text(key: tuple[str, ...]) -> str:
    return "CONCAT_WS(0x1f, " + ", ".join(mysql_ident(k) for k in key) + ")" if len(key) > 1 else mysql_ident(key[0])


def _range_where(ks: Keyset, low: tuple | None, high: tuple | None) -> tuple[str, list[Any]]:
    cond, params = ks.after(low)
    if high is not None:
        hcond, hparams = ks.after(high)
        cond, params = f"{cond} AND NOT {hcond}", [*params, *hparams]
    return cond, params


def _aggregate(cur: Any, table_sql: str, key: tuple[str, ...], where: str, params: list[Any]) -> tuple[int, int]:
    cur.execute(f"SELECT COUNT(*), COALESCE(BIT_XOR(CRC32({_key_text(key)})), 0) FROM {table_sql} WHERE {where}", params)
    n, x = cur.fetchone()
    return int(n), int(x)


_SOURCE_KEYS = "`_etl_source_keys`"


def _vanished(src_cur: Any, rep_cur: Any, source_sql: str, replica_sql: str, ks: Keyset, where: str,
              params: list[Any]) -> list[tuple]:
    """Replica keys of one range with no equal key (by the columns' collations) in the source."""
    cols = ks.select_list
    execute(rep_cur, f"DROP TEMPORARY TABLE IF EXISTS {_SOURCE_KEYS}")
    # CREATE ... SELECT copies the key columns' definitions, collations included.
    execute(rep_cur, f"CREATE TEMPORARY TABLE {_SOURCE_KEYS} (PRIMARY KEY ({cols})) "
                     f"SELECT {cols} FROM {replica_sql} LIMIT 0")
    try:
        src_cur.execute(f"SELECT {cols} FROM {source_sql} WHERE {where}", params)
        row = "(" + ", ".join(["%s"] * len(ks.columns)) + ")"
        while True:
            part = src_cur.fetchmany(500)
            if not part:
                break
            rep_cur.execute(f"INSERT INTO {_SOURCE_KEYS} ({cols}) VALUES {', '.join([row] * len(part))}",
                            [v for k in part for v in k])
        same = " AND ".join(f"s.{ks.quote(c)} = r.{ks.quote(c)}" for c in ks.columns)
        rcols = ", ".join(f"r.{ks.quote(c)}" for c in ks.columns)
        # The range condition's unqualified columns are the outer table's (r).
        rep_cur.execute(f"SELECT {rcols} FROM {replica_sql} AS r WHERE {where} AND NOT EXISTS "
                        f"(SELECT 1 FROM {_SOURCE_KEYS} AS s WHERE {same}) ORDER BY {rcols}", params)
        return [tuple(r) for r in rep_cur.fetchall()]
    finally:
        execute(rep_cur, f"DROP TEMPORARY TABLE IF EXISTS {_SOURCE_KEYS}")


def find_deleted_ranges(src_cur: Any, rep_cur: Any, source_sql: str, replica_sql: str, key: Keyset | tuple[str, ...],
                        page: int) -> tuple[list[tuple[tuple | None, tuple | None, int]], DeleteResult]:
    """Ranges (low exclusive, high inclusive, rows missing at least) whose key sets differ.

    `key`: a Keyset (Keyset.for_table: ENUM keys range by position, as ORDER BY sorts them), or
    column names when the key has no ENUM/SET column."""
    ks = key if isinstance(key, Keyset) else Keyset(tuple(key), mysql_ident)
    key = ks.columns
    result = DeleteResult()
    differing = []
    low: tuple | None = None
    # The source aggregates a range while the replica does the same range: each is a scan of an index
    # range, seconds on a big table, and they run on different servers (or at least sessions).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-deletes") as pool:
        while True:
            cond, params = ks.after(low)
            rep_cur.execute(f"SELECT {ks.select_list} FROM {replica_sql} WHERE {cond} ORDER BY {ks.order_by} "
                            f"LIMIT 1 OFFSET {int(page) - 1}", params)
            row = rep_cur.fetchone()
            high = tuple(row) if row else None  # None: the last range runs to the end
            where, wparams = _range_where(ks, low, high)
            source_side = pool.submit(_aggregate, src_cur, source_sql, key, where, wparams)
            rn, rx = _aggregate(rep_cur, replica_sql, key, where, wparams)
            sn, sx = source_side.result()
            result.ranges += 1
            result.replica_rows += rn
            if (rn, rx) != (sn, sx):
                differing.append((low, high, max(rn - sn, 0)))
            if high is None:
                break
            low = high
    result.ranges_differing = len(differing)
    return differing, result


def propagate_deletes(src_cur: Any, rep: Any, pg: Any, *, source_sql: str, replica_sql: str, pg_schema: str,
                      pg_table: str, keyset: Keyset, pg_key: list[str], table: str, page: int,
                      max_fraction: float, min_rows: int) -> DeleteResult:
    """`keyset`: the table's key (Keyset.for_table, so ENUM keys range by position like ORDER BY)."""
    rep_cur = rep.cursor()
    ks, key = keyset, keyset.columns
    differing, result = find_deleted_ranges(src_cur, rep_cur, source_sql, replica_sql, ks, page)
    at_least = sum(d[2] for d in differing)
    guard(table, at_least, result.replica_rows, max_fraction, min_rows)
    doomed: list[tuple] = []
    for low, high, _ in differing:
        where, params = _range_where(ks, low, high)
        doomed.extend(_vanished(src_cur, rep_cur, source_sql, replica_sql, ks, where, params))
    guard(table, len(doomed), result.replica_rows, max_fraction, min_rows)
    if not doomed:
        return result
    pcur = pg.cursor()
    live = pg_qualified(pg_schema, pg_table)
    cols = ", ".join(pg_ident(c) for c in pg_key)
    match = " AND ".join(f"{live}.{pg_ident(c)} = d.{pg_ident(c)}" for c in pg_key)
    psycopg2.extras.execute_values(pcur, f"DELETE FROM {live} USING (VALUES %s) AS d({cols}) WHERE {match}",
                                   doomed, page_size=1000)
    pg.commit()
    row = "(" + ", ".join(["%s"] * len(key)) + ")"
    cols_my = "(" + ", ".join(mysql_ident(k) for k in key) + ")"
    for i in range(0, len(doomed), 500):
        part = doomed[i:i + 500]
        rep_cur.execute(f"DELETE FROM {replica_sql} WHERE {cols_my} IN ({', '.join([row] * len(part))})",
                        [v for k in part for v in k])
    rep.commit()
    result.deleted = len(doomed)
    log.info("%s: %d rows deleted in the source removed from replica and analytics", table, len(doomed))
    return result


def guard(table: str, n: int, total: int, max_fraction: float, min_rows: int) -> None:
    if n > min_rows and total and n > max_fraction * total:
        raise DataError(
            f"table {table!r}: refusing to delete {n:,} of {total:,} rows ({100.0 * n / total:.1f}%) in one run; "
            f"if the source really lost them, reload with `etl run --full-refresh --tables {table}`, or raise "
            f"deletes_max_fraction / deletes_min_rows for this table"
        )
