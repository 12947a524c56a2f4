"""Incremental sync never loses or duplicates a row: updates, ties at the watermark, 12,000 rows on one
timestamp across batches, a late edit inside the lookback window, deletes, an added and a widened
column, a crash between chunks. After each run every table of all three databases is compared,
row by row and value by value.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest
import yaml

from tasks import faults
from tests.conftest import ROOT, SHARED, load_sakila
from tests.test_end_to_end import assert_all_copies_equal

_spec = importlib.util.spec_from_file_location("gen_dental", ROOT / "bench" / "gen_dental.py")
gen_dental = sys.modules.setdefault("gen_dental", importlib.util.module_from_spec(_spec))
if not hasattr(gen_dental, "generate"):
    _spec.loader.exec_module(gen_dental)


def _config(env, **table_overrides) -> dict:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = 2000
    for t, extra in table_overrides.items():
        cfg["tables"][t].update(extra)
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def _table_run(env, table: str) -> dict:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT mode, status, analytics_rows, notes, error, watermark_after FROM etl.table_runs "
                    "WHERE table_name = %s ORDER BY started_at DESC LIMIT 1", (table,))
        row = cur.fetchone()
    pg.close()
    return dict(zip(["mode", "status", "rows", "notes", "error", "watermark_after"], row))


def test_incremental_scenario_on_the_demo_schema(etl_env, monkeypatch) -> None:
    gen_dental.generate(etl_env.source_url, 0.002)
    cfg = _config(etl_env, procedurelog={"lookback": "30d"})
    assert cfg["tables"]["procedurelog"]["mode"] == "incremental"
    assert "SecDateTEdit" in cfg["tables"]["procedurelog"]["incremental_columns"]

    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)
    assert _table_run(etl_env, "procedurelog")["mode"] == "full"  # first run: no state yet

    src = etl_env.mysql()
    with src.cursor() as cur:
        cur.execute("SELECT MAX(SecDateTEdit), MAX(ProcNum), COUNT(*) FROM procedurelog")
        wm, max_id, n_before = cur.fetchone()
        # 1. ordinary updates: ON UPDATE CURRENT_TIMESTAMP bumps the change column
        cur.execute("UPDATE procedurelog SET ProcFee = ProcFee + 1 WHERE ProcNum % 50 = 0")
        # 2. rows arriving later with a change column equal to the saved watermark exactly
        cur.execute("INSERT INTO procedurelog (ProcNum, PatNum, CodeNum, ProvNum, ProcDate, SecDateTEdit) "
                    "SELECT %s + seq, 1, 1, 1, '2024-01-01', %s FROM seq_1_to_5", (max_id, wm))
        # 3. 12,000 rows sharing one timestamp, across several 2,000-row batches
        cur.execute("INSERT INTO procedurelog (ProcNum, PatNum, CodeNum, ProvNum, ProcDate, SecDateTEdit) "
                    "SELECT %s + 100 + seq, 2, 1, 1, '2024-02-02', '2025-10-01 00:00:00' FROM seq_1_to_12000",
                    (max_id,))
        # ... and one row stamped far in the future by a wrong clock: it must not hide later changes
        cur.execute("INSERT INTO procedurelog (ProcNum, PatNum, CodeNum, ProvNum, ProcDate, SecDateTEdit) "
                    "VALUES (%s + 50000, 3, 1, 1, '2024-03-03', '2037-01-01 00:00:00')", (max_id,))
        # 4. an in-place edit that does not touch the change column, inside the 30-day lookback
        cur.execute("SELECT ProcNum FROM procedurelog WHERE SecDateTEdit = %s AND ProcNum <= %s LIMIT 1", (wm, max_id))
        late = cur.fetchone()[0]
        cur.execute("UPDATE procedurelog SET Discount = 123.25, SecDateTEdit = SecDateTEdit WHERE ProcNum = %s", (late,))
        # 5. deletes (a few rows of a table: ordinary business)
        cur.execute("DELETE FROM procedurelog WHERE ProcNum IN (3, 7, 11)")
        cur.execute("DELETE FROM paysplit WHERE SplitNum IN (2, 4)")
        # 6. an added column and a widened column
        cur.execute("ALTER TABLE payment ADD COLUMN Memo VARCHAR(30) NOT NULL DEFAULT 'memo'")
        cur.execute("ALTER TABLE claim MODIFY ClaimStatus VARCHAR(20) NOT NULL DEFAULT ''")
        cur.execute("UPDATE claim SET ClaimStatus = 'widened-status' WHERE ClaimNum = 1")
    src.close()

    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)
    run = _table_run(etl_env, "procedurelog")
    assert run["mode"] == "incremental" and run["status"] == "ok"
    assert "deletes checked: 3 removed" in run["notes"]
    # The saved watermark stops at the server's clock, not at the row from 2037.
    assert "2037" not in run["watermark_after"]
    pay = _table_run(etl_env, "payment")
    assert pay["mode"] == "full" and "added Memo" in pay["notes"] or "Memo" in (pay["notes"] or "")
    claim = _table_run(etl_env, "claim")
    assert claim["mode"] == "incremental"
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM raw.procedurelog")
        assert cur.fetchone()[0] == n_before + 5 + 12000 + 1 - 3
        cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'raw.claim'::regclass AND attname = 'claimstatus'")
        assert cur.fetchone()[0] == "character varying(20)"
        # Watermark state is typed: a timestamp column, not text.
        cur.execute("SELECT pg_typeof(wm_timestamp)::text, wm_timestamp > '2025-10-01' FROM etl.table_state "
                    "WHERE table_name = 'procedurelog' AND column_name = 'SecDateTEdit'")
        assert cur.fetchone() == ("timestamp without time zone", True)
    pg.close()

    # 7. a crash between chunks, then a normal run: identical, no duplicates, no gaps
    src = etl_env.mysql()
    with src.cursor() as cur:
        cur.execute("UPDATE procedurelog SET ProcFee = ProcFee + 2 WHERE ProcNum % 3 = 0")
    src.close()
    faults.inject(faults.Fault("analytics", "procedurelog", after_chunks=1))
    assert etl_env.run("--tables", "procedurelog") == 1
    faults.clear()
    assert etl_env.run("--tables", "procedurelog") == 0
    assert_all_copies_equal(etl_env)

    # 8. --full-refresh resets the state and keeps the old one in history
    assert etl_env.run("--tables", "procedurelog", "--full-refresh") == 0
    assert _table_run(etl_env, "procedurelog")["mode"] == "full"
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM etl.table_state_history WHERE table_name = 'procedurelog'")
        assert cur.fetchone()[0] > 0
    pg.close()
    assert_all_copies_equal(etl_env)


def test_delete_guard_refuses_to_empty_a_table(etl_env) -> None:
    etl_env.source_sql(
        "CREATE TABLE visit (id INT PRIMARY KEY, v INT, changed TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP "
        "ON UPDATE CURRENT_TIMESTAMP);"
        "INSERT INTO visit (id, v) SELECT seq, seq FROM seq_1_to_3000;"
    )
    _config(etl_env)
    assert etl_env.run() == 0
    assert etl_env.run() == 0  # incremental from here on
    etl_env.source_sql("DELETE FROM visit WHERE id > 1000")  # two thirds vanish: looks like a partial read
    assert etl_env.run() == 1
    run = _table_run(etl_env, "visit")
    assert run["status"] == "failed"
    assert "refusing to delete 2,000 of 3,000 rows" in run["error"]
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM raw.visit")
        assert cur.fetchone()[0] == 3000
    pg.close()
    # Deleting one row of six is ordinary business.
    etl_env.source_sql("INSERT INTO visit (id, v) SELECT 1000 + seq, seq FROM seq_1_to_2000")
    assert etl_env.run() == 0
    etl_env.source_sql("DELETE FROM visit WHERE id % 6 = 0 AND id <= 60")
    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)


@pytest.mark.skipif(not (SHARED / "corpus" / "sakila").exists(), reason="../shared/corpus/sakila not present")
def test_incremental_scenario_on_sakila(etl_env) -> None:
    load_sakila(etl_env.source_db)
    cfg = _config(etl_env)
    assert cfg["tables"]["rental"]["mode"] == "incremental"
    assert etl_env.run() == 0
    etl_env.source_sql(
        "UPDATE customer SET email = CONCAT('x', email) WHERE customer_id <= 20;"
        "INSERT INTO actor (first_name, last_name) VALUES ('NEW', 'ACTOR');"
        "DELETE FROM payment WHERE payment_id IN (1, 2, 3);"
        "ALTER TABLE actor ADD COLUMN nickname VARCHAR(20) NULL;"
        "UPDATE actor SET nickname = 'nick' WHERE actor_id = 1;"
        "ALTER TABLE film MODIFY title VARCHAR(300) NOT NULL;"
    )
    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)
    # payment.last_update is nullable, so discover puts payment on checksum mode (its deletes are found
    # by the range checksums); film was widened in place and stays incremental.
    assert cfg["tables"]["payment"]["mode"] == "checksum"
    assert _table_run(etl_env, "payment")["mode"] == "checksum"
    assert _table_run(etl_env, "film")["mode"] == "incremental"
    assert "widened title" in _table_run(etl_env, "film")["notes"]
    # rental did not change: the probe skips it (tasks/probe.py); it is not reloaded either way.
    assert _table_run(etl_env, "rental")["mode"] in ("incremental", "unchanged")


def test_lookback_date_columns_reread_a_window(etl_env, capsys) -> None:
    """`lookback: {columns: [...], window: 30d}` re-reads rows dated in the last 30 days every run, so an
    edit that touched no change column still arrives; an edit to an older row does not (which is what
    the window is for, and shows the test can tell the difference)."""
    etl_env.source_sql(
        "CREATE TABLE proc (id INT PRIMARY KEY, fee DECIMAL(10,2) NOT NULL, ProcDate DATE NOT NULL, "
        "DateComplete DATETIME NULL, changed TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP "
        "ON UPDATE CURRENT_TIMESTAMP);"
        # Stamped in the past, one second apart: only the newest row sits at the watermark, so what
        # the next run re-reads beyond it comes from the window.
        "INSERT INTO proc (id, fee, ProcDate, DateComplete, changed) SELECT seq, seq, "
        "CURDATE() - INTERVAL (seq % 100) DAY, IF(seq % 7 = 0, NOW() - INTERVAL (seq % 90) DAY, NULL), "
        "NOW() - INTERVAL 1 DAY - INTERVAL seq SECOND FROM seq_1_to_5000;"
    )
    cfg = _config(etl_env, proc={"lookback": {"columns": ["ProcDate", "DateComplete"], "window": "30d"}})
    assert cfg["tables"]["proc"]["mode"] == "incremental"
    assert etl_env.run() == 0
    assert etl_env.run() == 0  # incremental from here on
    capsys.readouterr()
    assert etl_env.etl("plan") == 0
    out = capsys.readouterr().out
    assert "re-reads rows whose ProcDate, DateComplete is in the last 30d" in out
    # `changed` leads no index: the plan warns that finding changes scans the table; with one, it does not.
    assert "no index starts with changed: every run scans the whole table" in out
    etl_env.source_sql("CREATE INDEX by_changed ON proc (changed)")
    assert etl_env.etl("plan") == 0
    assert "no index starts with" not in capsys.readouterr().out
    # Edits that leave the change column alone (`changed = changed`):
    etl_env.source_sql(
        "UPDATE proc SET fee = 9001, changed = changed WHERE id = 105;"   # ProcDate 5 days ago: in the window
        "UPDATE proc SET fee = 9002, changed = changed WHERE id = 160;"   # 60 days ago, DateComplete NULL: outside
        "UPDATE proc SET fee = 9003, changed = changed WHERE id = 154;"   # ProcDate 54 days ago, DateComplete 64: outside
        "UPDATE proc SET fee = 9004, ProcDate = CURDATE() - INTERVAL 80 DAY, DateComplete = NOW(), changed = changed "
        "WHERE id = 280;"                                                   # only DateComplete is in the window
    )
    assert etl_env.run() == 0
    run = _table_run(etl_env, "proc")
    assert run["mode"] == "incremental" and run["status"] == "ok"
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT id, fee FROM raw.proc WHERE id IN (105, 154, 160, 280) ORDER BY id")
        assert [(i, int(f)) for i, f in cur.fetchall()] == [(105, 9001), (154, 154), (160, 160), (280, 9004)]
    pg.close()
    # Outside the window the copies are stale, as documented; an ordinary change brings them level.
    etl_env.source_sql("UPDATE proc SET changed = NOW() WHERE id IN (154, 160)")
    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)


def test_lookback_column_that_does_not_fit_fails_the_table_by_name(etl_env) -> None:
    etl_env.source_sql(
        "CREATE TABLE proc (id INT PRIMARY KEY, n INT NOT NULL, ProcDate DATE NOT NULL, changed TIMESTAMP NOT NULL "
        "DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP);"
        "INSERT INTO proc (id, n, ProcDate) SELECT seq, seq, CURDATE() FROM seq_1_to_10;"
    )
    _config(etl_env, proc={"lookback": {"columns": ["ProcDat"], "window": "30d"}})
    assert etl_env.run() == 1  # before any row moves, even on the first (full) run
    err = _table_run(etl_env, "proc")["error"]
    assert "table 'proc': lookback column 'ProcDat' does not exist (did you mean 'ProcDate'?); " \
           "fix tables.proc.lookback" in err and "\n" not in err
    _config(etl_env, proc={"lookback": {"columns": ["n"], "window": "30d"}})
    assert etl_env.run() == 1
    assert "lookback column 'n' is int; a lookback window needs a DATE" in _table_run(etl_env, "proc")["error"]
