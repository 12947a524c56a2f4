"""What drift is applied in place and what stops a table (tasks/drift.py; pure functions, no database)."""
from __future__ import annotations

import pytest

from tasks.drift import compare, enum_change, hold_back_tightening, is_tightening, is_widening, refuse
from tasks.errors import SchemaError
from tasks.mysql_schema import Column, TableSchema


def col(column_type: str, *, name: str = "c", nullable: bool = True, charset: str | None = None,
        **kw) -> Column:
    """A Column as read_table_schema builds it from `column_type` (char_length, precision, ... derived)."""
    import re

    data_type = re.match(r"\w+", column_type).group(0).lower()
    m = re.match(r"\w+\((\d+)(?:,(\d+))?\)", column_type)
    n, s = (int(m.group(1)), int(m.group(2) or 0)) if m else (None, None)
    text = data_type in ("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set")
    base = dict(name=name, data_type=data_type, column_type=column_type, nullable=nullable,
                char_length=n if data_type in ("char", "varchar", "binary", "varbinary") else None,
                precision=n if data_type == "decimal" else None, scale=s if data_type == "decimal" else None,
                datetime_precision=n if data_type in ("datetime", "timestamp", "time") else None,
                charset=charset or ("utf8mb4" if text else None), extra="", default=None)
    base.update(kw)
    return Column(**base)


@pytest.mark.parametrize(("old", "new"), [
    ("int(11)", "bigint(20)"),
    ("int(10) unsigned", "bigint(20)"),
    ("varchar(20)", "varchar(100)"),
    ("char(4)", "varchar(4)"),
    ("char(4)", "varchar(8)"),
    ("varchar(255)", "text"),
    ("varchar(16383)", "text"),  # 65,532 bytes in utf8mb4: fits
    ("char(10)", "mediumtext"),
    ("tinytext", "text"),
    ("text", "longtext"),
    ("varbinary(16)", "blob"),
    ("varbinary(255)", "tinyblob"),
    ("varbinary(16)", "varbinary(32)"),
    ("tinyblob", "mediumblob"),
    ("int(11)", "decimal(10,0)"),
    ("int(11)", "decimal(14,2)"),
    ("smallint(6)", "decimal(5,0)"),
    ("bigint(20) unsigned", "decimal(20,0)"),
    ("decimal(10,2)", "decimal(12,4)"),
    ("datetime", "datetime(3)"),
    ("float", "double"),
    ("enum('a','b')", "enum('a','b','c')"),
    ("set('x','y')", "set('x','y','z')"),
    ("enum('it''s','b')", "enum('it''s','b','c')"),
])
def test_widenings(old, new) -> None:
    assert is_widening(col(old), col(new))
    assert is_widening(col(old, nullable=False), col(new, nullable=True))  # and relaxed at once


@pytest.mark.parametrize(("old", "new"), [
    ("bigint(20)", "int(11)"),
    ("int(11)", "int(10) unsigned"),
    ("varchar(100)", "varchar(20)"),
    ("varchar(16384)", "text"),  # 65,536 bytes in utf8mb4: TEXT holds 65,535
    ("varchar(300)", "tinytext"),
    ("text", "varchar(255)"),
    ("varchar(10)", "char(10)"),  # CHAR drops trailing spaces: stored values would change
    ("binary(4)", "binary(8)"),  # BINARY pads with zero bytes: values would change
    ("varbinary(300)", "tinyblob"),
    ("int(11)", "decimal(9,0)"),
    ("int(11)", "decimal(11,2)"),
    ("decimal(10,2)", "decimal(10,3)"),
    ("double", "float"),
    ("datetime(3)", "datetime"),
    ("enum('a','b')", "enum('b','a')"),
    ("enum('a','b')", "enum('a')"),
    ("enum('a','b')", "enum('c','a','b')"),
    ("set('x','y')", "set('y','x')"),
    ("enum('a','b')", "set('a','b')"),
    ("int(11)", "varchar(20)"),
    ("date", "datetime"),
])
def test_not_widenings(old, new) -> None:
    assert not is_widening(col(old), col(new))


def test_nullability_counts_one_way() -> None:
    for t in ("int(11)", "date", "enum('a')", "double", "json", "bit(1)", "year(4)", "point", "varchar(5)"):
        assert is_widening(col(t, nullable=False), col(t, nullable=True)), t
        assert not is_widening(col(t, nullable=True), col(t, nullable=False)), t
        assert is_tightening(col(t, nullable=True), col(t, nullable=False)), t
    assert is_tightening(col("int(11)"), col("bigint(20)", nullable=False))
    assert not is_tightening(col("bigint(20)"), col("int(11)", nullable=False))


def test_charset_change_is_not_a_widening() -> None:
    assert not is_widening(col("varchar(10)", charset="latin1"), col("varchar(20)", charset="utf8mb4"))
    assert not is_widening(col("varchar(10)", charset="latin1"), col("text", charset="utf8mb4"))
    assert is_widening(col("varchar(255)", charset="latin1"), col("tinytext", charset="latin1"))


def test_enum_change_explains_itself() -> None:
    assert enum_change(col("enum('a','b')"), col("enum('a','b','c')")) is None
    assert "values ['b'] were removed from the ENUM" in enum_change(col("enum('a','b')"), col("enum('a')"))
    assert "reordered" in enum_change(col("set('x','y')"), col("set('y','x')"))
    assert enum_change(col("int(11)"), col("int(11)")) is None


def _table(*cols: Column, pk: tuple[str, ...] = ("id",)) -> TableSchema:
    return TableSchema("db", "t", (col("int(11)", name="id", nullable=False), *cols), pk, 0, 0)


def test_compare_default_and_comment_changes_are_no_drift() -> None:
    old = _table(col("varchar(10)", name="v", default="'a'", extra=""))
    new = _table(col("varchar(10)", name="v", default="'b'", extra="on update current_timestamp()"))
    assert not compare(new, old).any


def test_compare_sorts_drift_and_refuses_in_one_line() -> None:
    rep = _table(col("varchar(10)", name="v"), col("enum('a','b')", name="e"), col("int(11)", name="n"),
                 col("int(11)", name="gone"), col("varchar(5)", name="tight"))
    src = _table(col("text", name="v"), col("enum('b','a')", name="e"), col("int(11)", name="n", nullable=True),
                 col("varchar(5)", name="tight", nullable=False), col("int(11)", name="new"))
    d = compare(src, rep)
    assert [c.name for c in d.added] == ["new"]
    assert [new.name for _, new in d.widened] == ["v"]
    assert [new.name for _, new in d.tightened] == ["tight"]
    assert d.problems == ["column 'e': its ENUM values were reordered or inserted before existing ones (stored "
                          "values would change meaning)", "column 'gone' was dropped in the source"]
    msg = str(refuse("t", d))
    assert "\n" not in msg and msg.startswith("table 't': ") and "`etl run --full-refresh --tables t`" in msg


def test_tightening_waits_for_nulls_unless_the_type_changed_too() -> None:
    rep = _table(col("varchar(5)", name="a"), col("int(11)", name="b"), col("int(11)", name="c"))
    src = _table(col("varchar(5)", name="a", nullable=False), col("int(11)", name="b", nullable=False),
                 col("bigint(20)", name="c", nullable=False))
    d = compare(src, rep)
    notes = hold_back_tightening("t", d, {"a": 3, "b": 0, "c": 0})
    assert [new.name for _, new in d.tightened] == ["b", "c"]
    assert notes == ["column a became NOT NULL in the source; the replica keeps it NULL-able until its 3 row(s) "
                     "holding NULL are merged (retried next run)"]
    d = compare(src, rep)
    with pytest.raises(SchemaError, match=r"^table 't': column 'c' changed from int\(11\) to bigint\(20\) NOT NULL "
                                          r"but the replica still holds NULL in it in 2 row\(s\).*--tables t`$"):
        hold_back_tightening("t", d, {"c": 2})
