"""tasks/binlog_source.key_blocker: which keys binlog mode can name exactly (plain function)."""
from __future__ import annotations

import pytest

from tasks.binlog_source import key_blocker
from tasks.mysql_schema import Column, TableSchema


def _schema(*cols: tuple[str, str, str | None]) -> TableSchema:
    return TableSchema(database="db", name="t", primary_key=tuple(c[0] for c in cols), estimated_rows=0,
                       data_length=0, columns=tuple(
                           Column(name=n, data_type=t.split("(")[0].split()[0], column_type=t, nullable=False,
                                  char_length=None, precision=None, scale=None, datetime_precision=None, charset=cs,
                                  extra="", default=None) for n, t, cs in cols))


@pytest.mark.parametrize("cols", [
    [("id", "bigint(20) unsigned", None)],
    [("tenant", "int(11)", None), ("code", "varchar(10)", "utf8mb4")],
    [("code", "char(3)", "latin1"), ("day", "date", None), ("at", "datetime(6)", None)],
    [("amount", "decimal(65,30)", None), ("hash", "varbinary(16)", None)],
])
def test_keys_the_log_names_exactly(cols) -> None:
    assert key_blocker(_schema(*cols), [c[0] for c in cols]) is None


@pytest.mark.parametrize("cols, why", [
    ([("at", "timestamp(3)", None)], "key column 'at' is timestamp(3)"),
    ([("id", "int(11)", None), ("x", "double", None)], "key column 'x' is double"),
    ([("f", "float", None)], "key column 'f' is float"),
    ([("code", "varchar(10)", "utf32")], "key column 'code' is in utf32"),
    ([("code", "char(2)", "ucs2")], "key column 'code' is in ucs2"),
    ([("t", "time", None)], "key column 't' is time"),
])
def test_keys_binlog_mode_refuses(cols, why) -> None:
    assert key_blocker(_schema(*cols), [c[0] for c in cols]) == why
