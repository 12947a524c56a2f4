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
