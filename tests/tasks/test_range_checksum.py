"""The range arithmetic of checksum mode (tasks/range_checksum.py): split points and subranges."""
from __future__ import annotations

import pytest

from tasks.identifiers import mysql_ident
from tasks.keyset import Keyset
from tasks.range_checksum import range_where, split_points, subranges


@pytest.mark.parametrize("count,fanout", [(2, 8), (9, 8), (500, 8), (501, 8), (20_000, 8), (7, 3), (1000, 1)])
def test_split_points_cut_into_nearly_equal_parts(count, fanout) -> None:
    cuts = split_points(count, fanout)
    assert cuts == sorted(set(cuts)) and all(0 < c < count for c in cuts)
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, count])]
    assert sum(sizes) == count and len(sizes) <= max(fanout, 1)
    if fanout > 1 and count >= fanout:
        assert len(sizes) == fanout and max(sizes) - min(sizes) <= 1


def test_nothing_to_split() -> None:
    assert split_points(1, 8) == [] and split_points(0, 8) == [] and split_points(100, 1) == []


def test_subranges_cover_the_range_exactly() -> None:
    assert subranges(None, None, []) == [(None, None)]
    assert subranges((1,), (9,), [(3,), (6,)]) == [((1,), (3,)), ((3,), (6,)), ((6,), (9,))]
    assert subranges(None, (9,), [(3,)]) == [(None, (3,)), ((3,), (9,))]


def test_range_where_is_low_exclusive_high_inclusive() -> None:
    ks = Keyset(("a", "b"), mysql_ident)
    assert range_where(ks, None, None) == ("1=1", [])
    cond, params = range_where(ks, (1, "x"), (2, "y"))
    assert cond == ("((`a` > %s) OR (`a` = %s AND `b` > %s)) AND NOT ((`a` > %s) OR (`a` = %s AND `b` > %s))")
    assert params == [1, 1, "x", 2, 2, "y"]
    cond, params = range_where(Keyset(("id",), mysql_ident), None, (5,))
    assert cond == "1=1 AND NOT ((`id` > %s))" and params == [5]


# --- Against the server: the bucket expression and the bisection --------------------------------

from tasks.range_checksum import (Range, bucket_sql, differing_ranges, merge_adjacent,  # noqa: E402
                                  ranges_where, recopy_groups)
from tasks.verify import row_hash_sql  # noqa: E402
from tests.conftest import mysql_connect  # noqa: E402

_KEYED = ("CREATE TABLE {t} (a INT NOT NULL, b VARCHAR(12) COLLATE utf8mb4_general_ci NOT NULL, "
          "e ENUM('z', 'a', 'm') NOT NULL, v VARCHAR(40) NULL, PRIMARY KEY (a, b, e))")


def _keyed_rows(n: int) -> list[tuple]:
    # Mixed case and trailing-space-free strings: the server's case-insensitive order is not Python's.
    return [(i // 6, ("Ab", "aC", "b", "B1", "ä", "Z")[i % 6] + str(i % 4), ("z", "a", "m")[i % 3], f"v{i}")
            for i in range(n)]


def _keyset() -> Keyset:
    return Keyset(("a", "b", "e"), mysql_ident, members={"e": ("z", "a", "m")})


def test_bucket_sql_numbers_rows_as_the_servers_order_by_sorts_them(etl_env) -> None:
    conn = mysql_connect(etl_env.source_db)
    with conn.cursor() as cur:
        cur.execute(_KEYED.format(t="k"))
        cur.executemany("INSERT INTO k VALUES (%s, %s, %s, %s)", _keyed_rows(300))
        cur.execute("SELECT a, b, e FROM k ORDER BY a, b, e")
        ordered = [tuple(r) for r in cur.fetchall()]
        for step in (1, 7, 64, 299):
            cuts = ordered[step - 1::step]
            bucket, params = bucket_sql(_keyset(), cuts)
            cur.execute(f"SELECT {bucket} FROM k ORDER BY a, b, e", params)
            got = [int(r[0]) for r in cur.fetchall()]
            # Row i (0-based, in ORDER BY order) lies after the cuts at rows step-1, 2*step-1, ... below it.
            assert got == [i // step for i in range(len(ordered))], step
    conn.close()


def _pair(env, rows: list[tuple]) -> tuple:
    boot = mysql_connect()
    with boot.cursor() as cur:  # the fixture drops it afterwards (a run would create it)
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{env.replica_db}` CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_general_ci")
    boot.close()
    src, rep = mysql_connect(env.source_db), mysql_connect(env.replica_db)
    for c in (src, rep):
        with c.cursor() as cur:
            cur.execute(_KEYED.format(t="k"))
            cur.executemany("INSERT INTO k VALUES (%s, %s, %s, %s)", rows)
    return src, rep


def _compare(env, src, rep, **kw):  # noqa: ANN001, ANN202
    from tasks.identifiers import mysql_qualified

    cols = "CONCAT_WS('|', a, b, e, IFNULL(v, '~'))"
    return differing_ranges(src.cursor(), rep.cursor(), source_sql=mysql_qualified(env.source_db, "k"),
                            replica_sql=mysql_qualified(env.replica_db, "k"), ks=_keyset(),
                            hash_sql=row_hash_sql(cols), **kw)


def _apply(env, src, rep, ranges: list[Range]) -> int:
    """Re-copy the ranges as the checksum mode does; returns the source rows copied."""
    where, params = ranges_where(_keyset(), ranges)
    with src.cursor() as s, rep.cursor() as r:
        r.execute(f"DELETE FROM k WHERE {where}", params)
        s.execute(f"SELECT a, b, e, v FROM k WHERE {where}", params)
        rows = s.fetchall()
        r.executemany("INSERT INTO k VALUES (%s, %s, %s, %s)", rows)
    return len(rows)


def _same(env) -> bool:
    conn = mysql_connect()
    with conn.cursor() as cur:
        out = []
        for db in (env.source_db, env.replica_db):
            cur.execute(f"SELECT a, CAST(b AS BINARY), e, v FROM `{db}`.k ORDER BY a, b, e")
            out.append(cur.fetchall())
    conn.close()
    return out[0] == out[1]


@pytest.mark.parametrize("page,fanout", [(None, None), (500, 4), (97, 1024)])
def test_bisection_finds_the_changed_rows_and_only_them(etl_env, page, fanout) -> None:
    src, rep = _pair(etl_env, _keyed_rows(3000))
    with src.cursor() as cur:
        cur.execute("UPDATE k SET v = 'edited' WHERE a IN (3, 250, 499)")  # 18 rows, in place
        cur.execute("UPDATE k SET b = UPPER(b) WHERE a = 100 AND b = 'ab0'")  # the same key to the server
        cur.execute("DELETE FROM k WHERE a IN (7, 300) AND e = 'a'")  # 4 rows
        cur.executemany("INSERT INTO k VALUES (%s, %s, %s, %s)",  # between existing keys, and past the end
                        [(40, "Ab00", "z", "new"), (260, "b", "m", "new"), (900, "x", "z", "new")])
    assert not _same(etl_env)
    found = _compare(etl_env, src, rep, page=page, fanout=fanout)
    rows = sum(r.replica_rows for r in found.differing)
    # 18 edited + 1 re-cased + 4 deleted rows, each inserted row's successor in its leaf (at most 3),
    # and where an insert made a range's source read stop at its cap (replica rows + 1), the
    # sub-range it stopped in (at most 3 more).
    assert 23 <= rows <= 29, [(r.low, r.high, r.replica_rows) for r in found.differing]
    assert _apply(etl_env, src, rep, found.differing) <= 19 + 3 + 3 + 3
    assert _same(etl_env)
    assert not _compare(etl_env, src, rep, page=page, fanout=fanout).differing
    src.close()
    rep.close()


def _rows_read(cur) -> int:  # noqa: ANN001
    # Rows read in key order, and rows scanned (the statements' own temporary tables included).
    cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_rnd_next')")
    return sum(int(v) for _, v in cur.fetchall())


def test_the_sources_reads_stay_bounded_by_the_replica_and_the_change(etl_env) -> None:
    """A burst of inserts past the replica's last key: each checksum statement reads at most the
    replica's rows of its ranges + 1, so the source is read a few times the replica per level (its
    GROUP BY's temporary table counted too), not the 100,000-row burst."""
    src, rep = _pair(etl_env, _keyed_rows(2000))
    with src.cursor() as cur:
        cur.execute("INSERT INTO k SELECT 1000 + seq, 'n', 'z', 'burst' FROM seq_1_to_100000")
        cur.execute("UPDATE k SET v = 'edited' WHERE a = 150 AND e = 'm'")
    scur = src.cursor()
    before = _rows_read(scur)
    found = _compare(etl_env, src, rep)
    read = _rows_read(scur) - before
    assert read <= (found.levels + 1) * 4 * 2_001, (read, found.levels)
    assert _apply(etl_env, src, rep, found.differing) <= 100_000 + 4
    assert _same(etl_env)
    src.close()
    rep.close()


def test_merge_adjacent_and_recopy_groups() -> None:
    rs = [Range(None, (1,), 1, 1), Range((1,), (2,), 1, 0), Range((5,), (6,), 1, 3), Range((6,), None, 0, 9)]
    merged = merge_adjacent(rs)
    assert [(r.low, r.high, r.replica_rows, r.source_rows) for r in merged] == [
        (None, (2,), 2, 1), ((5,), None, 1, 12)]
    groups = recopy_groups([Range((i,), (i + 1,), 1, 1) for i in range(10)] + [Range((20,), None, 0, 50)], rows=4)
    assert [len(g) for g in groups] == [4, 4, 2, 1]
    assert [len(g) for g in recopy_groups([Range((i,), (i + 1,), 1, 1) for i in range(5)], rows=100, most=2)] == [
        2, 2, 1]


def test_a_bulk_update_is_recopied_as_whole_ranges_not_cut_to_rows(etl_env) -> None:
    src, rep = _pair(etl_env, _keyed_rows(3000))
    with src.cursor() as cur:
        cur.execute("UPDATE k SET v = CONCAT(v, '!') WHERE a % 10 <> 0")  # 90% of the rows
    found = _compare(etl_env, src, rep)
    # One level: most of the table's 1,024 sub-ranges differ, so it is re-copied whole, not row by row.
    assert found.levels == 1 and [(r.low, r.high, r.replica_rows) for r in found.differing] == [(None, None, 3000)]
    _apply(etl_env, src, rep, found.differing)
    assert _same(etl_env)
    src.close()
    rep.close()
