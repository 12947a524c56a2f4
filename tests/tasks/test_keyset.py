"""tasks/keyset.py: the keyset arithmetic (pure functions, no database).

What the SQL says is checked as text and as the parameters bound; that paging with it visits every
row once in the server's order is what tests/test_keys.py checks on the real servers.
"""
from __future__ import annotations

import pytest

from tasks.errors import SchemaError
from tasks.identifiers import mysql_ident
from tasks.keyset import Keyset
from tasks.mysql_schema import TableSchema
from tests.tasks.test_drift import col


def test_from_the_start_is_no_condition() -> None:
    assert Keyset(("id",), mysql_ident).after(None) == ("1=1", [])


def test_single_column_is_one_comparison() -> None:
    assert Keyset(("id",), mysql_ident).after((41,)) == ("((`id` > %s))", [41])


def test_composite_key_is_spelled_out_as_index_ranges() -> None:
    cond, params = Keyset(("a", "b", "c"), mysql_ident).after((1, "x", 7))
    assert cond == "((`a` > %s) OR (`a` = %s AND `b` > %s) OR (`a` = %s AND `b` = %s AND `c` > %s))"
    assert params == [1, 1, "x", 1, "x", 7]


def test_order_and_select_lists_follow_the_key_order() -> None:
    ks = Keyset(("b", "a"), mysql_ident)
    assert ks.order_by == "`b`, `a`"
    assert ks.order_by_desc == "`b` DESC, `a` DESC"
    assert ks.select_list == "`b`, `a`"


def test_a_change_column_that_is_the_key_is_listed_once() -> None:
    ks = Keyset(("id", "id", "other"), mysql_ident)
    assert ks.columns == ("id", "other")
    assert ks.after((3, 4))[1] == [3, 3, 4]


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Keyset(("a", "b"), mysql_ident).after((1,))


def test_names_are_quoted_by_the_given_function() -> None:
    assert Keyset(("we`ird",), mysql_ident).after((1,))[0] == "((`we``ird` > %s))"


def _schema(*cols, key=("id",)) -> TableSchema:  # noqa: ANN002
    return TableSchema(database="db", name="t", columns=tuple(cols), primary_key=tuple(key), estimated_rows=0,
                       data_length=0)


def test_enum_key_binds_its_position_as_order_by_sorts_it() -> None:
    ks = Keyset.for_table(_schema(col("enum('small','medium','large')", name="size")), ["size"], mysql_ident)
    assert not ks.max_is_last  # MAX(enum) compares the text
    assert ks.after(("medium",)) == ("((`size` > %s))", [2])
    assert ks.bind("size", b"large") == 3
    assert ks.bind("size", "") == 0  # the error value, index 0
    assert ks.bind("size", 2) == 2  # already a position
    assert ks.bind("size", None) is None
    assert ks.bind("size", "MEDIUM  ") == 2  # a _ci PAD SPACE column compares this equal
    with pytest.raises(ValueError, match="not a member"):
        ks.bind("size", "huge")


def test_set_key_binds_its_bit_mask() -> None:
    ks = Keyset.for_table(_schema(col("set('a','b','c')", name="flags")), ["flags"], mysql_ident)
    assert ks.bind("flags", "a,c") == 0b101
    assert ks.bind("flags", "b") == 0b010
    assert ks.bind("flags", "") == 0


def test_plain_columns_bind_as_they_are() -> None:
    ks = Keyset.for_table(_schema(col("int(11)", name="id"), col("varchar(10)", name="code")), ["id", "code"],
                          mysql_ident)
    assert ks.max_is_last
    assert ks.after((5, "x"))[1] == [5, 5, "x"]


@pytest.mark.parametrize("column_type", ["float", "double", "real"])
def test_floating_point_key_is_refused_naming_table_and_column(column_type) -> None:  # noqa: ANN001
    with pytest.raises(SchemaError) as e:
        Keyset.for_table(_schema(col(column_type, name="score")), ["score"], mysql_ident)
    assert "table 't': key column 'score'" in str(e.value) and "tables.t.primary_key" in str(e.value)
