"""The MySQL -> PostgreSQL type table, column by column (pure functions, no database)."""
from __future__ import annotations

import pytest

from tasks.errors import SchemaError
from tasks.mysql_schema import Column, TableSchema
from tasks.type_mapping import pg_columns, pg_nullable, pg_type


def col(data_type: str, column_type: str | None = None, **kw) -> Column:
    base = dict(name="c", data_type=data_type, column_type=column_type or data_type, nullable=True,
                char_length=None, precision=None, scale=None, datetime_precision=None, charset=None,
                extra="", default=None)
    base.update(kw)
    return Column(**base)


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (col("tinyint", "tinyint(4)"), "smallint"),
        (col("tinyint", "tinyint(3) unsigned"), "smallint"),
        (col("tinyint", "tinyint(1)"), "smallint"),
        (col("smallint", "smallint(5) unsigned"), "integer"),
        (col("mediumint", "mediumint(8) unsigned"), "integer"),
        (col("int", "int(11)"), "integer"),
        (col("int", "int(10) unsigned"), "bigint"),
        (col("bigint", "bigint(20)"), "bigint"),
        (col("bigint", "bigint(20) unsigned"), "numeric(20,0)"),
        (col("decimal", "decimal(65,30)", precision=65, scale=30), "numeric(65,30)"),
        (col("float"), "real"),
        (col("double"), "double precision"),
        (col("bit", "bit(1)"), "bit(1)"),
        (col("bit", "bit(64)"), "bit(64)"),
        (col("year", "year(4)"), "smallint"),
        (col("time", "time(6)", datetime_precision=6), "interval"),
        (col("date"), "date"),
        (col("datetime", "datetime(6)", datetime_precision=6), "timestamp(6)"),
        (col("timestamp", "timestamp", datetime_precision=0), "timestamptz(0)"),
        (col("char", "char(10)", char_length=10), "varchar(10)"),
        (col("varchar", "varchar(255)", char_length=255), "varchar(255)"),
        (col("longtext"), "text"),
        (col("longtext", is_json=True), "jsonb"),
        (col("json"), "jsonb"),
        (col("enum", "enum('a','b')"), "text"),
        (col("set", "set('a','b')"), "text"),
        (col("varbinary", "varbinary(16)"), "bytea"),
        (col("longblob"), "bytea"),
        (col("point"), "text"),
    ],
)
def test_pg_type(column: Column, expected: str) -> None:
    assert pg_type(column) == expected


def test_boolean_only_when_asked_and_only_for_tinyint1() -> None:
    assert pg_type(col("tinyint", "tinyint(1)"), as_boolean=True) == "boolean"
    with pytest.raises(SchemaError, match="only tinyint\\(1\\) or bit\\(1\\) can be boolean"):
        pg_type(col("int", "int(11)"), as_boolean=True)


def test_temporal_columns_accept_null_for_zero_dates() -> None:
    assert pg_nullable(col("date", nullable=False))
    assert pg_nullable(col("datetime", nullable=False))
    assert not pg_nullable(col("int", nullable=False))


def test_unknown_type_names_the_column() -> None:
    with pytest.raises(SchemaError, match="column 'c' has MySQL type 'vector\\(3\\)'"):
        pg_type(col("vector", "vector(3)"))


def test_columns_that_clash_once_lower_cased_are_refused() -> None:
    schema = TableSchema("db", "t", (col("int", name="Id"), col("int", name="ID")), ("Id",), 0, 0)
    with pytest.raises(SchemaError, match="both become 'id'.*column_case: preserve"):
        pg_columns(schema, column_case="lower")
    assert [c.name for c in pg_columns(schema, column_case="preserve")] == ["Id", "ID"]


def test_boolean_column_must_exist() -> None:
    schema = TableSchema("db", "t", (col("int", name="Id"),), ("Id",), 0, 0)
    with pytest.raises(SchemaError, match="boolean_columns names 'IsActive', which is not a column"):
        pg_columns(schema, column_case="lower", boolean_columns=("IsActive",))


def test_columns_alike_in_the_63_bytes_postgresql_keeps_are_refused() -> None:
    base = "x" * 62
    schema = TableSchema("db", "t", (col("int", name=base + "_a"), col("int", name=base + "_b")), (), 0, 0)
    with pytest.raises(SchemaError, match="columns 'x+_a' and 'x+_b' are the same in their first 63 bytes"):
        pg_columns(schema, column_case="lower")
    # Multibyte: 'é' is two bytes, so 32 of them pass 63 bytes; one character more or less differs.
    ok = TableSchema("db", "t", (col("int", name="é" * 31 + "a"), col("int", name="é" * 31 + "b")), (), 0, 0)
    assert len(pg_columns(ok, column_case="lower")) == 2
    clash = TableSchema("db", "t", (col("int", name="é" * 32 + "a"), col("int", name="é" * 32 + "b")), (), 0, 0)
    with pytest.raises(SchemaError, match="first 63 bytes"):
        pg_columns(clash, column_case="lower")


def test_source_column_named_like_the_load_time_column_is_refused() -> None:
    schema = TableSchema("db", "visit", (col("int", "int(11)", name="id"), col("datetime", name="_ETL_Loaded_At")),
                         ("id",), 0, 0)
    with pytest.raises(SchemaError) as e:
        pg_columns(schema, column_case="lower", loaded_at_column="_etl_loaded_at")
    assert str(e.value) == ("table 'visit': column '_ETL_Loaded_At' becomes '_etl_loaded_at' in PostgreSQL, the name "
                            "of the column the ETL adds for the load time; set analytics.loaded_at_column to another name")
    # kept apart by the spelling, by another load-time name, or when no load-time column is added
    assert len(pg_columns(schema, column_case="preserve", loaded_at_column="_etl_loaded_at")) == 2
    assert len(pg_columns(schema, column_case="lower", loaded_at_column="loaded_at")) == 2
    assert len(pg_columns(schema, column_case="lower", loaded_at_column=None)) == 2
