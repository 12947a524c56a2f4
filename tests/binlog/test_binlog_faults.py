"""Binlog mode's faults: a crash mid-apply or between the legs, a killed process, the log purged."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import wait_for
from tests.binlog.test_binlog_scenario import SCHEMA, binlog_config
from tests.test_end_to_end import assert_all_copies_equal

CHURN = """
UPDATE patient SET Balance = Balance + 7 WHERE PatNum <= 120;
DELETE FROM patient WHERE PatNum BETWEEN 200 AND 260;
INSERT INTO patient SELECT 2000 + seq, 'late', 1, NULL FROM seq_1_to_90;
UPDATE patient SET PatNum = 7000 WHERE PatNum = 150;
"""


def _rows(env, db: str) -> list[tuple]:
    conn = env.mysql(db)
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM patient ORDER BY PatNum")
        rows = cur.fetchall()
    conn.close()
    return list(rows)


def test_a_crash_in_the_replica_leg_and_one_between_the_legs_converge_on_the_next_run(bl_env) -> None:
    from tasks import faults

    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env, batch_size=40)
    assert bl_env.run() == 0
    bl_env.source_sql(CHURN)
    faults.inject(faults.Fault("replica", "patient", 2, "raise"))
    assert bl_env.run() == 1  # stopped after the 2nd committed batch
    faults.clear()
    assert _rows(bl_env, bl_env.replica_db) != _rows(bl_env, bl_env.source_db)
    bl_env.source_sql("UPDATE patient SET LName = 'meanwhile' WHERE PatNum = 3;")
    faults.inject(faults.Fault("analytics", "patient", 1, "raise"))
    assert bl_env.run() == 1  # the replica leg finished; analytics stopped after one batch
    faults.clear()
    assert _rows(bl_env, bl_env.replica_db) == _rows(bl_env, bl_env.source_db)
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)


def test_a_sigkilled_apply_converges_with_no_duplicate_and_no_gap(bl_env) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env, batch_size=30)
    assert bl_env.run() == 0
    bl_env.source_sql(CHURN)
    env = {**os.environ, "ETL_FAULT": "replica:patient:3:kill"}
    code = ("from config.models import load_pipeline_config; from config.settings import Settings; "
            "from tasks.run import run_pipeline; s = Settings(); run_pipeline(s, load_pipeline_config(s.config))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)


def test_the_log_purged_past_the_saved_position_says_what_to_do_then_resnapshots_by_config(bl_env, capsys) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    bl_env.source_sql("UPDATE patient SET LName = 'lost' WHERE PatNum <= 5;")
    conn = bl_env.server.connect()
    with conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        current = cur.fetchone()[0]

        def purged() -> bool:  # a file is kept until InnoDB's binlog checkpoint has passed it
            cur.execute("PURGE BINARY LOGS TO %s", (current,))
            cur.execute("SHOW BINARY LOGS")
            return [r[0] for r in cur.fetchall()][0] == current
        assert wait_for(purged, timeout=30)
    conn.close()
    capsys.readouterr()
    assert bl_env.run() == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "patient" in x)
    assert "is gone" in line and "purged" in line and f"oldest available: {current}:4" in line
    assert "etl run --full-refresh --tables patient visit" in line
    cfg = yaml.safe_load(bl_env.config_path.read_text())
    cfg["binlog"] = {"on_log_gone": "resnapshot"}
    bl_env.write_config(yaml.safe_dump(cfg, sort_keys=False))
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)
    bl_env.source_sql("DELETE FROM patient WHERE PatNum = 9;")
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)


def test_a_lost_reader_connection_is_retried_and_resumes_at_its_cursor(bl_env, monkeypatch) -> None:
    from tasks import faults

    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    bl_env.source_sql(";".join(f"UPDATE patient SET Balance = Balance + {i} WHERE PatNum = {i}" for i in range(1, 40)))
    fired: list[int] = []
    real = faults.check

    def once(phase: str, table: str, n: int) -> None:  # the injected drop happens on the first attempt only
        if phase == "binlog" and not fired and n == 5:
            fired.append(n)
            faults.inject(faults.Fault("binlog", table, n, "drop"))
        try:
            real(phase, table, n)
        finally:
            faults.clear()
    monkeypatch.setattr(faults, "check", once)
    assert bl_env.run() == 0
    assert fired == [5]
    assert_all_copies_equal(bl_env)


def test_two_runs_at_once_wait_for_each_other_and_the_copies_are_exact(bl_env) -> None:
    """The reader takes a named lock on the replica (tasks/locks.replica_lock, `_etl_binlog_capture`), each
    table's legs their own: a run that finds one held waits for it. Hold the reader's lock, start two runs,
    see both wait with nothing applied, release it: both finish and every copy equals the source."""
    import threading

    from tasks import locks
    from tests.conftest import mysql_connect

    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env, batch_size=40)
    assert bl_env.run() == 0
    bl_env.source_sql(CHURN)
    holder = mysql_connect()
    with holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0)", (locks._name(bl_env.replica_db, "_etl_binlog_capture"),))
        assert cur.fetchone()[0] == 1
    results: list = []

    def one() -> None:
        try:
            results.append(bl_env.run_plain(check=False))
        except BaseException as e:  # noqa: BLE001 - reported below
            results.append(e)
    runs = [threading.Thread(target=one) for _ in range(2)]
    for t in runs:
        t.start()
    try:
        assert not wait_for(lambda: bool(results), timeout=3)  # both wait on the held lock
        assert _rows(bl_env, bl_env.replica_db) != _rows(bl_env, bl_env.source_db)
    finally:
        holder.close()  # releases the lock
    for t in runs:
        t.join(timeout=300)
    assert len(results) == 2
    for r in results:
        assert not isinstance(r, BaseException), r
        assert not r.failed, [(o.table, o.error) for o in r.outcomes if o.status != "ok"]
    assert_all_copies_equal(bl_env)


def test_a_table_dropped_and_re_created_stops_with_what_to_do_then_a_full_refresh_heals_it(bl_env, capsys) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    # Same name, same columns, other rows: re-reading the logged keys would keep the old table's other rows.
    ddl = "CREATE TABLE patient (PatNum BIGINT PRIMARY KEY, LName VARCHAR(40) NOT NULL, " \
          "Balance DECIMAL(10,2) NOT NULL, Note TEXT NULL);"
    bl_env.source_sql(f"DROP TABLE patient; {ddl} INSERT INTO patient VALUES (1, 'Again', 1.00, NULL); "
                      "UPDATE visit SET Code = 'kept' WHERE VisitNo = 3;")
    capsys.readouterr()
    assert bl_env.run() == 1
    line = next(x for x in capsys.readouterr().err.splitlines() if "patient" in x)
    assert "dropped, renamed or replaced in the source" in line and "DROP TABLE" in line
    assert "etl run --full-refresh --tables patient" in line
    assert bl_env.run() == 1  # stays stopped until it is copied again
    assert bl_env.run("--full-refresh", "--tables", "patient") == 0
    assert_all_copies_equal(bl_env)

    # Dropped while a run reads the log (that run fails on the missing table), re-created before the next.
    bl_env.source_sql("DROP TABLE patient;")
    assert bl_env.run() == 1
    bl_env.source_sql(f"{ddl} INSERT INTO patient VALUES (2, 'Back', 2.00, 'x');")
    capsys.readouterr()
    assert bl_env.run() == 1
    assert "etl run --full-refresh --tables patient" in next(
        x for x in capsys.readouterr().err.splitlines() if "patient" in x)
    assert bl_env.run("--full-refresh", "--tables", "patient") == 0
    bl_env.source_sql("UPDATE patient SET LName = 'after' WHERE PatNum = 2; DELETE FROM visit WHERE VisitNo = 5;")
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)


def test_another_server_answering_says_the_log_is_gone(bl_env, capsys) -> None:
    """A restored or replaced source answers with another server_id: its log is not the one the saved
    position points into, so the binlog tables stop with the log-gone line (never read at a wrong offset)."""
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    rep = bl_env.mysql(bl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("UPDATE _etl_binlog_cursor SET server_id = 99")
    rep.close()
    bl_env.source_sql("UPDATE patient SET LName = 'elsewhere' WHERE PatNum = 1;")
    capsys.readouterr()
    assert bl_env.run() == 1
    line = next(x for x in capsys.readouterr().err.splitlines() if "patient" in x)
    assert "is gone" in line and "server_id 7" in line and "server_id 99" in line
    assert "etl run --full-refresh --tables patient visit" in line
