"""A small table's full refresh without shadow-table DDL (tasks/replica_full.py, tasks/analytics_full.py).

A table of one chunk is created under its own name on its first copy, and rewritten in place
afterwards (DELETE + INSERT ... SELECT / LOAD DATA in the replica, DELETE + COPY in PostgreSQL, each
with the sync state in one transaction). Every type of the type-fidelity fixtures goes through both
paths and arrives unchanged; a change of shape takes the shadow path; a failed in-place refresh
leaves yesterday's rows. Plain runner: the paths are the same under Prefect.
"""
from __future__ import annotations

import re

import pytest

from tests.conftest import FIXTURES
from tests.statements import recording
from tests.test_end_to_end import assert_all_copies_equal, discover_with

IN_PLACE = "small table: refreshed in place in one transaction (no shadow table)"
CREATED = ("small table: created and copied in one step (no shadow table)",
           "small table: created and loaded in one transaction (no shadow table)")


def _notes(result) -> dict[str, list[str]]:
    return {o.table: o.notes for o in result.outcomes}


@pytest.mark.parametrize("method", ["server", "stream"])
def test_every_type_through_the_small_table_paths(etl_env, monkeypatch, method) -> None:
    etl_env.source_sql((FIXTURES / "all_types.sql").read_text(encoding="utf-8"))
    etl_env.source_sql((FIXTURES / "all_types_more.sql").read_text(encoding="utf-8"))
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    discover_with(etl_env, batch_size=50000)

    first = etl_env.run_plain()
    tables = assert_all_copies_equal(etl_env)
    created = [t for t, n in _notes(first).items() if set(CREATED) <= set(n)]
    assert len(created) >= 10, _notes(first)

    with recording() as log:
        again = etl_env.run_plain(full_refresh=True)
    assert assert_all_copies_equal(etl_env) == tables
    in_place = [t for t, n in _notes(again).items() if n.count(IN_PLACE) == 2]
    assert set(created) <= set(in_place), _notes(again)
    # No DDL names a table refreshed in place, on either server (the run's bookkeeping DDL names none).
    for t in in_place:
        pattern = re.compile(rf"[`\"]?{re.escape(t)}[`\"]?", re.I)
        ddl = [s.sql for s in log if s.ddl and pattern.search(s.sql)
               and not re.search(r"_etl_(state|pending|checkpoint|checksum)|\betl\.", s.sql)]
        assert not ddl, (t, ddl)

    # Edits, deletes and inserts: the in-place refresh carries them, value by value.
    etl_env.source_sql("UPDATE composite_pk SET label = CONCAT(COALESCE(label, ''), 'x') LIMIT 3;"
                       "DELETE FROM no_pk LIMIT 2;")
    etl_env.run_plain(full_refresh=True)
    assert_all_copies_equal(etl_env)


def test_a_change_of_shape_takes_the_shadow_path(etl_env) -> None:
    etl_env.source_sql("CREATE TABLE codes (code VARCHAR(10) PRIMARY KEY, descr TEXT NULL, n INT NOT NULL);"
                       "INSERT INTO codes SELECT CONCAT('D', seq), CONCAT('d', seq), seq FROM seq_1_to_40;")
    discover_with(etl_env)
    etl_env.run_plain()
    # A new secondary index: the replica gets it (the in-place path would have kept the old shape);
    # analytics has no secondary indexes, so its table is still the same shape and refreshed in place.
    etl_env.source_sql("CREATE INDEX by_n ON codes (n)")
    result = etl_env.run_plain(full_refresh=True)
    assert _notes(result)["codes"].count(IN_PLACE) == 1
    with etl_env.mysql(etl_env.replica_db) as c, c.cursor() as cur:
        cur.execute("SHOW CREATE TABLE codes")
        assert "KEY `by_n` (`n`)" in cur.fetchone()[1]
    assert_all_copies_equal(etl_env)
    # The same shape again: in place on both sides.
    result = etl_env.run_plain(full_refresh=True)
    assert _notes(result)["codes"].count(IN_PLACE) == 2
    # A new column: shadow path again, and analytics gets the column.
    etl_env.source_sql("ALTER TABLE codes ADD COLUMN extra VARCHAR(5) NULL; UPDATE codes SET extra = 'e' WHERE n < 5")
    result = etl_env.run_plain(full_refresh=True)
    assert IN_PLACE not in _notes(result)["codes"]
    assert_all_copies_equal(etl_env)


def test_a_failed_in_place_refresh_keeps_the_old_rows(etl_env) -> None:
    from tasks import faults

    etl_env.source_sql("CREATE TABLE codes (code VARCHAR(10) PRIMARY KEY, descr TEXT NULL);"
                       "INSERT INTO codes SELECT CONCAT('D', seq), CONCAT('d', seq) FROM seq_1_to_40;")
    discover_with(etl_env)
    etl_env.run_plain()
    etl_env.source_sql("DELETE FROM codes WHERE code = 'D1'; UPDATE codes SET descr = 'new' WHERE code = 'D2'")
    pg = etl_env.pg()
    try:
        for phase in ("replica", "analytics"):
            faults.inject(faults.Fault(phase, "codes", 1))
            try:
                result = etl_env.run_plain(full_refresh=True, check=False)
            finally:
                faults.clear()
            assert result.failed == ["codes"]
            with pg.cursor() as cur:
                cur.execute("SELECT count(*), max(descr) FILTER (WHERE code = 'D2') FROM raw.codes")
                assert cur.fetchone() == (40, "d2")  # yesterday's rows, all of them
            pg.rollback()
            if phase == "replica":
                with etl_env.mysql(etl_env.replica_db) as c, c.cursor() as cur:
                    cur.execute("SELECT COUNT(*), MAX(IF(code = 'D2', descr, NULL)) FROM codes")
                    assert cur.fetchone() == (40, "d2")
    finally:
        pg.close()
    etl_env.run_plain(full_refresh=True)
    assert_all_copies_equal(etl_env)
