"""`etl verify` covers every column of every row: every type the pipeline maps prints the same
canonical text on MySQL and PostgreSQL (no false alarm after a clean load), a value corrupted in any
column of the replica or of PostgreSQL is found and named by its key, and `--repair` fixes it, for a
table with an integer key and for tables with composite and string keys."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import FIXTURES
from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql
from tests.test_end_to_end import assert_all_copies_equal, base_tables

# Values whose print differs between the engines, or that sit on a boundary of a type.
EXTRA = """
CREATE TABLE float_edges (id INT PRIMARY KEY, f FLOAT NULL, d DOUBLE NULL);
INSERT INTO float_edges VALUES (1, -0.0, -0.0), (2, 1e-45, 5e-324), (3, 3.4028235e38, 1.7976931348623157e308),
  (4, 0.1, 0.1), (5, 1e-5, 1e-5), (6, 1.5e-7, 1.234e-7), (7, 16777217, 123456789012345.6), (8, 1e15, 1e15),
  (9, 1e16, 1e-300), (10, -2.5e-6, -1e22), (11, NULL, NULL), (12, 0, 0);
CREATE TABLE shapes (id INT PRIMARY KEY, g GEOMETRY NULL, p POINT NULL);
INSERT INTO shapes VALUES (1, ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))'), ST_GeomFromText('POINT(1.5 -2.25)')),
  (2, ST_GeomFromText('LINESTRING(0 0,1 1,2 3)'), NULL), (3, NULL, ST_GeomFromText('POINT(0 0)'));
CREATE TABLE people (code VARCHAR(20) CHARACTER SET latin1 NOT NULL PRIMARY KEY, name VARCHAR(40) CHARACTER SET latin1,
  born DATE NOT NULL DEFAULT '0000-00-00', note TEXT, active TINYINT(1) NOT NULL);
INSERT INTO people VALUES ('ab', 'Åsa', '1980-01-02', 'x', 1), ('AC', 'Øyvind', '0000-00-00', '', 0),
  ('é', 'café', '2020-00-10', NULL, 1), ('z z', 'naïve', '1999-12-31', 'tab\there', 0);
INSERT INTO people SELECT CONCAT('p', seq), CONCAT('név ', seq), '2001-02-03' + INTERVAL seq DAY, REPEAT('n', seq MOD 9),
  seq MOD 2 FROM seq_1_to_1200;
"""


def _load_plain(env) -> None:
    """Every enabled table source -> replica -> analytics with the plain functions (no Prefect)."""
    from sqlalchemy.engine import make_url

    from blocks.connectors import urls_from_settings
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks import sync
    from tasks.connections import open_engines
    from tasks.run import choose_replica_method

    settings = Settings()
    cfg = load_pipeline_config(settings.config)
    urls = urls_from_settings(settings)
    source_db, replica_db = (make_url(u).database for u in (urls.source, urls.replica))
    with open_engines(urls, workers=1) as engines:
        method = choose_replica_method(settings.replica_method, engines)
        for table in cfg.resolved_tables(None):
            sync.replicate(engines, table, source_db=source_db, replica_db=replica_db, method=method,
                           full_refresh=False, resume=False)
            sync.load(engines, table, replica_db=replica_db, pg_schema=settings.analytics_schema,
                      column_case=cfg.analytics.column_case, full_refresh=False, resume=False,
                      loaded_at_column=cfg.analytics.loaded_at_column)


def _verify_all(env) -> dict:
    from config.models import load_pipeline_config
    from tasks.connections import EngineUrls, open_engines
    from tasks.verify import verify_table

    cfg = load_pipeline_config(str(env.config_path))
    urls = EngineUrls(source=env.source_url, replica=env.replica_url, analytics=env.analytics_url)
    with open_engines(urls, workers=1) as engines:
        # A small page: the 3,000-row table is cut into ranges, the string-keyed ones into buckets.
        return {t.name: verify_table(engines, t, source_db=env.source_db, replica_db=env.replica_db,
                                     pg_schema=env.pg_schema, column_case=cfg.analytics.column_case, page=500)
                for t in cfg.resolved_tables(None)}


def _q(name: str, case: str) -> str:
    return '"' + (name.lower() if case == "lower" else name) + '"'


# Damage behind the pipeline's back, in columns verify never looked at before (neither key nor
# change column): (table, SQL) in the replica, (table, column, new value, key column, key) in PostgreSQL.
REPLICA_DAMAGE = [
    ("strings", "UPDATE strings SET tx = CONCAT(tx, '!') WHERE id = 3"),
    ("json_docs", "UPDATE json_docs SET doc = '{\"z\": 1, \"a\": 3, \"m\": {\"y\": 1, \"b\": 2}}' WHERE id = 11"),
    ("composite_pk", "UPDATE composite_pk SET label = 'upper b' WHERE tenant_id = 1 AND code = 'B'"),
    ("people", "UPDATE people SET name = 'Asa' WHERE code = 'ab'"),
    ("people", "UPDATE people SET note = NULL WHERE code = 'p700'"),  # '' -> NULL
    ("wide_rows", "UPDATE wide_rows SET ratio = ratio * 1.0000001 WHERE id = 6000"),
    ("float_edges", "UPDATE float_edges SET f = 3e-45 WHERE id = 2")  # the next float4 denormal,
]
PG_DAMAGE = [
    ("decimal_float", "f", "0.100000009", "id", "5"),  # the next float4 after 0.1
    ("temporal", "ts6", "'2000-02-29 12:00:00.123457+00'", "id", "6"),  # one microsecond later
    ("strings", "vc", "NULL", "id", "6"),  # '' becomes NULL
    ("binaries", "bn", "'\\x0000000000000001'::bytea", "id", "1"),
    ("MixedCase", "FName", "'Sean'", "PatNum", "2"),
    ("int_types", "is_active", "false", "id", "2"),  # a boolean column
    ("composite_pk", "qty", "120", "label", "'space'"),
    ("people", "born", "'2020-01-10'", "code", "'é'"),  # a zero date is NULL
    ("people", "name", "'név 1'", "code", "'p1199'"),
    ("shapes", "g", "'POINT(1 1)'", "id", "3"),
    ("float_edges", "d", "1e-6", "id", "5"),
    ("wide_rows", "payload", "'x'", "id", "8700"),
]
FOUND = {
    "strings": [("3",), ("6",)], "json_docs": [("11",)], "composite_pk": [("1", "B"), ("2", "a b")],
    "people": [("ab",), ("p1199",), ("p700",), ("é",)], "wide_rows": [("6000",), ("8700",)],
    "decimal_float": [("5",)], "temporal": [("6",)], "binaries": [("1",)], "MixedCase": [("2",)],
    "int_types": [("2",)], "shapes": [("3",)], "float_edges": [("2",), ("5",)],
}
BOOLEANS = {"people": ("active",), "int_types": ("is_active",)}


@pytest.mark.parametrize(("method", "case", "every_type"), [("server", "lower", True), ("stream", "preserve", False)])
def test_verify_finds_any_corrupted_column_and_repair_fixes_it(etl_env, monkeypatch, capsys, method, case,
                                                               every_type) -> None:
    # Every type once (all_types.sql); the other replica path and column case on the extra tables.
    fixture = (FIXTURES / "all_types.sql").read_text(encoding="utf-8") if every_type else "SET sql_mode='';\n"
    etl_env.source_sql(fixture + EXTRA)
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    assert etl_env.etl("discover") == 0
    cfg = yaml.safe_load(etl_env.config_path.read_text())
    cfg.setdefault("analytics", {})["column_case"] = case
    for t, cols in BOOLEANS.items():
        if t in cfg["tables"]:
            cfg["tables"][t]["boolean_columns"] = list(cols)
    etl_env.write_config(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    _load_plain(etl_env)
    tables = set(cfg["tables"])

    # A clean load: the canonical text agrees across the engines for every type and value.
    results = _verify_all(etl_env)
    assert set(results) == tables
    assert {n: r.differing for n, r in results.items() if not r.ok} == {}
    assert results["people"].ranges == 3  # string key: hash buckets
    if every_type:
        assert results["wide_rows"].ranges > 1 and "no_pk" in tables
    capsys.readouterr()
    assert etl_env.etl("verify") == 0

    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        for t, sql in REPLICA_DAMAGE:
            if t in tables:
                assert cur.execute(sql) == 1
    rep.commit()
    rep.close()
    pg = etl_env.pg()
    with pg.cursor() as cur:
        for t, col, value, key, at in PG_DAMAGE:
            if t in tables:
                cur.execute(f"UPDATE raw.{_q(t, 'lower')} SET {_q(col, case)} = {value} WHERE {_q(key, case)} = {at}")
                assert cur.rowcount == 1
    pg.commit()
    pg.close()

    found = {n: sorted(k for d in r.differing for k in d.keys) for n, r in _verify_all(etl_env).items() if not r.ok}
    assert found == {t: keys for t, keys in FOUND.items() if t in tables}
    capsys.readouterr()
    assert etl_env.etl("verify") == 1
    assert "people" in capsys.readouterr().err

    assert etl_env.etl("verify", "--repair") == 0
    assert all(r.ok for r in _verify_all(etl_env).values())
    # tests/dbcompare.py reads geometry as MySQL's internal bytes: `shapes` is compared as WKT below.
    if case == "lower":
        assert_all_copies_equal(etl_env, boolean_columns=BOOLEANS, skip=("shapes",))
    src, rep, pg = etl_env.mysql(etl_env.source_db), etl_env.mysql(etl_env.replica_db), etl_env.pg()
    if case == "preserve":
        for t in tables:
            assert_mysql_equal(src, etl_env.source_db, rep, etl_env.replica_db, t)
            if t != "shapes":
                assert_pg_matches_mysql(src, etl_env.source_db, pg, etl_env.pg_schema, t, column_case="preserve",
                                        boolean_columns=BOOLEANS.get(t, ()))
    with src.cursor() as mc, pg.cursor() as pc:
        mc.execute("SELECT id, ST_AsText(g), ST_AsText(p) FROM shapes ORDER BY id")
        pc.execute("SELECT * FROM raw.shapes ORDER BY 1")
        assert [tuple(r[:3]) for r in pc.fetchall()] == list(mc.fetchall())
    src.close(), rep.close(), pg.close()
