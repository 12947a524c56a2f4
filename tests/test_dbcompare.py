"""Tests of tests/dbcompare.py against the real MariaDB and PostgreSQL servers.

Every test works in its own `cmp_<hex>` MySQL database / PostgreSQL schema, dropped in finally.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import struct
import sys
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dbcompare  # noqa: E402
from dbcompare import assert_mysql_equal, assert_pg_matches_mysql  # noqa: E402

pymysql = pytest.importorskip("pymysql")
psycopg2 = pytest.importorskip("psycopg2")
import psycopg2.extras  # noqa: E402

MYSQL = dict(host=os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), port=int(os.environ.get("TEST_MYSQL_PORT", "3306")),
             user=os.environ.get("TEST_MYSQL_USER", "root"), password=os.environ.get("TEST_MYSQL_PASSWORD", ""))
PG = dict(host=os.environ.get("TEST_PG_HOST", "127.0.0.1"), port=int(os.environ.get("TEST_PG_PORT", "5432")),
          user=os.environ.get("TEST_PG_USER", "postgres"), dbname=os.environ.get("TEST_PG_DB", "test"))
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "all_types.sql"


def _name() -> str:
    return "cmp_" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def my():
    try:
        conn = pymysql.connect(charset="utf8mb4", autocommit=True, init_command="SET time_zone = '+00:00'", **MYSQL)
    except Exception as e:  # pragma: no cover
        pytest.skip(f"MariaDB not reachable: {e}")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def pg():
    try:
        conn = psycopg2.connect(**PG)
    except Exception as e:  # pragma: no cover
        pytest.skip(f"PostgreSQL not reachable: {e}")
    conn.autocommit = True
    yield conn
    conn.close()


@contextmanager
def mysql_db(my):
    name = _name()
    with my.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        with my.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@contextmanager
def pg_schema(pg):
    name = _name()
    with pg.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with pg.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture()
def mdb(my):
    with mysql_db(my) as name:
        yield name


@pytest.fixture()
def psch(pg):
    with pg_schema(pg) as name:
        yield name


def my_exec(my, db, *stmts, args=None):
    with my.cursor() as cur:
        cur.execute(f"USE `{db}`")
        cur.execute("SET sql_mode = ''")
        for s in stmts:
            cur.execute(s, args)


def pg_exec(pg, schema, *stmts, args=None):
    with pg.cursor() as cur:
        cur.execute(f'SET search_path TO "{schema}"')
        for s in stmts:
            cur.execute(s, args)
        cur.execute("SET search_path TO DEFAULT")


# ------------------------------------------------------------------------------------------
# A small hand-built pair of tables that match.
MY_DDL = """
CREATE TABLE Sample (
  id INT NOT NULL PRIMARY KEY,
  i INT NULL,
  iu INT UNSIGNED NULL,
  bu BIGINT UNSIGNED NULL,
  flag TINYINT(1) NULL,
  active TINYINT(1) NULL,
  d DECIMAL(12,4) NULL,
  f FLOAT NULL,
  dbl DOUBLE NULL,
  b5 BIT(5) NULL,
  y YEAR NULL,
  tm TIME(6) NULL,
  dd DATE NULL,
  dtm DATETIME(6) NULL,
  ts TIMESTAMP(6) NULL DEFAULT NULL,
  c CHAR(10) NULL,
  v VARCHAR(50) NULL,
  tx TEXT NULL,
  e ENUM('x','y') NULL,
  s SET('a','b','c') NULL,
  bl BLOB NULL,
  j JSON NULL,
  CamelCol INT NULL
) DEFAULT CHARSET=utf8mb4
"""
MY_ROWS = """
INSERT INTO Sample VALUES
 (1, -2147483648, 4294967295, 18446744073709551615, -128, 1, 12345678.1234, 1e0/3, 1e0/3, b'10101', 2155,
  '-838:59:59.000000', '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', 'ab   ', 'tail  ', CONCAT('a', CHAR(0 USING utf8mb4), 'b'),
  'bogus', '', 0x00FF00, '{"b": [1, 2.50], "a": null}', 7),
 (2, 0, 0, 0, 2, 0, -0.0001, 123456789, 0.1, b'00000', 1901,
  '12:34:56.789012', '2020-00-15', '0001-01-01 00:00:00', '2038-01-19 03:14:07.999999', '', '', 'tab\\there\\nnl', 'y', 'a,c', '', 'null', NULL),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 7, 7, 9223372036854775808, 0, 1, 0, -0e0, 1e308, b'11111', 0, '-00:00:00.000001', '0009-12-04', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01',
  '😀é', 'café 😀', '\\\\N', 'x', 'a,b,c', 0xFF, '12345678901234567890.123456789', -1)
"""
PG_DDL = """
CREATE TABLE sample (
  id integer PRIMARY KEY,
  i integer, iu bigint, bu numeric(20,0), flag smallint, active boolean, d numeric(12,4), f real,
  dbl double precision, b5 bit(5), y smallint, tm interval, dd date, dtm timestamp(6), ts timestamptz(6),
  c varchar(10), v varchar(50), tx text, e text, s text, bl bytea, j jsonb, camelcol integer,
  _etl_loaded_at timestamptz DEFAULT now()
)
"""
PG_ROWS = r"""
INSERT INTO sample (id, i, iu, bu, flag, active, d, f, dbl, b5, y, tm, dd, dtm, ts, c, v, tx, e, s, bl, j, camelcol) VALUES
 (1, -2147483648, 4294967295, 18446744073709551615, -128, true, 12345678.1234, 0.33333334, 0.3333333333333333, B'10101', 2155,
  '-838:59:59', NULL, NULL, NULL, 'ab', 'tail  ', 'ab', '', '', '\x00ff00', '{"a": null, "b": [1, 2.5]}', 7),
 (2, 0, 0, 0, 2, false, -0.0001, 123456792, 0.1, B'00000', 1901,
  '12:34:56.789012', NULL, '0001-01-01 00:00:00', '2038-01-19 03:14:07.999999+00', '', '', E'tab\there\nnl', 'y', 'a,c', '\x', 'null', NULL),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 7, 7, 9223372036854775808, 0, true, 0, 0, 1e308, B'11111', 0, '-00:00:00.000001', '0009-12-04', '9999-12-31 23:59:59.999999',
  '1970-01-01 01:00:01+01', '😀é', 'café 😀', '\N', 'x', 'a,b,c', '\xff', '12345678901234567890.123456789', -1)
"""


@pytest.fixture()
def sample(my, pg, mdb, psch):
    my_exec(my, mdb, MY_DDL, MY_ROWS)
    pg_exec(pg, psch, PG_DDL, PG_ROWS)
    return mdb, psch


def check(my, pg, sample, **kw):
    mdb, psch = sample
    kw.setdefault("boolean_columns", ["active"])
    assert_pg_matches_mysql(my, mdb, pg, psch, "Sample", **kw)


def fails(my, pg, sample, *words, **kw):
    with pytest.raises(AssertionError) as ei:
        check(my, pg, sample, **kw)
    msg = str(ei.value)
    for w in words:
        assert w in msg, msg
    return msg


# ------------------------------------------------------------------------------ PG: passes
def test_matching_tables_pass(my, pg, sample):
    check(my, pg, sample)


def test_fetch_functions(my, pg, sample):
    mdb, psch = sample
    rows = dbcompare.fetch_mysql_rows(my, "Sample", ["id"], db=mdb)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0][13] == "0000-00-00 00:00:00.000000"  # PyMySQL: zero datetime as str
    assert rows[0][9] == b"\x15"  # bit(5) as big-endian bytes
    assert rows[0][7] == pytest.approx(0.333333)  # FLOAT printed with 6 digits
    prow = dbcompare.fetch_pg_rows(pg, psch, "sample", ["id"])
    assert [r[0] for r in prow] == [1, 2, 3, 4]
    assert prow[0][9] == "10101"
    assert prow[0][21] == {"a": None, "b": [1, Decimal("2.5")]}
    assert prow[3][21] == Decimal("12345678901234567890.123456789")
    assert dbcompare.mysql_primary_key(my, mdb, "Sample") == ["id"]
    cols = {c.name: c for c in dbcompare.mysql_columns(my, mdb, "Sample")}
    assert cols["j"].is_json and cols["j"].data_type == "longtext"
    assert cols["flag"].is_tinyint1 and cols["b5"].bit_width == 5 and cols["bu"].unsigned


def test_fetch_leaves_no_transaction_open(my, pg, sample):
    mdb, psch = sample
    c = pymysql.connect(charset="utf8mb4", autocommit=False, **MYSQL)
    p = psycopg2.connect(**PG)
    try:
        dbcompare.fetch_mysql_rows(c, "Sample", ["id"], db=mdb)
        assert not c.server_status & 1
        dbcompare.fetch_pg_rows(p, psch, "sample", ["id"])
        assert p.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        with c.cursor() as cur:
            cur.execute("SELECT @@session.time_zone")
            assert cur.fetchone()[0] == "SYSTEM"  # restored after the UTC read
    finally:
        c.close()
        p.close()


def test_etl_columns_ignored_and_preserve_case(my, pg, sample):
    mdb, psch = sample
    pg_exec(pg, psch, 'ALTER TABLE sample ADD COLUMN "_etl_batch" int', 'ALTER TABLE sample RENAME COLUMN camelcol TO "CamelCol"')
    check(my, pg, sample, column_case="preserve")
    fails(my, pg, sample, "camelcol")  # lower-case expected by default


def test_float_printed_form_is_accepted(my, pg, sample):
    # row 2 holds FLOAT 123456789 (stored 123456792, printed 123457000)
    pg_exec(pg, sample[1], "UPDATE sample SET f = 123457000, d = -0.00010 WHERE id = 2",
            "UPDATE sample SET f = 0.333333 WHERE id = 1")
    check(my, pg, sample)


# ------------------------------------------------------------------------------ PG: failures
def test_changed_value_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET i = 1 WHERE id = 2")
    msg = fails(my, pg, sample, "pk (id=2)", "'i'", "mysql=0", "pg[i]=1")
    assert "table Sample" in msg


def test_missing_row_fails(my, pg, sample):
    pg_exec(pg, sample[1], "DELETE FROM sample WHERE id = 3")
    fails(my, pg, sample, "row count: mysql=4 pg=3", "missing in copy: pk (id=3)")


def test_extra_row_fails(my, pg, sample):
    pg_exec(pg, sample[1], "INSERT INTO sample (id) VALUES (99)")
    fails(my, pg, sample, "extra in copy: pk (id=99)")


def test_lost_trailing_spaces_fail(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET v = 'tail' WHERE id = 1")
    fails(my, pg, sample, "'v'", "'tail  '")


def test_char_padded_in_pg_fails(my, pg, sample):
    pg_exec(pg, sample[1], "ALTER TABLE sample ALTER COLUMN c TYPE char(10)")
    fails(my, pg, sample, "'c'", "'ab        '")
    fails(my, pg, sample, "'ab        '", check_types=False)  # the values alone differ too


def test_bytea_one_byte_differs_fails(my, pg, sample):
    pg_exec(pg, sample[1], r"UPDATE sample SET bl = '\x00ff01' WHERE id = 1")
    fails(my, pg, sample, "'bl'", r"b'\x00\xff\x00'", r"b'\x00\xff\x01'")


def test_zero_date_loaded_as_real_date_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET dd = '0001-01-01' WHERE id = 1")
    fails(my, pg, sample, "'dd'", "mysql=None")


def test_partial_zero_date_loaded_as_date_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET dd = '2020-01-15' WHERE id = 2")
    fails(my, pg, sample, "pk (id=2) column 'dd'")


def test_float_off_by_one_ulp_fails(my, pg, sample):
    # 0.3333333 is neither the stored float32 (0.33333334) nor MySQL's print (0.333333)
    pg_exec(pg, sample[1], "UPDATE sample SET f = 0.3333333 WHERE id = 1")
    fails(my, pg, sample, "'f'")


def test_double_last_digit_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET dbl = 0.33333333333333326 WHERE id = 1")
    fails(my, pg, sample, "'dbl'")


def test_decimal_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET d = 12345678.1235 WHERE id = 1")
    fails(my, pg, sample, "'d'")


def test_bigint_unsigned_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET bu = 18446744073709551614 WHERE id = 1")
    fails(my, pg, sample, "'bu'")


def test_timestamp_shifted_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET ts = '1970-01-01 00:00:01+01' WHERE id = 4")
    fails(my, pg, sample, "'ts'")


def test_datetime_microsecond_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET dtm = '9999-12-31 23:59:59.999998' WHERE id = 4")
    fails(my, pg, sample, "'dtm'")


def test_time_sign_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET tm = '00:00:00.000001' WHERE id = 4")
    fails(my, pg, sample, "'tm'")


def test_bit_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET b5 = B'10100' WHERE id = 1")
    fails(my, pg, sample, "'b5'", "'10101'", "'10100'")


def test_nul_kept_or_replaced_fails(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET tx = 'a b' WHERE id = 1")
    fails(my, pg, sample, "'tx'")


def test_json_semantics(my, pg, sample):
    # number spelling is irrelevant, value is not; JSON null is not SQL NULL
    pg_exec(pg, sample[1], "UPDATE sample SET j = '{\"b\": [1.0, 2.5e0], \"a\": null}' WHERE id = 1")
    check(my, pg, sample)
    pg_exec(pg, sample[1], "UPDATE sample SET j = '12345678901234567890.12345678' WHERE id = 4")
    fails(my, pg, sample, "'j'")
    pg_exec(pg, sample[1], "UPDATE sample SET j = '12345678901234567890.123456789' WHERE id = 4",
            "UPDATE sample SET j = NULL WHERE id = 2")
    fails(my, pg, sample, "pk (id=2) column 'j'")


def test_enum_invalid_value_is_empty_string(my, pg, sample):
    pg_exec(pg, sample[1], "UPDATE sample SET e = NULL WHERE id = 1")
    fails(my, pg, sample, "'e'", "mysql=''")


def test_boolean_columns(my, pg, sample):
    # `active` is boolean only when listed; `flag` (-128, 2) must stay a number
    fails(my, pg, sample, "active", "must be smallint", boolean_columns=())
    pg_exec(pg, sample[1], "UPDATE sample SET active = NOT active WHERE id = 2")
    fails(my, pg, sample, "'active'", "mysql=False", "pg[active]=True")
    with pytest.raises(ValueError):
        check(my, pg, sample, boolean_columns=["nope"])


def test_column_sets_must_match(my, pg, sample):
    pg_exec(pg, sample[1], "ALTER TABLE sample ADD COLUMN surprise int")
    fails(my, pg, sample, "column sets differ", "surprise")
    pg_exec(pg, sample[1], "ALTER TABLE sample DROP COLUMN surprise, DROP COLUMN y")
    fails(my, pg, sample, "column sets differ", "missing in PostgreSQL: ['y']")


def test_float_in_double_column_without_type_check(my, pg, sample):
    pg_exec(pg, sample[1], "ALTER TABLE sample ALTER COLUMN f TYPE double precision",
            "UPDATE sample SET f = 0.3333333432674408 WHERE id = 1")
    check(my, pg, sample, check_types=False)
    fails(my, pg, sample, "must be real")
    pg_exec(pg, sample[1], "UPDATE sample SET f = 0.33333334 WHERE id = 1")  # float4 print, read as double
    fails(my, pg, sample, "'f'", check_types=False)


def test_wrong_pg_type_fails(my, pg, sample):
    pg_exec(pg, sample[1], "ALTER TABLE sample ALTER COLUMN iu TYPE integer USING 0")
    fails(my, pg, sample, "int(10) unsigned must be bigint")
    # the same values in a wider type pass the value comparison but not the type check
    pg_exec(pg, sample[1], "ALTER TABLE sample ALTER COLUMN iu TYPE numeric",
            "UPDATE sample SET iu = 4294967295 WHERE id = 1", "UPDATE sample SET iu = 7 WHERE id = 4",
            "UPDATE sample SET iu = NULL WHERE id = 3")
    fails(my, pg, sample, "must be bigint, PostgreSQL has numeric")
    check(my, pg, sample, check_types=False)


def test_missing_tables_fail(my, pg, sample):
    mdb, psch = sample
    with pytest.raises(AssertionError, match="PostgreSQL table not found"):
        assert_pg_matches_mysql(my, mdb, pg, psch, "Sample", pg_table="nope")
    with pytest.raises(AssertionError, match="MySQL table not found"):
        assert_pg_matches_mysql(my, mdb, pg, psch, "sample")  # MySQL names are case-sensitive


def test_no_pk_duplicates(my, pg, mdb, psch):
    my_exec(my, mdb, "CREATE TABLE np (a INT, b VARCHAR(5), f FLOAT)",
            "INSERT INTO np VALUES (1,'x',0.5),(1,'x',0.5),(1,'x',0.5),(2,NULL,NULL),(2,NULL,NULL),(3,'a',1e0/3),(3,'A',1e0/3)")
    pg_exec(pg, psch, "CREATE TABLE np (a integer, b text, f real)",
            "INSERT INTO np VALUES (3,'A',0.333333),(1,'x',0.5),(2,NULL,NULL),(1,'x',0.5),(3,'a',0.33333334),(2,NULL,NULL),(1,'x',0.5)")
    assert_pg_matches_mysql(my, mdb, pg, psch, "np")
    pg_exec(pg, psch, "DELETE FROM np WHERE ctid = (SELECT min(ctid) FROM np WHERE a = 1)",
            "INSERT INTO np VALUES (4, 'x', 0.5)")
    with pytest.raises(AssertionError) as ei:
        assert_pg_matches_mysql(my, mdb, pg, psch, "np")
    assert "missing in copy: row (a=1, b='x', f=0.5)" in str(ei.value)
    assert "extra in copy: row (a=4" in str(ei.value)
    pg_exec(pg, psch, "DELETE FROM np WHERE a = 4", "INSERT INTO np VALUES (1, 'x', 0.5)",
            "UPDATE np SET f = 0.3333333 WHERE b = 'A'")
    with pytest.raises(AssertionError, match="b='A'"):
        assert_pg_matches_mysql(my, mdb, pg, psch, "np")


def test_report_is_capped_at_ten(my, pg, mdb, psch):
    my_exec(my, mdb, "CREATE TABLE many (id INT PRIMARY KEY, v INT)",
            "INSERT INTO many SELECT seq, seq FROM seq_1_to_50")
    pg_exec(pg, psch, "CREATE TABLE many (id integer PRIMARY KEY, v integer)",
            "INSERT INTO many SELECT g, g + 1 FROM generate_series(1, 50) g")
    with pytest.raises(AssertionError) as ei:
        assert_pg_matches_mysql(my, mdb, pg, psch, "many")
    msg = str(ei.value)
    assert "50 mismatch(es)" in msg and "... and 40 more" in msg
    assert msg.count("column 'v'") == 10


# ------------------------------------------------------------------------------ MySQL replica
def _copy_mysql(my, src, dst, table, sql_mode="NO_AUTO_VALUE_ON_ZERO", ignore=False):
    with my.cursor() as cur:
        cur.execute(f"SET SESSION sql_mode = '{sql_mode}'")
        cur.execute(f"CREATE TABLE `{dst}`.`{table}` LIKE `{src}`.`{table}`")
        cur.execute(f"INSERT {'IGNORE' if ignore else ''} INTO `{dst}`.`{table}` SELECT * FROM `{src}`.`{table}`")
        cur.execute("SET SESSION sql_mode = ''")


def test_mysql_replica(my):
    with mysql_db(my) as src, mysql_db(my) as dst:
        my_exec(my, src, MY_DDL, MY_ROWS)
        _copy_mysql(my, src, dst, "Sample")
        assert_mysql_equal(my, src, my, dst, "Sample")

        # FLOAT differing below MySQL's 6 printed digits is still caught
        a, b = (struct.unpack("<f", struct.pack("<I", 0x3EAAAAAB + k))[0] for k in (0, 1))
        my_exec(my, dst, "UPDATE Sample SET f = %s WHERE id = 1", args=(b,))
        with pytest.raises(AssertionError, match="CAST"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        my_exec(my, dst, "UPDATE Sample SET f = %s WHERE id = 1", args=(a,))
        assert_mysql_equal(my, src, my, dst, "Sample")

        my_exec(my, dst, "UPDATE Sample SET v = 'tail' WHERE id = 1")
        with pytest.raises(AssertionError, match="pk \\(id=1\\) column 'v'"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        my_exec(my, dst, "UPDATE Sample SET v = 'tail  ' WHERE id = 1", "DELETE FROM Sample WHERE id = 3")
        with pytest.raises(AssertionError, match="missing in copy: pk \\(id=3\\)"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        my_exec(my, dst, "INSERT INTO Sample (id) VALUES (3)", "INSERT INTO Sample (id) VALUES (5)")
        with pytest.raises(AssertionError, match="extra in copy: pk \\(id=5\\)"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        my_exec(my, dst, "DELETE FROM Sample WHERE id = 5", "UPDATE Sample SET dd = '2020-00-16' WHERE id = 2")
        with pytest.raises(AssertionError, match="2020-00-16"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        my_exec(my, dst, "UPDATE Sample SET dd = '2020-00-15' WHERE id = 2")
        assert_mysql_equal(my, src, my, dst, "Sample")
        my_exec(my, dst, "ALTER TABLE Sample MODIFY v VARCHAR(50) COLLATE utf8mb4_bin")
        with pytest.raises(AssertionError, match="utf8mb4_bin"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        assert_mysql_equal(my, src, my, dst, "Sample", check_definitions=False)
        my_exec(my, dst, "ALTER TABLE Sample MODIFY c CHAR(11)")
        with pytest.raises(AssertionError, match="column definitions differ"):
            assert_mysql_equal(my, src, my, dst, "Sample")
        with pytest.raises(AssertionError, match="not found"):
            assert_mysql_equal(my, src, my, dst, "sample")


def test_mysql_replica_no_pk_and_ci_ties(my):
    with mysql_db(my) as src, mysql_db(my) as dst:
        my_exec(my, src, "CREATE TABLE np (a INT, b VARCHAR(5))",
                "INSERT INTO np VALUES (1,'a'),(1,'A'),(1,'a '),(1,'a'),(NULL,NULL)")
        my_exec(my, dst, "CREATE TABLE np (a INT, b VARCHAR(5))",
                "INSERT INTO np VALUES (NULL,NULL),(1,'a '),(1,'a'),(1,'A'),(1,'a')")
        assert_mysql_equal(my, src, my, dst, "np")
        my_exec(my, dst, "UPDATE np SET b = 'A' WHERE HEX(b) = '61' LIMIT 1")
        with pytest.raises(AssertionError, match="missing in copy: row \\(a=1, b='a'\\)"):
            assert_mysql_equal(my, src, my, dst, "np")


# ------------------------------------------------------------------------------ the fixture
FIXTURE_TABLES = ["int_types", "decimal_float", "bit_year", "temporal", "zero_dates", "strings", "binaries",
                  "json_docs", "enum_set", "reserved_words", "MixedCase", "no_pk", "composite_pk", "auto_inc",
                  "ubig_pk", "nul_text", "wide_rows"]


@pytest.fixture(scope="module")
def fixture_db(my):
    with mysql_db(my) as name:
        c = pymysql.connect(charset="utf8mb4", autocommit=True, database=name, **MYSQL)
        try:
            dbcompare.load_sql_file(c, FIXTURE)
        finally:
            c.close()
        yield name


def test_fixture_loads_with_every_table(my, fixture_db):
    with my.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (fixture_db,))
        tables = {r[0] for r in cur.fetchall()}
        assert tables == set(FIXTURE_TABLES)
        for t in FIXTURE_TABLES:
            cur.execute(f"SELECT COUNT(*) FROM `{fixture_db}`.`{t}`")
            assert cur.fetchone()[0] >= 5, t
        cur.execute(f"SELECT COUNT(*) FROM `{fixture_db}`.wide_rows")
        assert cur.fetchone()[0] == 3000
        cur.execute(f"SELECT id FROM `{fixture_db}`.auto_inc WHERE name = 'id zero'")
        assert cur.fetchone()[0] == 0
        cur.execute(f"SELECT hex(t) FROM `{fixture_db}`.nul_text WHERE id = 1")
        assert cur.fetchone()[0] == "610062"
    for t in FIXTURE_TABLES:
        pk = dbcompare.mysql_primary_key(my, fixture_db, t)
        assert bool(pk) == (t != "no_pk"), t
    assert dbcompare.mysql_columns(my, fixture_db, "json_docs")[1].is_json


def test_fixture_replica_roundtrip(my, fixture_db):
    with mysql_db(my) as dst:
        for t in FIXTURE_TABLES:
            _copy_mysql(my, fixture_db, dst, t)
            assert_mysql_equal(my, fixture_db, my, dst, t)
        with pytest.raises(AssertionError, match=r"pk \(id=11\) column 'CAST\(f AS DOUBLE\)': source=16777216.0 replica"):
            my_exec(my, dst, "UPDATE decimal_float SET f = 16777218 WHERE id = 11")  # prints as 16777200 too
            assert_mysql_equal(my, fixture_db, my, dst, "decimal_float")
    with mysql_db(my) as dst:  # copying without NO_AUTO_VALUE_ON_ZERO renumbers the id 0 row
        _copy_mysql(my, fixture_db, dst, "auto_inc", sql_mode="", ignore=True)
        with pytest.raises(AssertionError, match="missing in copy: pk \\(id=0\\)"):
            assert_mysql_equal(my, fixture_db, my, dst, "auto_inc")


# A reference MySQL -> PostgreSQL copy, written independently of the comparer, so that the
# comparer is exercised on every fixture type (and shown to pass on a correct copy).
def _ref_pg_type(c: dbcompare.MyColumn, as_bool: bool) -> str:
    t, u = c.data_type, c.unsigned
    if as_bool:
        return "boolean"
    simple = {"tinyint": "smallint", "mediumint": "integer", "float": "real", "double": "double precision",
              "year": "smallint", "time": "interval", "date": "date"}
    if t in simple:
        return simple[t]
    if t == "smallint":
        return "integer" if u else "smallint"
    if t == "int":
        return "bigint" if u else "integer"
    if t == "bigint":
        return "numeric(20,0)" if u else "bigint"
    if t == "decimal":
        return f"numeric({c.num_precision},{c.num_scale})"
    if t == "bit":
        return f"bit({c.bit_width})"
    if t == "datetime":
        return f"timestamp({c.dt_precision or 0})"
    if t == "timestamp":
        return f"timestamptz({c.dt_precision or 0})"
    if c.is_json:
        return "jsonb"
    if t in ("char", "varchar"):
        return f"varchar({c.char_max_len})"
    if t in ("binary", "varbinary") or t.endswith("blob"):
        return "bytea"
    return "text"


def _ref_select(c: dbcompare.MyColumn) -> str:
    q = f"`{c.name}`"
    if c.data_type == "float":
        return f"CAST({q} AS DOUBLE)"
    if c.data_type == "bit":
        return f"LPAD(BIN({q} + 0), {c.bit_width}, '0')"
    if c.data_type in ("date", "datetime", "timestamp"):
        return f"IF({q} < '0001-01-01' OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0, NULL, {q})"
    return q


def _ref_value(v, c: dbcompare.MyColumn, as_bool: bool):
    if v is None:
        return None
    if as_bool:
        return bool(int(v))  # bit(1) arrives as '0' / '1' from the LPAD(BIN()) select
    if c.data_type == "timestamp":
        return dt.datetime.fromisoformat(v).replace(tzinfo=dt.timezone.utc) if isinstance(v, str) else v.replace(tzinfo=dt.timezone.utc)
    if c.data_type in ("date", "datetime") and isinstance(v, str):
        return dt.datetime.fromisoformat(v) if c.data_type == "datetime" else dt.date.fromisoformat(v)
    if isinstance(v, str):
        return v.replace("\x00", "")
    if isinstance(v, bytes):
        return psycopg2.Binary(v)
    return v


def _ref_copy(my, mdb, pg, schema, table, booleans=()):
    cols = dbcompare.mysql_columns(my, mdb, table)
    pk = dbcompare.mysql_primary_key(my, mdb, table)
    bools = {b.lower() for b in booleans}
    ddl = ", ".join(f'"{c.name.lower()}" {_ref_pg_type(c, c.name.lower() in bools)}' for c in cols)
    if pk:
        ddl += ", PRIMARY KEY (" + ", ".join(f'"{k.lower()}"' for k in pk) + ")"
    with my.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f"SELECT {', '.join(_ref_select(c) for c in cols)} FROM `{mdb}`.`{table}`")
        rows = [tuple(_ref_value(v, c, c.name.lower() in bools) for v, c in zip(r, cols)) for r in cur.fetchall()]
    with pg.cursor() as cur:
        cur.execute(f'CREATE TABLE "{schema}"."{table.lower()}" ({ddl}, _etl_synced_at timestamptz DEFAULT now())')
        names = ", ".join(f'"{c.name.lower()}"' for c in cols)
        psycopg2.extras.execute_values(cur, f'INSERT INTO "{schema}"."{table.lower()}" ({names}) VALUES %s', rows,
                                       page_size=500)


BOOLEANS = {"int_types": ["is_active"], "MixedCase": ["IsActive"], "bit_year": ["b1"]}


@pytest.fixture(scope="module")
def fixture_pg(my, pg, fixture_db):
    with pg_schema(pg) as schema:
        for t in FIXTURE_TABLES:
            _ref_copy(my, fixture_db, pg, schema, t, BOOLEANS.get(t, ()))
        yield schema


@pytest.mark.parametrize("table", FIXTURE_TABLES)
def test_fixture_reference_copy_matches(my, pg, fixture_db, fixture_pg, table):
    assert_pg_matches_mysql(my, fixture_db, pg, fixture_pg, table, boolean_columns=BOOLEANS.get(table, ()))


@pytest.mark.parametrize("table, column, bad_value, pk", [
    ("int_types", "bi_u", 18446744073709551614, 2),
    ("int_types", "flag", 1, 1),            # -128 squashed to 1
    ("decimal_float", "d65", Decimal("99999999999999999999999999999999999.999999999999999999999999999998"), 1),
    ("decimal_float", "f", 123457000, 8),   # fine: MySQL's printed form ...
    ("decimal_float", "f", 16777218, 11),   # ... but stored 16777216 prints as 16777200: 16777218 is neither
    ("decimal_float", "dbl", 9007199254740994, 12),
    ("bit_year", "b64", "0" * 64, 2),
    ("temporal", "t", dt.timedelta(hours=838, minutes=59, seconds=59), 1),
    ("temporal", "ts6", dt.datetime(2038, 1, 19, 3, 14, 7, 999998, tzinfo=dt.timezone.utc), 2),
    ("temporal", "d", dt.date(2020, 1, 15), 5),
    ("zero_dates", "ts", dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), 1),
    ("strings", "c10", "ab   ", 1),
    ("strings", "mt", "m" * 69999, 8),
    ("strings", "l1", "cafe", 1),
    ("strings", "vc", None, 5),             # '\N' is text, not NULL
    ("binaries", "bn", b"ab", 4),           # binary(8) keeps its zero padding
    ("json_docs", "doc", '{"big": 123456789012345678901234567890, "pi": 3.141592653589793, "tiny": -1.5e-300, "e": 100, "neg0": 0, "f": 0.1, "i": -9223372036854775809}', 3),
    ("json_docs", "doc", None, 6),          # JSON null is not SQL NULL
    ("enum_set", "s", "d,a", 5),
    ("nul_text", "t", "a b", 1),
    ("wide_rows", "payload", "", 2999 * 3),
])
def test_fixture_mutations_fail(my, pg, fixture_db, table, column, bad_value, pk):
    cols = dbcompare.mysql_columns(my, fixture_db, table)
    pkcol = dbcompare.mysql_primary_key(my, fixture_db, table)[0]
    with pg_schema(pg) as schema:
        _ref_copy(my, fixture_db, pg, schema, table, BOOLEANS.get(table, ()))
        pgcol = column.lower()
        if isinstance(bad_value, bytes):
            bad_value = psycopg2.Binary(bad_value)
        cast = "::jsonb" if any(c.name == column and c.is_json for c in cols) else ""
        with pg.cursor() as cur:
            cur.execute(f'UPDATE "{schema}"."{table.lower()}" SET "{pgcol}" = %s{cast} WHERE "{pkcol.lower()}" = %s',
                        (bad_value, pk))
            assert cur.rowcount == 1
        if (table, column, pk) == ("decimal_float", "f", 8):
            assert_pg_matches_mysql(my, fixture_db, pg, schema, table)
            return
        with pytest.raises(AssertionError) as ei:
            assert_pg_matches_mysql(my, fixture_db, pg, schema, table, boolean_columns=BOOLEANS.get(table, ()))
        assert f"column {column!r}" in str(ei.value)
