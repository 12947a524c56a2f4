"""Transient faults are retried by Prefect task retries, and a retry resumes after the last committed chunk.

The faults are real: a second session KILLs the source connection (MySQL) or terminates the
analytics backend (PostgreSQL) while the table is between chunks. An injected pause only holds
the table there long enough for the kill to land.
"""
from __future__ import annotations

import threading

from tasks import faults
from tests.conftest import mysql_connect, wait_for
from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql

TABLE = (
    "CREATE TABLE visits (id INT PRIMARY KEY, note VARCHAR(40), at DATETIME(6));"
    "INSERT INTO visits SELECT seq, CONCAT('visit\\t', seq), '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_1000;"
    # The source's row estimate decides the path (a table estimated at <= batch_size rows is refreshed in
    # one transaction, without the checkpoints this test kills between): fresh statistics, not a stale 0.
    "ANALYZE TABLE visits;"
)
CONFIG = "defaults: {batch_size: 100}\ntables:\n  visits: {primary_key: [id]}\n"


def _notes_and_errors(env):
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT status, notes FROM etl.table_runs WHERE table_name = 'visits'")
        status, notes = cur.fetchone()
        cur.execute("SELECT phase, retriable, attempt FROM etl.errors WHERE table_name = 'visits'")
        errors = cur.fetchall()
    pg.close()
    return status, notes or "", errors


def _assert_identical(env) -> None:
    src, rep, pg = env.mysql(), env.mysql(env.replica_db), env.pg()
    assert_mysql_equal(src, env.source_db, rep, env.replica_db, "visits")
    assert_pg_matches_mysql(src, env.source_db, pg, "raw", "visits")
    src.close(), rep.close(), pg.close()


def test_killed_source_connection_is_retried_and_resumes(etl_env, prefect_harness, monkeypatch) -> None:
    etl_env.source_sql(TABLE)
    etl_env.write_config(CONFIG)
    monkeypatch.setenv("ETL_REPLICA_METHOD", "stream")
    faults.inject(faults.Fault("replica", "visits", after_chunks=3, action="sleep", seconds=2.0))

    def killer() -> None:
        admin = mysql_connect()
        try:
            def checkpoint_at_300() -> bool:
                with admin.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                                "AND TABLE_NAME = '_etl_checkpoints'", (etl_env.replica_db,))
                    if not cur.fetchone()[0]:
                        return False
                    cur.execute(f"SELECT rows_done FROM `{etl_env.replica_db}`._etl_checkpoints WHERE table_name = 'visits'")
                    row = cur.fetchone()
                    return bool(row and row[0] >= 300)
            ok = wait_for(checkpoint_at_300)
            if ok:
                with admin.cursor() as cur:
                    cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (etl_env.source_db,))
                    found = cur.fetchall()
                    for (cid,) in found:
                        cur.execute(f"KILL CONNECTION {int(cid)}")
        finally:
            admin.close()

    t = threading.Thread(target=killer)
    t.start()
    assert etl_env.etl("run") == 0
    t.join()
    status, notes, errors = _notes_and_errors(etl_env)
    assert status == "ok"
    assert ("replica", True, 1) in errors
    assert "replica copy resumed after 300 committed rows" in notes
    _assert_identical(etl_env)


def test_terminated_analytics_connection_is_retried_and_resumes(etl_env, prefect_harness) -> None:
    etl_env.source_sql(TABLE)
    etl_env.write_config(CONFIG)
    faults.inject(faults.Fault("analytics", "visits", after_chunks=4, action="sleep", seconds=2.0))

    def killer() -> None:
        pg = etl_env.pg()
        try:
            def checkpoint_at_400() -> bool:
                with pg.cursor() as cur:
                    cur.execute("SELECT to_regclass('etl.load_checkpoints') IS NOT NULL")
                    if not cur.fetchone()[0]:
                        return False
                    cur.execute("SELECT rows_done FROM etl.load_checkpoints WHERE table_name = 'visits'")
                    row = cur.fetchone()
                    return bool(row and row[0] >= 400)
            if wait_for(checkpoint_at_400):
                with pg.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            pg.close()

    t = threading.Thread(target=killer)
    t.start()
    assert etl_env.etl("run") == 0
    t.join()
    status, notes, errors = _notes_and_errors(etl_env)
    assert status == "ok"
    assert ("analytics", True, 1) in errors
    assert "analytics load resumed after 400 committed rows" in notes
    _assert_identical(etl_env)
