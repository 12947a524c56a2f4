"""Tables that must not stop on ordinary schemas and ordinary drift (issue 10, items 9, 10, 11, 14).

Each test runs the incremental scenario with the plain table functions (tasks.sync.replicate and
tasks.sync.load, as tests/test_soak.py::_plain_run does, without Prefect): a full run, an ALTER in
the source, rows changed, a second run; then every table of the three databases is compared value
by value, and PostgreSQL's column types and nullability are read from information_schema.
"""
from __future__ import annotations

import pytest

from tasks.errors import SchemaError
from tests.test_end_to_end import assert_all_copies_equal


def _run(env, *, method: str = "server", loaded_at_column: str = "_etl_loaded_at") -> dict[str, list[str]]:
    """One run of every table in the config: replicate, then load. Returns each table's notes."""
    from sqlalchemy.engine import make_url

    from blocks.connectors import urls_from_settings
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks import sync
    from tasks.connections import open_engines

    settings = Settings()
    cfg = load_pipeline_config(settings.config)
    urls = urls_from_settings(settings)
    source_db, replica_db = (make_url(u).database for u in (urls.source, urls.replica))
    notes: dict[str, list[str]] = {}
    with open_engines(urls, workers=1) as engines:
        for table in cfg.resolved_tables(None):
            rep = sync.replicate(engines, table, source_db=source_db, replica_db=replica_db, method=method,
                                 full_refresh=False, resume=False)
            ana = sync.load(engines, table, replica_db=replica_db, pg_schema=env.pg_schema,
                            column_case=cfg.analytics.column_case, full_refresh=False, resume=False,
                            loaded_at_column=loaded_at_column)
            notes[table.name] = rep.notes + ana.notes
    return notes


def _incremental(env, table: str, key: str = "id", changed: str = "changed") -> None:
    env.write_config(f"tables:\n  {table}: {{primary_key: [{key}], mode: incremental, "
                     f"incremental_columns: [{changed}], batch_size: 7}}\n")


def _pg_columns(env, table: str) -> dict[str, tuple[str, str]]:
    """PostgreSQL column -> (data type with length/precision, 'YES'/'NO' nullable)."""
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale, "
                    "is_nullable FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (env.pg_schema, table))
        out = {}
        for name, typ, length, prec, scale, nullable in cur.fetchall():
            if length is not None:
                typ += f"({length})"
            elif typ == "numeric":
                typ += f"({prec},{scale})"
            out[name] = (typ, nullable)
    pg.close()
    return out


# Source rows with a server-maintained change column; `changed` moves when a row is updated.
_CHANGED = "changed TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"


@pytest.mark.parametrize("method", ["server", "stream"])
def test_partitioned_table_loads_and_stays_incremental(etl_env, method) -> None:
    # Item 9: the PARTITION BY lines of SHOW CREATE TABLE ended up inside the shadow table's column
    # list (1064). Partitioning is dropped in the replica (tasks/mysql_schema._table_options): a
    # RANGE copy would refuse the rows of a partition the source adds later.
    etl_env.source_sql(f"""
        CREATE TABLE visit (id INT NOT NULL, day DATE NOT NULL, note VARCHAR(20), {_CHANGED},
          PRIMARY KEY (id, day), KEY by_day (day))
          COMMENT 'PARTITION BY is not here (AUTO_INCREMENT=5)'
          PARTITION BY RANGE (YEAR(day)) (PARTITION p2020 VALUES LESS THAN (2021),
                                         PARTITION p2021 VALUES LESS THAN (2022));
        INSERT INTO visit (id, day, note) SELECT seq, '2020-01-01' + INTERVAL seq DAY, CONCAT('n', seq)
          FROM seq_1_to_40;
        CREATE TABLE hashed (id INT PRIMARY KEY, v INT, {_CHANGED}) PARTITION BY HASH (id) PARTITIONS 3;
        INSERT INTO hashed (id, v) SELECT seq, seq FROM seq_1_to_20;
    """)
    etl_env.write_config("tables:\n"
                         "  visit: {primary_key: [id, day], mode: incremental, incremental_columns: [changed], "
                         "batch_size: 7}\n"
                         "  hashed: {primary_key: [id], mode: incremental, incremental_columns: [changed]}\n")
    _run(etl_env, method=method)
    assert_all_copies_equal(etl_env)

    # The source grows a partition and rows land in it; others change; the next run merges them.
    etl_env.source_sql("""
        ALTER TABLE visit ADD PARTITION (PARTITION p2022 VALUES LESS THAN (2023));
        INSERT INTO visit (id, day, note) VALUES (100, '2022-06-01', 'new partition');
        UPDATE visit SET note = 'changed' WHERE id % 5 = 0;
        UPDATE hashed SET v = -v WHERE id < 4;
    """)
    notes = _run(etl_env, method=method)
    assert_all_copies_equal(etl_env)
    assert not any("full" in n for n in notes["visit"]), notes  # merged, not reloaded
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, CREATE_OPTIONS, TABLE_COMMENT FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ('visit', 'hashed') ORDER BY 1",
                    (etl_env.replica_db,))
        rows = cur.fetchall()
        cur.execute("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = 'visit' AND INDEX_NAME = 'by_day'", (etl_env.replica_db,))
        assert cur.fetchone()[0] == 1
    rep.close()
    assert [(t, "partitioned" in o) for t, o, _ in rows] == [("hashed", False), ("visit", False)]
    assert rows[1][2] == "PARTITION BY is not here (AUTO_INCREMENT=5)"  # quoted text untouched
