"""Checksum mode against the real servers: in-place edits (no change column touched), deletes and
inserts in tables without a change column, compared value by value in all three databases; a table
that did not change issues no DDL and no write; a crash in either leg and a rerun are exact; every
type-fidelity value and sakila through the range re-copy.
"""
from __future__ import annotations

import re

import psycopg2.extensions
import pymysql.cursors
import pytest
import sqlalchemy.pool
import yaml
from sqlalchemy import event

from tasks import faults
from tests.conftest import FIXTURES, SHARED, load_sakila, mysql_connect
from tests.test_end_to_end import assert_all_copies_equal

SCHEMA = """
CREATE TABLE visits (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, amount DECIMAL(10,2), note TEXT NULL,
                     seen DATE NULL, score DOUBLE NULL);
CREATE TABLE pairs (a INT NOT NULL, b VARCHAR(20) NOT NULL, v INT NULL, PRIMARY KEY (a, b));
CREATE TABLE loose (x INT NULL, y VARCHAR(20) NULL);
"""


def _fill(env) -> None:
    env.source_sql(SCHEMA)
    conn = env.mysql()
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO visits VALUES (%s, %s, %s, %s, %s, %s)",
                        [(i, f"n{i}", i * 1.25, None if i % 7 else f"note {i}", f"2024-01-{i % 28 + 1:02d}", i / 3)
                         for i in range(1, 3001)])
        cur.executemany("INSERT INTO pairs VALUES (%s, %s, %s)", [(i // 10, f"k{i % 10}", i) for i in range(1200)])
        cur.executemany("INSERT INTO loose VALUES (%s, %s)", [(i % 5, f"y{i}") for i in range(50)])
    conn.commit()
    conn.close()


CONFIG = """defaults: {batch_size: 400, mode: checksum}
tables:
  visits: {primary_key: [id]}
  pairs: {primary_key: [a, b]}
  loose: {}
"""


def _runs(env) -> dict[str, dict]:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT DISTINCT ON (table_name) table_name, mode, status, replica_rows, analytics_rows, notes "
                    "FROM etl.table_runs ORDER BY table_name, started_at DESC")
        out = {r[0]: dict(zip(["mode", "status", "replica_rows", "analytics_rows", "notes"], r[1:]))
               for r in cur.fetchall()}
    pg.close()
    return out


def _edit(env) -> None:
    conn = env.mysql()
    with conn.cursor() as cur:
        cur.execute("UPDATE visits SET amount = amount + 1 WHERE id IN (5, 1500, 2999)")  # in place
        cur.execute("UPDATE visits SET note = 'edited' WHERE id = 77")
        cur.execute("DELETE FROM visits WHERE id IN (10, 11, 2000)")
        cur.execute("INSERT INTO visits VALUES (5000, 'new', 1.00, NULL, NULL, NULL), (0, 'zero', 2, 'z', NULL, 0)")
        cur.execute("UPDATE pairs SET v = -v WHERE a = 50")
        cur.execute("DELETE FROM pairs WHERE a = 60 AND b = 'k3'")
        cur.execute("INSERT INTO pairs VALUES (60, 'k3x', 1), (500, 'a', 2)")
        cur.execute("UPDATE loose SET y = 'changed' WHERE y = 'y7'")
    conn.commit()
    conn.close()


def test_edits_deletes_inserts_without_change_columns(etl_env) -> None:
    _fill(etl_env)
    etl_env.write_config(CONFIG)
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    _edit(etl_env)
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    runs = _runs(etl_env)
    assert runs["visits"]["mode"] == "checksum" and runs["pairs"]["mode"] == "checksum"
    # Only the differing ranges moved: a few leaves of at most 500 rows each, not the 3,000-row table.
    assert 0 < runs["visits"]["replica_rows"] < 1500, runs["visits"]
    assert runs["loose"]["mode"] == "full"  # keyless and different: copied again in full
    # Nothing changed: the probe skips every table (mode `unchanged`), and the copies are still exact.
    etl_env.run_plain()
    runs = _runs(etl_env)
    assert {t: (r["mode"], r["replica_rows"] or 0, r["analytics_rows"] or 0) for t, r in runs.items()} == {
        "visits": ("unchanged", 0, 0), "pairs": ("unchanged", 0, 0), "loose": ("unchanged", 0, 0)}
    assert_all_copies_equal(etl_env)


class _Recorder:
    """Every statement the run sends to MySQL (pymysql) and PostgreSQL (psycopg2), as sent."""

    def __init__(self) -> None:
        self.mysql: list[str] = []
        self.pg: list[str] = []


def _record_statements(monkeypatch, rec: _Recorder):  # noqa: ANN202 - returns the function that stops it
    orig = pymysql.cursors.Cursor.execute

    def execute(self, query, args=None):  # noqa: ANN001, ANN202
        rec.mysql.append(query if isinstance(query, str) else query.decode())
        return orig(self, query, args)
    monkeypatch.setattr(pymysql.cursors.Cursor, "execute", execute)

    class PgCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):  # noqa: ANN001, ANN202, A002
            rec.pg.append(query if isinstance(query, str) else query.decode())
            return super().execute(query, vars)

        def copy_expert(self, sql, file, size=8192):  # noqa: ANN001, ANN202
            rec.pg.append(sql)
            return super().copy_expert(sql, file, size)

    def on_connect(dbapi_conn, record) -> None:  # noqa: ANN001
        if isinstance(dbapi_conn, psycopg2.extensions.connection):
            dbapi_conn.cursor_factory = PgCursor
    event.listen(sqlalchemy.pool.Pool, "connect", on_connect)
    return lambda: event.remove(sqlalchemy.pool.Pool, "connect", on_connect)


_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\b", re.I)
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|LOAD|COPY\b.*\bFROM\s+STDIN)", re.I | re.S)


def _pg_counters(env) -> dict:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT c.relname, c.xmin::text, c.relfilenode, s.n_tup_ins, s.n_tup_upd, s.n_tup_del "
                    "FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE s.schemaname = 'raw'")
        out = {r[0]: r[1:] for r in cur.fetchall()}
    pg.close()
    return out


def _mysql_tables(env) -> dict:
    conn = mysql_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, CREATE_TIME, UPDATE_TIME FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = %s", (env.replica_db,))
        out = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    return out


def test_an_unchanged_table_issues_no_ddl_and_no_write(etl_env, monkeypatch) -> None:
    import time

    _fill(etl_env)
    etl_env.write_config(CONFIG)
    etl_env.run_plain()
    etl_env.run_plain()  # the keyless table's first comparison (its state now carries the sequence)
    time.sleep(1.5)  # PostgreSQL's table counters are flushed at most once a second
    pg_before, my_before = _pg_counters(etl_env), _mysql_tables(etl_env)
    rec = _Recorder()
    stop = _record_statements(monkeypatch, rec)
    try:
        etl_env.run_plain()
    finally:
        stop()
    time.sleep(1.5)
    assert rec.mysql and rec.pg  # the recorder saw the run's statements
    # Checksum queries ran against both MySQL sides; nothing else changed anything.
    assert any("SUM(" in q and "MD5(" in q for q in rec.mysql)
    # The only writes are the run's own metrics rows (schema etl in PostgreSQL): the run record.
    pg_writes = [q for q in rec.pg if _WRITE.match(q) and not re.search(r"\betl\.", q)]
    assert not pg_writes, pg_writes
    my_writes = [q for q in rec.mysql if _WRITE.match(q)]
    assert not my_writes, my_writes
    # DDL: only the bookkeeping's no-op `CREATE ... IF NOT EXISTS` (the tables exist), never a data table's.
    ddl = [q for q in rec.mysql + rec.pg if _DDL.match(q) and not re.search(r"IF NOT EXISTS", q, re.I)]
    assert not ddl, ddl
    for q in rec.mysql + rec.pg:
        if _DDL.match(q):
            assert not re.search(r"\b(visits|pairs|loose)\b", q), q
    # And the servers agree: no row inserted, updated or deleted, no table rewritten or altered.
    assert _pg_counters(etl_env) == pg_before
    # UPDATE_TIME lives in the table-definition cache: MariaDB forgets it (NULL) when it evicts the
    # table, which a busy server (more tables than table_definition_cache) does at any time. So a
    # NULL afterwards says nothing; a different time says the table was written.
    after = _mysql_tables(etl_env)
    for t in ("visits", "pairs", "loose"):
        (created, updated), (created_before, updated_before) = after[t], my_before[t]
        assert created == created_before, t
        assert updated is None or updated == updated_before, (t, updated_before, updated)


@pytest.mark.parametrize("phase", ["replica", "analytics"])
def test_a_crash_in_either_leg_then_a_rerun_is_exact(etl_env, phase) -> None:
    _fill(etl_env)
    etl_env.write_config(CONFIG)
    etl_env.run_plain()
    _edit(etl_env)
    conn = etl_env.mysql()
    with conn.cursor() as cur:  # more differing ranges, far apart, so a crash falls between them
        cur.execute("UPDATE visits SET name = CONCAT(name, '!') WHERE id % 400 = 3")
    conn.commit()
    conn.close()
    # After the first re-copied range (replica) or the first applied batch of keys (analytics) commits.
    faults.inject(faults.Fault(phase, "visits", 1))
    result = etl_env.run_plain(check=False)
    assert [o.table for o in result.outcomes if o.status != "ok"] == ["visits"]
    faults.clear()
    if phase == "analytics":
        # The replica already holds every change; analytics is behind until the rerun.
        assert_all_copies_equal(etl_env, skip=("visits",))
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    assert _runs(etl_env)["visits"]["mode"] == "checksum"


def _all_checksum(env) -> None:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = 700
    for t in cfg["tables"].values():
        t["mode"] = "checksum"
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))


def _damage_replica(env, tables: list[str]) -> None:
    """Empty part of the replica behind the pipeline's back: every range of those tables differs, so
    every row goes through the checksum re-copy (source -> replica by LOAD DATA, replica -> analytics)."""
    conn = mysql_connect(env.replica_db)
    with conn.cursor() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        for t in tables:
            cur.execute(f"DELETE FROM `{t}`")
    conn.commit()
    conn.close()
    # The source did not change, so the per-table probe (tasks/probe.py) would skip these tables: it
    # trusts the copies until the source moves (damage behind our back is `etl verify`'s to find).
    # Forget the recorded probes so the run compares the ranges and re-copies every row.
    pg = env.pg()
    with pg, pg.cursor() as cur:
        cur.execute("DELETE FROM etl.table_probe")
    pg.close()


def _source_tables(env) -> list[str]:
    conn = env.mysql()
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND "
                    "TABLE_TYPE = 'BASE TABLE'", (env.source_db,))
        names = [r[0] for r in cur.fetchall()]
    conn.close()
    return names


def test_every_type_through_the_range_recopy(etl_env) -> None:
    etl_env.source_sql((FIXTURES / "all_types.sql").read_text(encoding="utf-8"))
    etl_env.source_sql((FIXTURES / "all_types_more.sql").read_text(encoding="utf-8"))
    _all_checksum(etl_env)
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    _damage_replica(etl_env, _source_tables(etl_env))
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    runs = _runs(etl_env)
    assert runs["composite_pk"]["mode"] == "checksum" and runs["composite_pk"]["replica_rows"] > 0


@pytest.mark.skipif(not (SHARED / "corpus" / "sakila").exists(), reason="../shared/corpus/sakila not present")
def test_sakila_through_checksum_mode(etl_env) -> None:
    load_sakila(etl_env.source_db)
    _all_checksum(etl_env)
    etl_env.run_plain()
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        cur.execute("UPDATE rental SET return_date = NULL WHERE rental_id % 1000 = 1")  # no change column touched?
        cur.execute("DELETE FROM payment WHERE payment_id % 997 = 0")
        cur.execute("UPDATE film_text SET description = CONCAT(description, '.') WHERE film_id < 4")
    conn.commit()
    conn.close()
    _damage_replica(etl_env, ["actor", "language"])
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)


def test_an_emptied_source_table_does_not_empty_the_copies(etl_env) -> None:
    _fill(etl_env)
    etl_env.write_config(CONFIG.replace("visits: {primary_key: [id]}",
                                        "visits: {primary_key: [id], deletes_min_rows: 100}"))
    etl_env.run_plain()
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        cur.execute("DELETE FROM visits WHERE id > 300")
    conn.commit()
    conn.close()
    result = etl_env.run_plain(check=False)
    failed = {o.table: o.error for o in result.outcomes if o.status != "ok"}
    assert list(failed) == ["visits"] and "refusing to delete" in failed["visits"], failed
    for conn, sql in ((mysql_connect(etl_env.replica_db), "SELECT COUNT(*) FROM visits"),):
        with conn.cursor() as cur:
            cur.execute(sql)
            assert cur.fetchone()[0] == 3000
        conn.close()
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM raw.visits")
        assert cur.fetchone()[0] == 3000
    pg.close()


# --- Bisection: only the differing leaves move ----------------------------------------------------

WIDE = """
CREATE TABLE wide (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, amount DECIMAL(10,2), note TEXT NULL,
                   seen DATETIME(3) NULL, score DOUBLE NULL, flags SET('a','b','c') NULL, raw VARBINARY(16) NULL);
CREATE TABLE codes (code VARCHAR(16) COLLATE utf8mb4_general_ci PRIMARY KEY, label VARCHAR(40) NULL, n INT NULL);
"""


def _fill_wide(env, rows: int) -> None:
    env.source_sql(WIDE + SCHEMA.split("CREATE TABLE loose")[0].split(";", 1)[1] + ";")  # + pairs
    conn = env.mysql()
    with conn.cursor() as cur:
        # Even ids only: odd ids are inserted later between existing keys, in every range.
        cur.executemany("INSERT INTO wide VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [(2 * i, f"n{i}", i * 1.25, None if i % 7 else f"note {i}", f"2024-01-{i % 28 + 1:02d} 10:00:0{i % 10}.5",
                          i / 3, ("a", "b,c", None)[i % 3], bytes([i % 256, 0, 255])) for i in range(1, rows + 1)])
        cur.executemany("INSERT INTO codes VALUES (%s, %s, %s)",
                        [(("Ab", "ac", "B", "ä")[i % 4] + f"{i:05d}", f"l{i}", i) for i in range(2000)])
        cur.executemany("INSERT INTO pairs VALUES (%s, %s, %s)", [(i // 10, f"k{i % 10}", i) for i in range(1200)])
    conn.commit()
    conn.close()


BISECT_CONFIG = """defaults: {batch_size: 400, mode: checksum}
tables:
  wide: {primary_key: [id]}
  codes: {primary_key: [code]}
  pairs: {primary_key: [a, b]}
"""


def test_a_one_row_edit_in_a_large_range_moves_that_row_alone(etl_env) -> None:
    _fill_wide(etl_env, 5000)
    etl_env.write_config(BISECT_CONFIG)
    etl_env.run_plain()
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        cur.execute("UPDATE wide SET note = 'edited in place' WHERE id = 5002")  # one row of one 10,000-key range
    conn.commit()
    conn.close()
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    runs = _runs(etl_env)
    assert runs["wide"]["mode"] == "checksum"
    # The leaf is one replica row (tasks/range_checksum.LEAF): exactly the edited row moves, both legs.
    assert (runs["wide"]["replica_rows"], runs["wide"]["analytics_rows"]) == (1, 1), runs["wide"]
    assert runs["codes"]["mode"] == runs["pairs"]["mode"] == "unchanged"


@pytest.mark.parametrize("page,fanout", [(None, None), (700, 8)])
def test_spread_edits_deletes_and_inserts_move_only_the_differing_leaves(etl_env, monkeypatch, page, fanout) -> None:
    from tasks import range_checksum

    if page:  # small top-level ranges and fanout: several pages and four bisection levels
        monkeypatch.setattr(range_checksum, "PAGE", page)
        monkeypatch.setattr(range_checksum, "FANOUT", fanout)
    _fill_wide(etl_env, 5000)
    etl_env.write_config(BISECT_CONFIG)
    etl_env.run_plain()
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        # In place, no change column: every 97th row of wide, every 50th code, one pair group.
        cur.execute("UPDATE wide SET amount = amount + 1 WHERE id % 194 = 0")
        edited = cur.rowcount
        cur.execute("UPDATE wide SET flags = NULL, raw = NULL WHERE id = 4444")
        edited += cur.rowcount
        cur.execute("DELETE FROM wide WHERE id % 1010 = 0")
        deleted = cur.rowcount
        # Between existing keys all over the table, and past its end.
        cur.executemany("INSERT INTO wide (id, name) VALUES (%s, %s)", [(i, f"ins{i}") for i in range(3, 10001, 666)])
        inserted = cur.rowcount
        cur.execute("INSERT INTO wide (id, name, note) VALUES (20001, 'tail', 't'), (20003, 'tail', NULL)")
        cur.execute("UPDATE codes SET n = -n WHERE n % 50 = 7")
        cur.execute("UPDATE codes SET code = UPPER(code) WHERE code = 'ac00001'")  # the same key to the server
        cur.execute("DELETE FROM codes WHERE n % 333 = 5")
        cur.executemany("INSERT INTO codes VALUES (%s, 'new', 0)", [(f"b{i:05d}x",) for i in range(0, 2000, 97)])
        cur.execute("UPDATE pairs SET v = -v WHERE a = 50")
        cur.execute("DELETE FROM pairs WHERE a = 60 AND b = 'k3'")
        cur.execute("INSERT INTO pairs VALUES (60, 'k3x', 1), (500, 'a', 2)")
    conn.commit()
    conn.close()
    etl_env.run_plain()
    assert_all_copies_equal(etl_env)
    runs = _runs(etl_env)
    assert {runs[t]["mode"] for t in ("wide", "codes", "pairs")} == {"checksum"}
    # What moved into the replica: the edited rows, the inserted ones, and per inserted row at most its
    # successor (the leaf holding it) and per range whose source read stopped at its cap one more.
    assert edited + inserted + 2 <= runs["wide"]["replica_rows"] <= edited + 3 * inserted + 2 + 4, (
        runs["wide"], edited, inserted, deleted)
    assert runs["wide"]["replica_rows"] < 5000 // 20
    assert runs["codes"]["replica_rows"] < 2000 // 10, runs["codes"]
    assert runs["pairs"]["replica_rows"] <= 10 + 2 + 4, runs["pairs"]
    etl_env.run_plain()  # and nothing is left over: every table unchanged now
    assert {r["mode"] for r in _runs(etl_env).values()} == {"unchanged"}
    assert_all_copies_equal(etl_env)


def test_deletes_off_overwrites_the_differing_leaves_and_keeps_deleted_rows(etl_env) -> None:
    _fill_wide(etl_env, 3000)
    etl_env.write_config(BISECT_CONFIG.replace("wide: {primary_key: [id]}", 'wide: {primary_key: [id], deletes: "off"}'))
    etl_env.run_plain()
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        cur.execute("UPDATE wide SET name = CONCAT(name, '*') WHERE id % 300 = 0")
        cur.execute("DELETE FROM wide WHERE id IN (1000, 4002)")
        cur.execute("INSERT INTO wide (id, name) VALUES (1001, 'between'), (9001, 'tail')")
    conn.commit()
    conn.close()
    etl_env.run_plain()
    # The deleted rows stay in both copies; every other row is the source's, value by value.
    assert_all_copies_equal(etl_env, skip=("wide",))
    src, rep, pg = etl_env.mysql(), mysql_connect(etl_env.replica_db), etl_env.pg()
    with src.cursor() as s, rep.cursor() as r, pg.cursor() as p:
        s.execute("SELECT id, name FROM wide ORDER BY id")
        want = {i: n for i, n in s.fetchall()}
        r.execute("SELECT id, name FROM wide ORDER BY id")
        got_rep = {i: n for i, n in r.fetchall()}
        p.execute("SELECT id, name FROM raw.wide ORDER BY id")
        got_pg = {i: n for i, n in p.fetchall()}
    src.close(), rep.close(), pg.close()
    assert {1000, 4002} <= set(got_rep) and got_rep == got_pg
    assert {i: n for i, n in got_rep.items() if i not in (1000, 4002)} == want
    # 20 edited rows, 2 inserted, the inserted 1001's successor 1002 in its leaf (and a cap's leaf or two).
    assert 23 <= _runs(etl_env)["wide"]["replica_rows"] <= 20 + 2 + 2 + 2, _runs(etl_env)["wide"]
