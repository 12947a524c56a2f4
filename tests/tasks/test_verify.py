"""etl verify's comparison: counts and per-key-range checksums agree after a load, and a changed,
missing or extra row is found and named by its key (computed in SQL on both engines)."""
from __future__ import annotations

from config.models import parse_pipeline_config
from tasks.connections import EngineUrls, open_engines
from tasks.verify import verify_table

TABLES = (
    "CREATE TABLE visit (id INT PRIMARY KEY, v INT, d DATE NOT NULL DEFAULT '0000-00-00', "
    "changed TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6), "
    "edited DATETIME NULL);"
    "INSERT INTO visit (id, v, changed, edited) SELECT seq, seq, '2024-01-01 00:00:00.123456' + INTERVAL seq SECOND, "
    "IF(seq % 7 = 0, NULL, '2023-05-05 10:00:00') FROM seq_1_to_2500;"
    "CREATE TABLE tag (code VARCHAR(10) PRIMARY KEY, n INT); INSERT INTO tag VALUES ('a', 1), ('B', 2), ('c', 3);"
)
CONFIG = ("tables:\n  visit: {primary_key: [id], incremental_columns: [changed, edited]}\n"
          "  tag: {primary_key: [code]}\n")


def _verify(env, name: str, page: int = 1000):
    cfg = parse_pipeline_config(CONFIG)
    urls = EngineUrls(source=env.source_url, replica=env.replica_url, analytics=env.analytics_url)
    with open_engines(urls, workers=1) as engines:
        return verify_table(engines, cfg.resolve(name), source_db=env.source_db, replica_db=env.replica_db,
                            pg_schema="raw", column_case="lower", page=page)


def test_verify_agrees_then_names_the_rows_that_differ(etl_env) -> None:
    etl_env.source_sql(TABLES)
    etl_env.write_config(CONFIG)
    assert etl_env.run() == 0
    r = _verify(etl_env, "visit")
    assert r.ok and r.ranges == 3 and (r.source_rows, r.replica_rows, r.analytics_rows) == (2500, 2500, 2500)
    assert _verify(etl_env, "tag").ok

    etl_env.source_sql("UPDATE visit SET v = v + 1 WHERE id = 1200; DELETE FROM visit WHERE id = 2400;")
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("UPDATE raw.visit SET edited = '2000-01-01' WHERE id = 10")
    pg.close()
    r = _verify(etl_env, "visit")
    assert not r.ok
    assert r.source_rows == 2499 and r.replica_rows == 2500
    found = sorted(k for d in r.differing for k in d.keys)
    assert found == [("10",), ("1200",), ("2400",)]
    assert len(r.differing) == 3  # one per range: untouched ranges were not drilled into


def test_repair_recopies_only_the_differing_ranges(etl_env) -> None:
    from tasks.repair import repair_ranges
    from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql

    etl_env.source_sql(TABLES)
    etl_env.write_config(CONFIG)
    assert etl_env.run() == 0
    # Damage the copies behind the pipeline's back: a lost row in the replica, a changed one in analytics.
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("DELETE FROM visit WHERE id = 1500")
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("UPDATE raw.visit SET v = -1, edited = '1999-09-09' WHERE id = 20")
    r = _verify(etl_env, "visit")
    assert len(r.differing) == 2
    with pg.cursor() as cur:  # a row PostgreSQL writes again gets a new xmin
        cur.execute("SELECT id, xmin::text FROM raw.visit")
        xmin_before = dict(cur.fetchall())
    cfg = parse_pipeline_config(CONFIG)
    urls = EngineUrls(source=etl_env.source_url, replica=etl_env.replica_url, analytics=etl_env.analytics_url)
    with open_engines(urls, workers=1) as engines:
        assert repair_ranges(engines, cfg.resolve("visit"), r, source_db=etl_env.source_db,
                             replica_db=etl_env.replica_db, pg_schema="raw", column_case="lower", method="stream") == 2
    assert _verify(etl_env, "visit").ok
    # Only the two keys verify named moved, not the 1,000-row ranges holding them (the old range repair rewrote both).
    with pg.cursor() as cur:
        cur.execute("SELECT id, xmin::text FROM raw.visit")
        rewritten = {i for i, x in cur.fetchall() if xmin_before.get(i) != x}
    assert rewritten == {20, 1500}, sorted(rewritten)[:10]
    src = etl_env.mysql()
    assert_mysql_equal(src, etl_env.source_db, rep, etl_env.replica_db, "visit")
    assert_pg_matches_mysql(src, etl_env.source_db, pg, "raw", "visit")
    src.close(), rep.close(), pg.close()
