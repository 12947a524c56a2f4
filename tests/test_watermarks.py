"""A saved watermark never leaves a row behind it (issue 10 items 3-5): a retry keeps the window read
before its first row, a transaction that commits after MAX was read is still picked up, and a DATETIME
stamped in the repeated hour of a DST fall-back is too. Each scenario runs the plain functions
(tasks.sync.replicate / load, as tests/test_soak.py::_plain_run does) against the real servers and
compares every copy value by value after the run that must have caught the row.
"""
from __future__ import annotations

import time

import pymysql
import pytest
import yaml

from tasks import faults
from tests.conftest import MYSQL, mysql_connect
from tests.test_end_to_end import assert_all_copies_equal

TABLE = """
CREATE TABLE visit (
  id INT AUTO_INCREMENT PRIMARY KEY,
  note VARCHAR(40) NOT NULL,
  changed TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
);
INSERT INTO visit (note, changed) SELECT CONCAT('visit ', seq), '2024-05-01' + INTERVAL seq MINUTE FROM seq_1_to_50;
"""


def _configure(env, batch_size: int = 10, **table) -> None:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = batch_size
    for name, extra in table.items():
        cfg["tables"][name].update(extra)
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))


def _run(table_name: str, *, replicate_only: bool = False, resume: bool = False):
    """One table's replica + analytics phases without Prefect; returns the replica phase's stats."""
    from sqlalchemy.engine import make_url

    from blocks.connectors import urls_from_settings
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks import sync
    from tasks.connections import open_engines

    settings = Settings()
    cfg = load_pipeline_config(settings.config)
    table = cfg.resolved_tables([table_name])[0]
    urls = urls_from_settings(settings)
    source_db, replica_db = (make_url(u).database for u in (urls.source, urls.replica))
    with open_engines(urls, workers=1, max_source_connections=settings.max_source_queries) as engines:
        rep = sync.replicate(engines, table, source_db=source_db, replica_db=replica_db, method="server",
                             full_refresh=False, resume=resume)
        if not replicate_only:
            sync.load(engines, table, replica_db=replica_db, pg_schema=settings.analytics_schema,
                      column_case=cfg.analytics.column_case, full_refresh=False, resume=False,
                      loaded_at_column=cfg.analytics.loaded_at_column)
    return rep


def _replica_note(env, row_id: int) -> str:
    rep = env.mysql(env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT note FROM visit WHERE id = %s", (row_id,))
        row = cur.fetchone()
    rep.close()
    return row[0] if row else None


def _retry_after_drop(env, edits: list[str]) -> None:
    """A replica attempt that loses its connection after the first committed chunk, source edits while
    Prefect waits to retry, then the retry (resume=True, as flows/pipeline.replicate_table does)."""
    faults.inject(faults.Fault("replica", "visit", 1, "drop"))
    with pytest.raises(pymysql.err.OperationalError, match="injected"):
        _run("visit", replicate_only=True)
    faults.clear()
    for sql in edits:
        env.source_sql(sql)
    _run("visit", resume=True)


def test_a_retried_full_copy_saves_the_maxima_read_before_its_first_chunk(etl_env) -> None:
    etl_env.source_sql(TABLE)
    _configure(etl_env)
    # Row 1 was committed by the first attempt's first chunk; row 40 is copied by the retry after
    # it. Both are edited before the retry, row 40 last: a retry that read MAX again would save row
    # 40's stamp, and row 1 (stamped just before it, never re-read by the resumed copy) would stay stale.
    _retry_after_drop(etl_env, [
        "UPDATE visit SET note = 'edited before the retry', changed = '2025-01-01 00:00:01' WHERE id = 1",
        "UPDATE visit SET note = 'copied by the retry', changed = '2025-01-01 00:00:02' WHERE id = 40",
    ])
    assert _replica_note(etl_env, 1) == "visit 1"  # the resumed copy did not re-read the first chunk
    _run("visit")
    assert _replica_note(etl_env, 1) == "edited before the retry"
    assert_all_copies_equal(etl_env)


def test_a_retried_incremental_window_saves_the_watermark_read_before_its_first_chunk(etl_env) -> None:
    etl_env.source_sql(TABLE)
    _configure(etl_env)
    _run("visit")
    etl_env.source_sql("UPDATE visit SET note = CONCAT(note, ' v2'), changed = '2025-02-01' + INTERVAL id SECOND "
                       "WHERE id <= 30")
    # Row 2 is merged by the first chunk, then edited again (stamp above the first MAX) before the
    # retry; the retry keeps the first window, so the next run must find row 2 above the saved watermark.
    faults.inject(faults.Fault("replica", "visit", 1, "drop"))
    with pytest.raises(pymysql.err.OperationalError, match="injected"):
        _run("visit", replicate_only=True)
    faults.clear()
    etl_env.source_sql("UPDATE visit SET note = 'edited between attempts', changed = '2025-03-01' WHERE id = 2")
    stats = _run("visit", resume=True)
    assert "retry: kept the window read before the first attempt" in stats.notes
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT wm_datetime FROM _etl_state WHERE table_name = 'visit' AND column_name = 'changed'")
        saved = cur.fetchone()[0]
    rep.close()
    assert str(saved) <= "2025-02-01 00:00:30"  # the first window's MAX at most, not row 2's 2025-03-01
    _run("visit")
    assert _replica_note(etl_env, 2) == "edited between attempts"
    assert_all_copies_equal(etl_env)


def test_a_transaction_committing_after_max_was_read_is_copied_next_run(etl_env) -> None:
    etl_env.source_sql(TABLE)
    _configure(etl_env)
    _run("visit")
    a = mysql_connect(etl_env.source_db)
    a.autocommit(False)
    try:
        with a.cursor() as cur:  # session A: stamped t1 by ON UPDATE CURRENT_TIMESTAMP, not committed yet
            cur.execute("UPDATE visit SET note = 'late commit' WHERE id = 5")
        time.sleep(0.05)
        # session B: stamped t2 > t1, committed at once
        etl_env.source_sql("UPDATE visit SET note = 'committed first' WHERE id = 6")
        _run("visit")  # reads MAX = t2 while A is still open
        a.commit()
    finally:
        a.close()
    _run("visit")
    assert _replica_note(etl_env, 5) == "late commit"
    assert_all_copies_equal(etl_env)


def test_an_auto_increment_id_committing_out_of_order_is_copied_next_run(etl_env, monkeypatch) -> None:
    from tasks import watermarks

    monkeypatch.setattr(watermarks, "INT_SETTLE_SECONDS", 0.3)  # how long a run waits for open inserts
    etl_env.source_sql(TABLE)
    _configure(etl_env, visit={"incremental_columns": ["id"]})
    _run("visit")
    a = mysql_connect(etl_env.source_db)
    a.autocommit(False)
    try:
        with a.cursor() as cur:  # session A takes the next id and keeps it uncommitted
            cur.execute("INSERT INTO visit (note) VALUES ('inserted first, committed last')")
            first = cur.lastrowid
        etl_env.source_sql("INSERT INTO visit (note) VALUES ('a higher id, committed at once')")
        _run("visit")  # reads MAX(id) above `first` while `first` is not committed
        a.commit()
    finally:
        a.close()
    _run("visit")
    assert _replica_note(etl_env, first) == "inserted first, committed last"
    assert_all_copies_equal(etl_env)


def test_datetime_edits_in_the_repeated_hour_of_a_dst_fall_back_are_copied(etl_env) -> None:
    etl_env.source_sql("""
CREATE TABLE appt (
  id INT PRIMARY KEY,
  note VARCHAR(40) NOT NULL,
  edited DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
);
INSERT INTO appt (id, note, edited) SELECT seq, CONCAT('appt ', seq), '2024-05-01' + INTERVAL seq MINUTE
  FROM seq_1_to_20;
""")
    _configure(etl_env)
    writer = mysql_connect(etl_env.source_db)
    try:
        with writer.cursor() as cur:
            # The application's session is on daylight time (-04:00): the server stamps its local time.
            cur.execute("SET time_zone = '-04:00'")
            cur.execute("UPDATE appt SET note = 'edited on daylight time' WHERE id = 1")
            _run("appt")
            # The clocks fall back (-05:00): the next edit is stamped an hour earlier than row 1's.
            cur.execute("SET time_zone = '-05:00'")
            cur.execute("UPDATE appt SET note = 'edited in the repeated hour' WHERE id = 2")
            cur.execute("SELECT (SELECT edited FROM appt WHERE id = 2) < (SELECT edited FROM appt WHERE id = 1)")
            assert cur.fetchone()[0] == 1
    finally:
        writer.close()
    _run("appt")
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT note FROM appt WHERE id = 2")
        assert cur.fetchone()[0] == "edited in the repeated hour"
    rep.close()
    assert_all_copies_equal(etl_env)


def test_without_process_privilege_late_commits_fall_back_to_a_lookback_and_plan_says_so(
        etl_env, monkeypatch, capsys) -> None:
    """A source login without PROCESS cannot read INNODB_TRX: the watermark is held FALLBACK_LOOKBACK
    below MAX instead, which still catches a transaction committing seconds later."""
    etl_env.source_sql(TABLE)
    _configure(etl_env)
    user = f"{etl_env.prefix}_ro"
    root = mysql_connect()
    with root.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'ro-pass'")
        cur.execute(f"GRANT SELECT, SHOW VIEW ON `{etl_env.source_db}`.* TO '{user}'@'127.0.0.1'")
    try:
        monkeypatch.setenv("ETL_SOURCE_URL",
                           f"mysql+pymysql://{user}:ro-pass@{MYSQL['host']}:{MYSQL['port']}/{etl_env.source_db}")
        assert etl_env.etl("plan") == 0
        plan = capsys.readouterr().out
        assert "INNODB_TRX is not readable (grant PROCESS)" in plan and "held 15 min below MAX" in plan
        _run("visit")
        a = mysql_connect(etl_env.source_db)
        a.autocommit(False)
        try:
            with a.cursor() as cur:
                cur.execute("UPDATE visit SET note = 'late commit' WHERE id = 5")
            time.sleep(0.05)
            etl_env.source_sql("UPDATE visit SET note = 'committed first' WHERE id = 6")
            stats = _run("visit")
            a.commit()
        finally:
            a.close()
        assert any("INNODB_TRX is not readable" in n for n in stats.notes)
        _run("visit")
        assert _replica_note(etl_env, 5) == "late commit"
        assert_all_copies_equal(etl_env)
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        root.close()
