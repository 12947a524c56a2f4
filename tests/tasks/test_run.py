"""tasks/run.py: a whole run as plain functions (no Prefect), on the real servers."""
from __future__ import annotations

import yaml

from tests.test_end_to_end import assert_all_copies_equal

SCHEMA = """
CREATE TABLE patient (PatNum BIGINT PRIMARY KEY, LName VARCHAR(40) NOT NULL, Balance DECIMAL(10,2) NOT NULL,
  SecDateTEdit TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP);
INSERT INTO patient (PatNum, LName, Balance, SecDateTEdit)
  SELECT seq, CONCAT('Last', seq), seq / 3, '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_700;
CREATE TABLE codes (code VARCHAR(10) PRIMARY KEY, descr TEXT NULL);
INSERT INTO codes SELECT CONCAT('D', seq), IF(seq % 4 = 0, NULL, CONCAT('tab\\there ', seq)) FROM seq_1_to_50;
CREATE TABLE audit (at DATETIME NOT NULL, what VARCHAR(20) NOT NULL);
INSERT INTO audit SELECT '2024-02-01' + INTERVAL seq HOUR, CONCAT('event ', seq) FROM seq_1_to_30;
"""


def _config(env, **extra_tables) -> None:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = 200
    cfg["tables"].update(extra_tables)
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))


def _run(**kw):
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks.run import run_pipeline

    settings = Settings()
    return run_pipeline(settings, load_pipeline_config(settings.config), **kw)


def test_a_run_without_prefect_loads_every_table_and_records_it(etl_env) -> None:
    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    first = _run()
    assert first.failed == []
    assert {o.table: o.analytics_rows for o in first.outcomes} == {"patient": 700, "codes": 50, "audit": 30}
    assert all(u["still_open"] == 0 for u in first.connection_usage.values())
    etl_env.source_sql("UPDATE patient SET Balance = Balance + 1 WHERE PatNum <= 5; "
                       "INSERT INTO patient (PatNum, LName, Balance) VALUES (701, 'New', 1);")
    second = _run()
    assert second.failed == []
    patient = next(o for o in second.outcomes if o.table == "patient")
    assert patient.analytics_rows == 6  # incremental: only the changed and new rows moved
    assert_all_copies_equal(etl_env)
    pg = etl_env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT status, tables_ok, tables_failed FROM etl.pipeline_runs WHERE run_id = %s",
                        (second.run_id,))
            assert cur.fetchone() == ("ok", 3, 0)
            cur.execute("SELECT table_name, status, mode FROM etl.table_runs WHERE run_id = %s ORDER BY 1",
                        (second.run_id,))
            # audit and codes did not change: the probe skipped them (tasks/probe.py), still recorded ok
            assert cur.fetchall() == [("audit", "ok", "unchanged"), ("codes", "ok", "unchanged"),
                                      ("patient", "ok", "incremental")]
    finally:
        pg.close()


def test_a_failing_table_fails_alone_and_is_named(etl_env) -> None:
    etl_env.source_sql(SCHEMA)
    _config(etl_env, ghost={"primary_key": ["id"]})
    result = _run()
    assert result.failed == ["ghost"]
    ghost = next(o for o in result.outcomes if o.table == "ghost")
    assert "ghost" in ghost.error and "does not exist" in ghost.error
    assert {o.table for o in result.outcomes if o.status == "ok"} == {"patient", "codes", "audit"}
    assert_all_copies_equal(etl_env)


def test_an_outcome_read_back_from_table_runs_is_the_one_the_run_returned(etl_env) -> None:
    """What a dispatching run (flows/dispatch.py) returns for a table that ran elsewhere: read from
    etl.table_runs, notes as the list they were (a note holding "; " stays one note)."""
    from sqlalchemy import create_engine

    from tasks.outcomes import read_outcome

    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    result = _run()
    assert result.failed == []
    engine = create_engine(etl_env.analytics_url)
    try:
        for o in result.outcomes:
            read, error = read_outcome(engine, result.run_id, o.table)
            assert error is None and read is not None
            assert (read.table, read.status, read.replica_rows, read.analytics_rows, read.notes) == (
                o.table, "ok", o.replica_rows, o.analytics_rows, o.notes)
            assert 0 <= read.seconds <= o.seconds + 5
        assert any(o.notes for o in result.outcomes)  # something to compare
        # A note holding the old separator stays one note.
        pg = etl_env.pg()
        with pg.cursor() as cur:
            cur.execute("UPDATE etl.table_runs SET note_list = '[\"a; b\", \"c\"]' WHERE run_id = %s AND table_name = 'codes'",
                        (result.run_id,))
        pg.close()
        assert read_outcome(engine, result.run_id, "codes")[0].notes == ["a; b", "c"]
        # A failed row gives no outcome but its error; a missing row neither.
        pg = etl_env.pg()
        with pg.cursor() as cur:
            cur.execute("UPDATE etl.table_runs SET status = 'failed', error = 'LoadError: boom' "
                        "WHERE run_id = %s AND table_name = 'audit'", (result.run_id,))
        pg.close()
        assert read_outcome(engine, result.run_id, "audit") == (None, "LoadError: boom")
        assert read_outcome(engine, result.run_id, "nope") == (None, None)
    finally:
        engine.dispose()
