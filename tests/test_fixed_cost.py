"""A table that did not change costs (almost) nothing: the probe (tasks/probe.py) finds nothing to do
and the run issues no DDL and no write to the replica or to analytics for it (statements counted as
the drivers send them, tests/statements.py). And the probe must not skip what did change: an
in-place edit that bumps the change column, a delete, an insert, an edit in a table without one.
After every run all three databases are compared value by value."""
from __future__ import annotations

import re
import time

import yaml

from tests.statements import recording
from tests.test_end_to_end import assert_all_copies_equal

SCHEMA = """
CREATE TABLE patient (PatNum BIGINT PRIMARY KEY, LName VARCHAR(40) NOT NULL, Balance DECIMAL(10,2) NOT NULL,
  SecDateTEdit TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP);
INSERT INTO patient (PatNum, LName, Balance, SecDateTEdit)
  SELECT seq, CONCAT('Last', seq), seq / 3, '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_300;
CREATE TABLE codes (code VARCHAR(10) PRIMARY KEY, descr TEXT NULL);
INSERT INTO codes SELECT CONCAT('D', seq), IF(seq % 4 = 0, NULL, CONCAT('tab\\there ', seq)) FROM seq_1_to_50;
CREATE TABLE audit (at DATETIME NOT NULL, what VARCHAR(20) NOT NULL);
INSERT INTO audit SELECT '2024-02-01' + INTERVAL seq HOUR, CONCAT('event ', seq) FROM seq_1_to_30;
"""
TABLES = ("patient", "codes", "audit")
# The run's own bookkeeping rows (one per run and per table) are the only writes an unchanged table may cause.
METRICS = re.compile(r"\betl\.(table_runs|pipeline_runs)\b")


def _config(env) -> None:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = 200
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))


def _run(**kw):
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks.run import run_pipeline

    settings = Settings()
    result = run_pipeline(settings, load_pipeline_config(settings.config), **kw)
    assert not result.failed, result.outcomes
    return result


def _about(log, table: str):
    return [s for s in log if re.search(rf"\b{table}\b", s.sql)]


def _modes(env) -> dict[str, str]:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, mode FROM etl.table_runs r WHERE started_at = (SELECT max(started_at) "
                    "FROM etl.table_runs WHERE table_name = r.table_name)")
        out = dict(cur.fetchall())
    pg.close()
    return out


def test_an_unchanged_table_issues_no_ddl_and_no_write(etl_env) -> None:
    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    _run()
    _run()  # the second run records what the probe compares against for incremental tables too
    with recording() as one:
        _run(tables=["codes"])
    with recording() as log:
        _run()
    assert_all_copies_equal(etl_env)
    writes = [s for s in log if s.writes and not s.ddl and not METRICS.search(s.sql)]
    assert not writes, [s.sql for s in writes]
    # The only DDL is the run's own bookkeeping made sure of once per run (IF NOT EXISTS): as much of
    # it for three tables as for one, and none of it names a table of the run.
    ddl = [s.sql for s in log if s.ddl]
    assert ddl == [s.sql for s in one if s.ddl]
    assert all("IF NOT EXISTS" in d for d in ddl), ddl
    assert not [d for d in ddl if any(re.search(rf"\b{t}\b", d) for t in TABLES)]
    assert not [s for s in log if s.kind == "mysql" and s.database == etl_env.replica_db and s.writes]
    for t in TABLES:
        # A probe on each side and the metrics row: a handful of reads per table, not dozens.
        assert len(_about(log, t)) <= 8, (t, [s.sql for s in _about(log, t)])
    assert set(_modes(etl_env).values()) == {"unchanged"}


def _settled_run(env) -> None:
    """A run past the probe's margin after the last stamp (tasks/probe.py trusts a TIMESTAMP MAX only
    2 s before now; trx_started is truncated to the second): its probe is trusted, so the next run of an
    unchanged table is skipped (asserted, so each change below is made against a probe that could skip)."""
    time.sleep(3.1)
    _run()
    _run()
    assert set(_modes(env).values()) == {"unchanged"}, _modes(env)


def test_the_probe_does_not_skip_a_change(etl_env) -> None:
    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    _run()
    _settled_run(etl_env)
    # An in-place edit (ON UPDATE bumps the change column)
    etl_env.source_sql("UPDATE patient SET Balance = Balance + 1 WHERE PatNum = 7")
    _run()
    assert _modes(etl_env)["patient"] == "incremental"
    assert_all_copies_equal(etl_env)
    _settled_run(etl_env)
    # an insert
    etl_env.source_sql("INSERT INTO patient (PatNum, LName, Balance) VALUES (1000, 'New', 1.5)")
    _run()
    assert _modes(etl_env)["patient"] == "incremental"
    assert_all_copies_equal(etl_env)
    _settled_run(etl_env)
    # a delete (the count drops; the maxima stay)
    etl_env.source_sql("DELETE FROM patient WHERE PatNum = 9")
    _run()
    assert _modes(etl_env)["patient"] != "unchanged"
    assert_all_copies_equal(etl_env)
    _settled_run(etl_env)
    # Tables without a change column: an in-place edit keeps the count, the checksum sees it.
    etl_env.source_sql("UPDATE codes SET descr = 'edited' WHERE code = 'D3';"
                       "UPDATE audit SET what = 'changed' WHERE what = 'event 5'")
    _run()
    modes = _modes(etl_env)
    assert modes["codes"] != "unchanged" and modes["audit"] == "full" and modes["patient"] == "unchanged", modes
    assert_all_copies_equal(etl_env)
    # A delete plus an insert that keeps the count in a table without a change column.
    etl_env.source_sql("DELETE FROM audit WHERE what = 'event 6'; INSERT INTO audit VALUES ('2030-01-01', 'x')")
    _run()
    assert _modes(etl_env)["audit"] == "full"
    assert_all_copies_equal(etl_env)
    # Swapping two values between rows keeps count and every column's multiset: the row hash still differs.
    etl_env.source_sql("UPDATE codes SET descr = IF(code = 'D1', 'tab\\there 2', 'tab\\there 1') WHERE code IN ('D1', 'D2')")
    _run()
    assert _modes(etl_env)["codes"] != "unchanged"
    assert_all_copies_equal(etl_env)
    _run()
    assert set(_modes(etl_env).values()) == {"unchanged"}
    assert_all_copies_equal(etl_env)


def test_profile_statements_per_unchanged_table(etl_env, capsys) -> None:
    """Not an assertion of speed: prints what one unchanged table costs per server (see with -s)."""
    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    _run()
    _run()
    with capsys.disabled():
        for t in TABLES:
            with recording() as log:
                _run(tables=[t])
            by = {k: sum(s.kind == k for s in log) for k in ("mysql", "pg")}
            print(f"\n{t}: {len(log)} statements in a run of it alone ({by}; "
                  f"{sum(s.writes for s in log)} writes, {sum(s.ddl for s in log)} DDL)")
            for s in log:
                print("   ", s.kind, s.database[-4:], " ".join(s.sql.split())[:150])
