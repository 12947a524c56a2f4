"""tasks/union.py on the real PostgreSQL: common types, NULL for a missing column, a failing view alone,
rebuilt only when a clinic's columns change."""
from __future__ import annotations

import secrets
from typing import Iterator

import pytest

from tasks.union import Column, IncompatibleColumn, Member, build_union, common_type
from tests.conftest import pg_connect


def col(t: str, base: str | None = None) -> Column:
    return Column("x", t, base or t.split("(")[0])


@pytest.mark.parametrize("types, expected", [
    ([col("integer"), col("integer")], "integer"),
    ([col("smallint"), col("bigint"), col("integer")], "bigint"),
    ([col("integer"), col("numeric(10,2)", "numeric")], "numeric"),
    ([col("numeric(10,2)", "numeric"), col("numeric(12,4)", "numeric")], "numeric"),
    ([col("bigint"), col("double precision")], "double precision"),
    ([col("character varying(20)", "character varying"), col("text")], "text"),
    ([col("character varying(20)", "character varying"), col("character varying(40)", "character varying")],
     "character varying"),
    ([col("date"), col("timestamp(6) without time zone", "timestamp without time zone")],
     "timestamp(6) without time zone"),
])
def test_common_type(types: list[Column], expected: str) -> None:
    assert common_type("x", [(f"c{i}", c) for i, c in enumerate(types)], table="t") == expected


def test_incompatible_names_clinic_table_column() -> None:
    with pytest.raises(IncompatibleColumn, match=r"^patient\.x is boolean in clinic north but smallint in clinic "
                                                 r"south; "):
        common_type("x", [("north", col("boolean")), ("south", col("smallint"))], table="patient")


@pytest.fixture
def pg() -> Iterator:
    name = f"etlt_{secrets.token_hex(4)}_union"
    admin = pg_connect("postgres")
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn = pg_connect(name)
    conn.autocommit = False
    try:
        yield conn
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _sql(conn, text: str) -> None:  # noqa: ANN001
    with conn.cursor() as cur:
        cur.execute(text)
    conn.commit()


def _rows(conn, sql: str) -> list[tuple]:  # noqa: ANN001
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.rollback()
    return rows


MEMBERS = [Member("north", "raw_north"), Member("south", "raw_south"), Member("east", "raw_east")]


def test_union_views(pg) -> None:  # noqa: ANN001
    _sql(pg, """
        CREATE SCHEMA raw_north; CREATE SCHEMA raw_south; CREATE SCHEMA raw_east;
        CREATE TABLE raw_north.patient ("PatNum" integer PRIMARY KEY, lname varchar(20), fee numeric(10,2));
        CREATE TABLE raw_south.patient ("PatNum" bigint PRIMARY KEY, lname text, fee numeric(10,2), extra date);
        CREATE TABLE raw_east.patient ("PatNum" integer PRIMARY KEY, fee integer);
        INSERT INTO raw_north.patient VALUES (1, 'n1', 1.50), (2, 'n2', NULL);
        INSERT INTO raw_south.patient VALUES (1, 's1', 2.25, '2020-02-29');
        INSERT INTO raw_east.patient VALUES (7, 3);
        CREATE TABLE raw_north.claim (id integer, flag boolean);
        CREATE TABLE raw_south.claim (id integer, flag smallint);
        CREATE TABLE raw_south.only_south (id integer);
        INSERT INTO raw_south.only_south VALUES (5);
        CREATE TABLE raw_north._etl_new_patient (id integer);
    """)
    results = {r.table: r for r in build_union(pg, "raw_all", MEMBERS)}
    assert set(results) == {"patient", "claim", "only_south"}
    assert results["patient"].status == "built" and results["patient"].sources == ["north", "south", "east"]
    assert results["claim"].status == "failed"
    assert results["claim"].error.startswith("raw_all.claim not built: claim.flag is boolean in clinic north but "
                                             "smallint in clinic south")
    assert results["only_south"].status == "built"
    rows = _rows(pg, 'SELECT _source, "PatNum", lname, fee, extra FROM raw_all.patient ORDER BY 1, 2')
    import datetime as dt
    from decimal import Decimal
    assert rows == [("east", 7, None, Decimal("3"), None), ("north", 1, "n1", Decimal("1.50"), None),
                    ("north", 2, "n2", None, None), ("south", 1, "s1", Decimal("2.25"), dt.date(2020, 2, 29))]
    types = dict(_rows(pg, "SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = 'raw_all' AND table_name = 'patient'"))
    assert types == {"_source": "text", "PatNum": "bigint", "lname": "text", "fee": "numeric", "extra": "date"}
    assert _rows(pg, "SELECT * FROM raw_all.only_south") == [("south", 5)]

    # Nothing changed: nothing rebuilt.
    again = {r.table: r.status for r in build_union(pg, "raw_all", MEMBERS)}
    assert again == {"patient": "unchanged", "only_south": "unchanged", "claim": "failed"}

    # A column added in one clinic: that view alone is rebuilt, and shows it.
    _sql(pg, "ALTER TABLE raw_east.patient ADD COLUMN lname varchar(5); UPDATE raw_east.patient SET lname = 'e7'; "
             "ALTER TABLE raw_south.claim ALTER COLUMN flag TYPE boolean USING flag <> 0")
    third = {r.table: r.status for r in build_union(pg, "raw_all", MEMBERS)}
    assert third == {"patient": "built", "only_south": "unchanged", "claim": "built"}
    assert _rows(pg, "SELECT lname FROM raw_all.patient WHERE _source = 'east'") == [("e7",)]

    # The table gone from every clinic: its view is dropped; a view someone else made is left alone.
    _sql(pg, "DROP VIEW raw_all.only_south; DROP TABLE raw_south.only_south; "
             "CREATE TABLE raw_south.only_south (id integer); CREATE VIEW raw_all.mine AS SELECT 1 AS one")
    _sql(pg, "DROP VIEW IF EXISTS raw_all.claim; DROP TABLE raw_north.claim, raw_south.claim")
    fourth = {r.table: r.status for r in build_union(pg, "raw_all", MEMBERS)}
    assert fourth == {"patient": "unchanged", "only_south": "built"}
    assert _rows(pg, "SELECT * FROM raw_all.mine") == [(1,)]
