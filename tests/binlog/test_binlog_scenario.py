"""Binlog mode end to end on a server with a binary log: every change reaches both copies exactly."""
from __future__ import annotations

import yaml

from tests.test_end_to_end import assert_all_copies_equal

SCHEMA = """
CREATE TABLE patient (PatNum BIGINT PRIMARY KEY, LName VARCHAR(40) NOT NULL, Balance DECIMAL(10,2) NOT NULL,
  Note TEXT NULL);
INSERT INTO patient SELECT seq, CONCAT('Last', seq), seq / 3, IF(seq % 5 = 0, NULL, CONCAT('n', seq))
  FROM seq_1_to_300;
CREATE TABLE visit (PatNum BIGINT NOT NULL, VisitNo INT NOT NULL, Code VARCHAR(10) NOT NULL,
  PRIMARY KEY (PatNum, VisitNo));
INSERT INTO visit SELECT seq % 40, seq, CONCAT('D', seq) FROM seq_1_to_120;
CREATE TABLE audit (at DATETIME NOT NULL, what VARCHAR(20) NOT NULL);
INSERT INTO audit SELECT '2024-02-01' + INTERVAL seq HOUR, CONCAT('event ', seq) FROM seq_1_to_10;
"""


def binlog_config(env, *, batch_size: int = 50, **top) -> dict:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = batch_size
    cfg.update(top)
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def table_modes(env) -> dict[str, str]:
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT table_name, mode FROM etl.table_runs WHERE run_id = "
                        "(SELECT run_id FROM etl.pipeline_runs ORDER BY started_at DESC LIMIT 1)")
            return dict(cur.fetchall())
    finally:
        pg.close()


def test_discover_writes_binlog_mode_for_keyed_tables_when_the_server_serves_it(bl_env) -> None:
    bl_env.source_sql(SCHEMA)
    cfg = binlog_config(bl_env)
    assert cfg["tables"]["patient"]["mode"] == "binlog"
    assert cfg["tables"]["visit"]["mode"] == "binlog"
    assert cfg["tables"]["audit"].get("mode", "full") == "full"  # no key: stays on full refresh


def test_inserts_updates_key_changes_deletes_rollback_and_truncate_reach_both_copies(bl_env) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)
    # No timestamp anywhere: only the log shows these.
    bl_env.source_sql("""
        UPDATE patient SET Balance = Balance + 1 WHERE PatNum <= 20;
        UPDATE patient SET Note = NULL WHERE PatNum BETWEEN 21 AND 25;
        DELETE FROM patient WHERE PatNum BETWEEN 100 AND 130;
        INSERT INTO patient VALUES (1001, 'New', 1.50, 'x'), (1002, 'Newer', 2.25, NULL);
        UPDATE patient SET PatNum = 5000 WHERE PatNum = 7;
        UPDATE visit SET VisitNo = VisitNo + 1000 WHERE VisitNo <= 5;
        DELETE FROM visit WHERE VisitNo BETWEEN 50 AND 60;
        START TRANSACTION;
        INSERT INTO patient VALUES (9999, 'Ghost', 0, 'never');
        UPDATE patient SET LName = 'Ghost' WHERE PatNum = 1;
        DELETE FROM patient WHERE PatNum = 2;
        ROLLBACK;
        INSERT INTO audit VALUES ('2025-01-01', 'after');
    """)
    assert bl_env.run() == 0
    assert table_modes(bl_env)["patient"] == "binlog"
    assert_all_copies_equal(bl_env)
    rep = bl_env.mysql(bl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM patient WHERE PatNum IN (7, 9999) OR LName = 'Ghost'")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT COUNT(*) FROM patient WHERE PatNum IN (2, 5000)")
        assert cur.fetchone()[0] == 2
    rep.close()

    # TRUNCATE in the log empties both copies; rows inserted after it arrive.
    bl_env.source_sql("UPDATE visit SET Code = 'before' WHERE VisitNo = 80; TRUNCATE TABLE visit; "
                      "INSERT INTO visit VALUES (1, 1, 'again'), (2, 2, 'again');")
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)
    pg = bl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT patnum, visitno, code FROM raw.visit ORDER BY 1, 2")
        assert cur.fetchall() == [(1, 1, "again"), (2, 2, "again")]
    pg.close()


def test_a_100000_row_transaction_an_added_and_a_widened_column(bl_env) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env, batch_size=20000)
    assert bl_env.run() == 0
    # One transaction of 100,000 rows: the reader flushes its keys mid-transaction (FLUSH_KEYS), each leg
    # applies them in batches; its own run, so the log carries it (no added column reloads the table).
    bl_env.source_sql("""
        START TRANSACTION;
        INSERT INTO visit SELECT seq % 1000, 1000 + seq, CONCAT('B', seq) FROM seq_1_to_100000;
        UPDATE visit SET Code = 'in-tx' WHERE VisitNo BETWEEN 1 AND 5;
        COMMIT;
    """)
    assert bl_env.run() == 0
    assert table_modes(bl_env)["visit"] == "binlog"
    assert_all_copies_equal(bl_env)
    bl_env.source_sql("""
        ALTER TABLE patient ADD COLUMN Email VARCHAR(60) NULL;
        UPDATE patient SET Email = CONCAT('p', PatNum, '@x') WHERE PatNum <= 10;
        ALTER TABLE visit MODIFY Code VARCHAR(200) NOT NULL;
        UPDATE visit SET Code = REPEAT('w', 150) WHERE VisitNo = 9;
    """)
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)
    bl_env.source_sql("DELETE FROM visit WHERE VisitNo > 1000 AND VisitNo % 3 = 0; "
                      "UPDATE visit SET Code = 'short' WHERE VisitNo = 10;")
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)
    # The change log keeps nothing both legs have applied.
    rep = bl_env.mysql(bl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM _etl_binlog_changes")
        assert cur.fetchone()[0] == 0
    rep.close()


def test_the_flow_captures_the_log_once_per_run(bl_env, prefect_harness) -> None:
    from tasks import binlog_reader

    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    calls: list[int] = []
    real = binlog_reader.capture

    def counting(*a, **kw):  # noqa: ANN002, ANN003
        calls.append(1)
        return real(*a, **kw)
    binlog_reader.capture = counting
    try:
        assert bl_env.etl("run") == 0
        bl_env.source_sql("UPDATE patient SET LName = 'Flow' WHERE PatNum <= 3; DELETE FROM visit WHERE VisitNo = 4;")
        assert bl_env.etl("run") == 0
    finally:
        binlog_reader.capture = real
    assert calls == [1, 1]
    assert_all_copies_equal(bl_env)


def test_plan_shows_the_saved_and_current_position_and_the_bytes_to_read(bl_env, capsys) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    bl_env.source_sql("UPDATE patient SET LName = 'planned' WHERE PatNum <= 50;")
    capsys.readouterr()
    assert bl_env.etl("plan") == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("binlog: saved position"))
    saved, rest = line.split("saved position ")[1].split(", server position ")
    current, nbytes = rest.split(", ")
    assert saved != current and int(nbytes.split()[0]) > 0
    row = next(x for x in out.splitlines() if " patient " in x)
    assert "binlog" in row
    rep = bl_env.mysql(bl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT wm_int FROM _etl_state WHERE table_name = 'patient' AND column_name = '_binlog_seq'")
        (seq,) = cur.fetchone()
    rep.close()
    assert f"binlog change log at {seq}, full copy at binlog file 0" in row  # the saved state, in words
    assert "_binlog_seq" not in out and "_binlog_at" not in out
    assert bl_env.run() == 0
    assert_all_copies_equal(bl_env)


def test_plan_says_what_the_machine_server_lacks_for_binlog_mode(etl_env, capsys) -> None:
    etl_env.source_sql("CREATE TABLE t (id INT PRIMARY KEY);")
    assert etl_env.etl("discover") == 0
    capsys.readouterr()
    assert etl_env.etl("plan") == 0
    out = capsys.readouterr().out
    assert "binlog mode not available (tables keep their mode): binary logging is off: start the server with " \
           "--log-bin" in out


def test_status_shows_the_lag_of_the_source(bl_env, capsys) -> None:
    bl_env.source_sql(SCHEMA)
    binlog_config(bl_env)
    assert bl_env.run() == 0
    assert bl_env.run() == 0
    capsys.readouterr()
    bl_env.etl("status")
    assert f"binlog lag of {bl_env.source_db}: 0 bytes, 0 s" in capsys.readouterr().out
    bl_env.source_sql("UPDATE patient SET LName = 'lagging' WHERE PatNum <= 30;")
    bl_env.etl("status")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("binlog lag"))
    assert int(line.split(": ")[1].split()[0]) > 0


def test_a_key_the_log_cannot_name_exactly_keeps_its_mode_and_a_binlog_config_for_it_is_refused(bl_env, capsys) -> None:
    bl_env.source_sql("CREATE TABLE stamped (at TIMESTAMP(3) NOT NULL PRIMARY KEY, v INT NOT NULL);"
                      "INSERT INTO stamped VALUES ('2024-03-01 10:00:00.125', 1);"
                      "CREATE TABLE wide (code VARCHAR(8) CHARACTER SET utf32 NOT NULL PRIMARY KEY);")
    cfg = binlog_config(bl_env)
    for name, col in (("stamped", "'at' is timestamp(3)"), ("wide", "'code' is in utf32")):
        assert cfg["tables"][name].get("mode") != "binlog"
        assert f"not binlog: key column {col}" in cfg["tables"][name]["comment"]
    cfg["tables"]["stamped"]["mode"] = "binlog"
    bl_env.write_config(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    assert bl_env.run() == 1
    line = next(x for x in capsys.readouterr().err.splitlines() if "stamped" in x)
    assert "binlog mode cannot use it" in line and "set tables.stamped.mode: checksum" in line
