"""Every type decision, recorded: the SQL and types each module derives from a MySQL column.

For every column of the type-fidelity fixtures (tests/fixtures/all_types.sql, all_types_more.sql,
read back from MariaDB as the pipeline reads them) and a set of synthetic column definitions, the
output of every type function -- PostgreSQL type, COPY text expression, LOAD DATA expression, the
verify texts, the repair key binds, the widening decisions of drift, watermark kinds, key rules --
is compared with tests/fixtures/type_sql_golden.json. A change to the type table that changes any
of them fails here, with the column and the function named.

A deliberate change: regenerate with
    ETL_WRITE_TYPE_GOLDEN=1 .venv/bin/python -m pytest -q tests/tasks/test_type_golden.py
and read the diff of the JSON before committing it.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import FIXTURES, MYSQL, mysql_connect, run_mysql_script

GOLDEN = FIXTURES / "type_sql_golden.json"


def _col(name: str, data_type: str, column_type: str | None = None, **kw: Any):
    from tasks.mysql_schema import Column

    base: dict[str, Any] = dict(name=name, data_type=data_type, column_type=column_type or data_type, nullable=True,
                                char_length=None, precision=None, scale=None, datetime_precision=None,
                                charset=None, extra="", default=None)
    base.update(kw)
    return Column(**base)


def _synthetic() -> list:
    c = _col
    return [
        c("s_ti1", "tinyint", "tinyint(1)"), c("s_ti1u", "tinyint", "tinyint(1) unsigned"),
        c("s_ti4_nn", "tinyint", "tinyint(4)", nullable=False), c("s_ti3u", "tinyint", "tinyint(3) unsigned"),
        c("s_si", "smallint", "smallint(6)"), c("s_siu", "smallint", "smallint(5) unsigned"),
        c("s_mi", "mediumint", "mediumint(9)"), c("s_miu", "mediumint", "mediumint(8) unsigned"),
        c("s_int", "int", "int(11)"), c("s_intu", "int", "int(10) unsigned"),
        c("s_intz", "int", "int(10) unsigned zerofill"), c("s_integer", "integer", "integer"),
        c("s_big", "bigint", "bigint(20)", nullable=False), c("s_bigu", "bigint", "bigint(20) unsigned"),
        c("s_dec", "decimal", "decimal(10,2)", precision=10, scale=2),
        c("s_dec12", "decimal", "decimal(12,2)", precision=12, scale=2),
        c("s_dec20", "decimal", "decimal(20,0)", precision=20, scale=0),
        c("s_dec65", "decimal", "decimal(65,30)", precision=65, scale=30),
        c("s_num", "numeric", "numeric(8,3)", precision=8, scale=3),
        c("s_float", "float"), c("s_double", "double"), c("s_real", "real"),
        c("s_dprec", "double precision"),
        c("s_bit1", "bit", "bit(1)"), c("s_bit8", "bit", "bit(8)", nullable=False), c("s_bit64", "bit", "bit(64)"),
        c("s_year", "year", "year(4)"), c("s_time", "time", datetime_precision=0),
        c("s_time3", "time", "time(3)", datetime_precision=3),
        c("s_date", "date"), c("s_date_nn", "date", nullable=False),
        c("s_dt", "datetime", datetime_precision=0), c("s_dt6", "datetime", "datetime(6)", datetime_precision=6),
        c("s_dt_none", "datetime"),
        c("s_ts", "timestamp", datetime_precision=0, nullable=False,
          extra="on update current_timestamp()", default="current_timestamp()"),
        c("s_ts3", "timestamp", "timestamp(3)", datetime_precision=3),
        c("s_char", "char", "char(10)", char_length=10, charset="utf8mb4", collation="utf8mb4_general_ci"),
        c("s_char_l1", "char", "char(4)", char_length=4, charset="latin1", collation="latin1_swedish_ci"),
        c("s_vc", "varchar", "varchar(20)", char_length=20, charset="utf8mb4", collation="utf8mb4_general_ci"),
        c("s_vc100", "varchar", "varchar(100)", char_length=100, charset="utf8mb4",
          collation="utf8mb4_general_ci"),
        c("s_vc_mb3", "varchar", "varchar(20)", char_length=20, charset="utf8mb3"),
        c("s_vc_cp1251", "varchar", "varchar(20)", char_length=20, charset="cp1251"),
        c("s_vc_nn", "varchar", "varchar(255)", char_length=255, charset="utf8mb4", nullable=False),
        c("s_vc_nocs", "varchar", "varchar(8)", char_length=8),
        c("s_tinytext", "tinytext", charset="utf8mb4"), c("s_text", "text", charset="utf8mb4"),
        c("s_mtext", "mediumtext", charset="utf8mb4"), c("s_ltext", "longtext", charset="utf8mb4"),
        c("s_text_ucs2", "text", charset="ucs2"), c("s_text_ascii", "text", charset="ascii"),
        c("s_ljson", "longtext", charset="utf8mb4", is_json=True),
        c("s_json", "json", is_json=True),  # as read_table_schema reports every JSON column
        c("s_enum", "enum", "enum('a','b')", charset="utf8mb4"),
        c("s_enum3", "enum", "enum('a','b','c')", charset="utf8mb4"),
        c("s_enum_re", "enum", "enum('b','a')", charset="utf8mb4"),
        c("s_enum_esc", "enum", "enum('a\\tb','c')", charset="utf8mb4"),
        c("s_set", "set", "set('x','y')", charset="utf8mb4"),
        c("s_set3", "set", "set('x','y','z')", charset="utf8mb4"),
        c("s_binary", "binary", "binary(16)", char_length=16), c("s_vbin", "varbinary", "varbinary(16)",
                                                                    char_length=16),
        c("s_vbin64", "varbinary", "varbinary(64)", char_length=64),
        c("s_tblob", "tinyblob"), c("s_blob", "blob"), c("s_mblob", "mediumblob"), c("s_lblob", "longblob"),
        c("s_geom", "geometry"), c("s_point", "point"), c("s_line", "linestring"), c("s_poly", "polygon"),
        c("s_mpoint", "multipoint"), c("s_mline", "multilinestring"), c("s_mpoly", "multipolygon"),
        c("s_gcoll", "geometrycollection"), c("s_gcoll2", "geomcollection"),
        c("s_uuid", "uuid"), c("s_inet4", "inet4"), c("s_inet6", "inet6"),
        c("s_gen", "int", "int(11)", extra="virtual generated"),
        c("s_vector", "vector", "vector(3)"),
    ]


def _fixture_columns() -> list[tuple[str, list]]:
    """(table, columns) of both fixtures, read back from MariaDB by tasks.mysql_schema."""
    from tasks.mysql_schema import list_base_tables, read_table_schema

    out: list[tuple[str, list]] = []
    for fixture in ("all_types.sql", "all_types_more.sql"):
        db = f"etlt_{secrets.token_hex(4)}_golden"
        conn = mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        try:
            run_mysql_script(db, (FIXTURES / fixture).read_text(encoding="utf-8"))
            pw = f":{MYSQL['password']}" if MYSQL["password"] else ""
            engine = sa.create_engine(f"mysql+pymysql://{MYSQL['user']}{pw}@{MYSQL['host']}:{MYSQL['port']}/{db}",
                                      connect_args={"ssl_disabled": True})
            try:
                with engine.connect() as c:
                    for info in list_base_tables(c, db):
                        out.append((f"{fixture}:{info.name}", list(read_table_schema(c, db, info.name).columns)))
            finally:
                engine.dispose()
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            conn.close()
    return out


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the error is the recorded answer
        return f"!{type(e).__name__}: {e}"


def _column_record(col) -> dict[str, Any]:
    from tasks import discovery, keyset, replica_merge, repair, state, type_mapping, verify
    from tasks.identifiers import mysql_ident
    from tasks.mysql_schema import TableSchema

    tm = type_mapping
    schema = TableSchema("db", "t", (col,), (col.name,), 0, 0)
    rec: dict[str, Any] = {"column_type": col.column_type}
    rec["pg_type"] = _try(lambda: tm.pg_type(col))
    rec["pg_type_boolean"] = _try(lambda: tm.pg_type(col, as_boolean=True))
    rec["pg_nullable"] = tm.pg_nullable(col)
    rec["boolean_candidate"] = tm.is_boolean_candidate(col)
    rec["generated"] = tm.is_generated(col)
    rec["copy"] = _try(lambda: tm.copy_text_expr(col))
    rec["copy_boolean"] = _try(lambda: tm.copy_text_expr(col, as_boolean=True))
    ld = tm.load_data_column(col, 3)
    rec["load_data"] = [ld.select_expr, ld.target, ld.set_clause]
    rec["invalid_dates"] = tm.invalid_date_count_expr([col])
    for as_bool in (False, True):
        t = verify.column_text(col, as_boolean=as_bool, pg_name=col.name.lower())
        rec[f"verify{'_boolean' if as_bool else ''}"] = [t.my_exact, t.my, t.pg, t.plain]
        rec[f"repair_key{'_boolean' if as_bool else ''}"] = repair._key_binds(
            SimpleNamespace(source=col, as_boolean=as_bool))
    rec["integer"] = col.data_type in tm.INTEGER_TYPES
    rec["nul_stripped_text"] = tm.reaches_pg_as_text(col)
    rec["watermark_kind"] = _try(lambda: state.watermark_kind(col.data_type))
    ks = _try(lambda: keyset.Keyset.for_table(schema, [col.name], mysql_ident))
    rec["keyset"] = ks if isinstance(ks, str) else [{k: list(v) for k, v in ks.members.items()}, sorted(ks.sets)]
    rec["respellable_key"] = replica_merge.respellable_key(schema, (col.name,))
    changed = TableSchema("db", "t", (_renamed(col, "updated_at"),), (), 0, 0)
    rec["change_column"] = bool(discovery.change_columns(changed))
    return rec


def _renamed(col, name: str):
    import dataclasses

    return dataclasses.replace(col, name=name)


# format_type() spellings PostgreSQL reports for the types the mapping emits (tasks/sync.py compares them).
_FORMAT_TYPES = ["smallint", "integer", "bigint", "numeric(20,0)", "numeric(10,2)", "real", "double precision",
                 "bit(1)", "bit(64)", "boolean", "interval", "date", "timestamp(0) without time zone",
                 "timestamp(6) without time zone", "timestamp without time zone", "timestamp(3) with time zone",
                 "timestamp(6) with time zone", "timestamp with time zone", "character varying(10)",
                 "character varying", "text", "jsonb", "json", "bytea", "character(4)"]
# information_schema.columns rows (data_type, character_maximum_length, numeric_precision, numeric_scale)
# as tasks/dbt_sources.py reads them.
_PG_INFO = [("character varying", 20, None, None), ("character varying", None, None, None), ("character", 4, None, None),
            ("numeric", None, 20, 0), ("numeric", None, 10, 2), ("numeric", None, None, None), ("integer", None, 32, 0),
            ("bigint", None, 64, 0), ("timestamp with time zone", None, None, None), ("jsonb", None, None, None),
            ("text", None, None, None), ("bytea", None, None, None), ("boolean", None, None, None)]


def _record() -> dict[str, Any]:
    from tasks import dbt_sources, drift, type_mapping

    tables = _fixture_columns() + [("synthetic", _synthetic())]
    columns: dict[str, Any] = {}
    everything = []
    for table, cols in tables:
        for col in cols:
            key = f"{table}.{col.name}"
            columns[key] = _column_record(col)
            everything.append((key, col))
        columns[f"{table}:invalid_dates"] = type_mapping.invalid_date_count_expr(cols)
    widening, tightening, enum_changes = [], [], []
    for ka, a in everything:
        for kb, b in everything:
            if drift.is_widening(a, b):
                widening.append(f"{ka} -> {kb}")
            if drift.is_tightening(a, b):
                tightening.append(f"{ka} -> {kb}")
            why = drift.enum_change(a, b)
            if why:
                enum_changes.append(f"{ka} -> {kb}: {why}")
    pg_types = sorted({v["pg_type"] for v in columns.values() if isinstance(v, dict)} | set(_FORMAT_TYPES))
    return {
        "columns": columns,
        "drift_widening": widening,
        "drift_tightening": tightening,
        "drift_enum_change": enum_changes,
        "sync_norm": {t: type_mapping.normal_pg_type(t) for t in pg_types},
        "dbt_pg_type": {repr(r): dbt_sources._pg_type(*r) for r in _PG_INFO},
    }


def test_every_type_function_matches_the_golden_record() -> None:
    got = json.loads(json.dumps(_record()))  # tuples as JSON lists, as stored
    if os.environ.get("ETL_WRITE_TYPE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert len(want["columns"]) > 150  # both fixtures and the synthetic columns were read
    for section in ("drift_widening", "drift_tightening", "drift_enum_change", "sync_norm", "dbt_pg_type"):
        assert got[section] == want[section], section
    assert set(got["columns"]) == set(want["columns"])
    for name, rec in want["columns"].items():
        if isinstance(rec, dict):
            for fn, value in rec.items():
                assert got["columns"][name][fn] == value, f"{name}: {fn}"
        else:
            assert got["columns"][name] == rec, name
