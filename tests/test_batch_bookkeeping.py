"""A batch of small tables writes its bookkeeping once (tasks/run.run_batch, MetricsWriter.batched): the
metrics rows and recorded probes of its tables in one write at the end, while each table's data and
sync state still commit together, table by table. A process killed in the middle of a batch must leave
every table either done (data and state of both copies new) or untouched (yesterday's rows and state),
and no recorded probe that could let the next run skip a table whose copies differ from the source.
Checked value by value in all three databases, with the kill a real SIGKILL (tasks/faults.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.dbcompare import fetch_mysql_rows, fetch_pg_rows
from tests.test_end_to_end import assert_all_copies_equal

SCHEMA = """
CREATE TABLE t_a (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, amount DECIMAL(10,2) NOT NULL, at DATETIME NULL);
INSERT INTO t_a SELECT seq, CONCAT('a', seq), seq / 7, '2024-01-01' + INTERVAL seq HOUR FROM seq_1_to_50;
CREATE TABLE t_b (code VARCHAR(10) PRIMARY KEY, descr TEXT NULL);
INSERT INTO t_b SELECT CONCAT('B', seq), IF(seq % 3 = 0, NULL, CONCAT('tab\\there ', seq)) FROM seq_1_to_40;
CREATE TABLE t_c (at DATETIME NOT NULL, what VARCHAR(20) NOT NULL);
INSERT INTO t_c SELECT '2024-02-01' + INTERVAL seq HOUR, CONCAT('event ', seq) FROM seq_1_to_30;
CREATE TABLE t_d (a INT NOT NULL, b VARCHAR(5) NOT NULL, v DOUBLE NULL, PRIMARY KEY (a, b));
INSERT INTO t_d SELECT seq, CHAR(64 + seq % 26), seq * 1.5 FROM seq_1_to_20;
CREATE TABLE t_e (id BIGINT UNSIGNED PRIMARY KEY, payload BLOB NULL);
INSERT INTO t_e SELECT seq, UNHEX(REPEAT('00FF', seq)) FROM seq_1_to_10;
"""
# Every table changes: in-place edits, a delete, an insert.
CHANGES = """
UPDATE t_a SET amount = amount + 1 WHERE id % 5 = 0; DELETE FROM t_a WHERE id = 3;
UPDATE t_b SET descr = 'edited' WHERE code = 'B2'; INSERT INTO t_b VALUES ('B99', 'new');
DELETE FROM t_c WHERE what = 'event 4'; INSERT INTO t_c VALUES ('2030-01-01', 'late');
UPDATE t_d SET v = NULL WHERE a = 7; INSERT INTO t_d VALUES (99, 'z', 0.25);
UPDATE t_e SET payload = NULL WHERE id = 2;
"""
# One batch, dealt largest first: t_a, t_b, then t_c (killed in its analytics load), then t_d, t_e.
ORDER = ("t_a", "t_b", "t_c", "t_d", "t_e")
KEYS = {"t_a": ["id"], "t_b": ["code"], "t_c": ["at", "what"], "t_d": ["a", "b"], "t_e": ["id"]}


def _config(env) -> None:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["priorities"] = [{"name": "normal", "workers": 1}]
    for n, t in enumerate(ORDER):  # full mode: every run refreshes in place, in one transaction per copy
        cfg["tables"][t].update(priority="normal", mode="full", estimated_rows=50 - n)
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))


def _generations(env) -> dict[str, tuple[int | None, int | None]]:
    """(replica generation, analytics generation) per table, from the two state tables."""
    with env.mysql(env.replica_db) as c, c.cursor() as cur:
        cur.execute("SELECT table_name, generation FROM _etl_state WHERE column_name = ''")
        rep = dict(cur.fetchall())
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT table_name, generation FROM etl.table_state WHERE target_schema = %s AND "
                        "column_name = ''", (env.pg_schema,))
            ana = dict(cur.fetchall())
    finally:
        pg.close()
    return {t: (rep.get(t), ana.get(t)) for t in ORDER}


def _snapshot(env) -> dict[str, tuple[list, list]]:
    """Every table's replica rows and analytics rows (its load-time column included: a rewrite changes it)."""
    out = {}
    rep, pg = env.mysql(env.replica_db), env.pg()
    try:
        for t in ORDER:
            out[t] = (fetch_mysql_rows(rep, t, KEYS[t]), fetch_pg_rows(pg, env.pg_schema, t, KEYS[t]))
    finally:
        rep.close(), pg.close()
    return out


def _killed_run(env) -> int:
    code = ("from config.models import load_pipeline_config\nfrom config.settings import Settings\n"
            "from tasks.run import run_pipeline\ns = Settings()\nrun_pipeline(s, load_pipeline_config(s.config))\n")
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ETL_FAULT": "analytics:t_c:1:kill"},
                       capture_output=True, text=True, timeout=300)
    return p.returncode


def test_a_batch_killed_midway_leaves_each_table_done_or_untouched(etl_env) -> None:
    from tasks.batches import deal_batches
    from config.models import load_pipeline_config

    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    batches = deal_batches(load_pipeline_config(etl_env.config_path).resolved_tables(), workers=1)
    assert [[t.name for t in b] for b in batches] == [list(ORDER)]  # one batch, in this order
    etl_env.run_plain()
    etl_env.run_plain()  # the second run records what the probe compares against
    assert_all_copies_equal(etl_env)
    before, gens = _snapshot(etl_env), _generations(etl_env)
    with etl_env.mysql() as c, c.cursor() as cur:
        cur.execute("SELECT * FROM t_a ORDER BY id")
        original_a = cur.fetchall()

    etl_env.source_sql(CHANGES)
    assert _killed_run(etl_env) == -9  # SIGKILL inside t_c's analytics transaction
    after, gens_after = _snapshot(etl_env), _generations(etl_env)
    # Done before the kill: both copies equal the source, each copy's state one generation on.
    assert_all_copies_equal(etl_env, skip=("t_c", "t_d", "t_e"))
    for t in ("t_a", "t_b"):
        assert gens_after[t] == (gens[t][0] + 1, gens[t][1] + 1), (t, gens[t], gens_after[t])
    # Killed in its analytics load: the replica (committed) is new, analytics holds yesterday's rows and state.
    assert after["t_c"][1] == before["t_c"][1]
    assert gens_after["t_c"] == (gens["t_c"][0] + 1, gens["t_c"][1])
    assert after["t_c"][0] != before["t_c"][0]
    # Not reached: untouched in both copies, rows and state.
    for t in ("t_d", "t_e"):
        assert after[t] == before[t], t
        assert gens_after[t] == gens[t], t
    # The hard case for a probe recorded once per batch: t_a finished in the killed run (its copies hold
    # the edits) but its probe was never recorded. Put t_a's source back exactly as it was before the
    # changes: its probe now reads what the run before the kill recorded, so a probe kept from then
    # would skip t_a while its copies hold the edits. The killed run forgot it before any table ran.
    with etl_env.mysql() as c, c.cursor() as cur:
        cur.execute("DELETE FROM t_a")
        cur.executemany("INSERT INTO t_a VALUES (%s, %s, %s, %s)", original_a)
        c.commit()
    result = etl_env.run_plain()
    assert _modes(etl_env, result.run_id)["t_a"] == "full"
    assert_all_copies_equal(etl_env)
    # The batch's own write recorded every table's probe and metrics row: nothing changed, all skipped.
    assert set(_modes(etl_env, result.run_id).values()) == {"full"}
    again = etl_env.run_plain()
    assert _modes(etl_env, again.run_id) == {t: "unchanged" for t in ORDER}
    assert_all_copies_equal(etl_env)


def _modes(env, run_id: str) -> dict[str, str]:
    """Each table's mode in the run's metrics rows (etl.table_runs)."""
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT table_name, mode FROM etl.table_runs WHERE run_id = %s AND status = 'ok'", (run_id,))
            return dict(cur.fetchall())
    finally:
        pg.close()
