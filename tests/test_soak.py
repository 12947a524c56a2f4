"""Soak (issue 6): the incremental pipeline run back to back while another process keeps writing.

A small source (four tables: an auto-increment table with a TIMESTAMP ... ON UPDATE CURRENT_TIMESTAMP
change column, one with two change columns, one with a fractional TIMESTAMP(6), one without any
change column, so on full refresh) is discovered and loaded once. Then tests/soak_writer.py, a
separate process with its own connection, inserts, updates (bursts inside one second, updates that
land exactly on the current maximum timestamp) and deletes rows while SOAK_RUNS incremental runs go
on back to back in this process. Every run must succeed. After the writer stops and one last run,
every table of the three databases is compared value by value, and no connection may be left:
neither by the pipeline's own counters (every run's `still_open`, `etl connections --strict`) nor
by the servers (PROCESSLIST, pg_stat_activity), between runs as well as at the end. Rows moved and
seconds per run are printed as a summary (shown without -s too).

The soak tests the table work under a writer, not the orchestration, so every run is the plain runner
(`EtlEnv.run_plain()`: tasks/run.run_pipeline, what the flows wrap: the same engines and pools,
tasks/sync.py's replicate and load, the verify count check, groups in order with `workers` tables at
once, the same etl.* metrics rows). Through Prefect a run of these four tables took 13-19 s on the
shared 2-core box against 1-2.3 s without it; SOAK_FLOW_EVERY=n makes every n-th run an `etl run`
(0, the default, none).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, mysql_connect, pg_connect
from tests.test_end_to_end import assert_all_copies_equal

pytestmark = pytest.mark.slow

RUNS = int(os.environ.get("SOAK_RUNS", "50"))
FLOW_EVERY = int(os.environ.get("SOAK_FLOW_EVERY", "0"))  # run n is an `etl run` when n % FLOW_EVERY == 0
BATCH_SIZE = 100  # small, so the change windows are paged in several chunks and ties straddle them

SCHEMA = """
CREATE TABLE visit (
  id INT AUTO_INCREMENT PRIMARY KEY,
  patient_id INT NOT NULL,
  status VARCHAR(20) NOT NULL,
  fee DECIMAL(10,2) NOT NULL,
  note VARCHAR(100) NULL,
  changed TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  KEY (patient_id)
);
INSERT INTO visit (patient_id, status, fee, note, changed)
  SELECT 1 + seq % 1500, 'seen', seq / 7, CONCAT('visit ', seq), '2024-05-01' + INTERVAL seq MINUTE
  FROM seq_1_to_3000;
CREATE TABLE patient (
  PatNum BIGINT AUTO_INCREMENT PRIMARY KEY,
  LName VARCHAR(50) NOT NULL,
  FName VARCHAR(50) NOT NULL,
  Birthdate DATE NOT NULL,
  Balance DOUBLE NOT NULL,
  DateTEdit DATETIME(6) NULL,
  SecDateTEdit TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
);
INSERT INTO patient (LName, FName, Birthdate, Balance, DateTEdit, SecDateTEdit)
  SELECT CONCAT('Last', seq), 'First', '1950-01-01' + INTERVAL seq DAY, seq / 4,
         IF(seq % 3 = 0, NULL, '2024-01-01' + INTERVAL seq HOUR), '2024-06-01' + INTERVAL (seq DIV 10) SECOND
  FROM seq_1_to_1500;
CREATE TABLE payment (
  PayNum INT AUTO_INCREMENT PRIMARY KEY,
  PatNum BIGINT NOT NULL,
  Amount DECIMAL(12,2) NOT NULL,
  Memo TEXT NULL,
  SecDateTEdit TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
);
INSERT INTO payment (PatNum, Amount, Memo, SecDateTEdit)
  SELECT 1 + seq % 1500, seq * 1.25, IF(seq % 5 = 0, NULL, CONCAT('memo ', seq)),
         '2024-07-01' + INTERVAL seq SECOND
  FROM seq_1_to_2000;
CREATE TABLE codes (
  code VARCHAR(12) PRIMARY KEY,
  descr VARCHAR(100) NOT NULL,
  fee DECIMAL(8,2) NOT NULL
);
INSERT INTO codes SELECT CONCAT('D', LPAD(seq, 4, '0')), CONCAT('procedure ', seq), seq FROM seq_1_to_400;
"""


class SoakWriter:
    """The writer process (tests/soak_writer.py), stopped through its stop file, never killed mid-statement."""

    def __init__(self, db: str, work_dir: Path):
        self.stop_file = work_dir / "stop-writer"
        self.stderr_path = work_dir / "writer.stderr"
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.soak_writer", "--db", db, "--stop-file", str(self.stop_file)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        first = self.proc.stdout.readline()
        if not first:
            self.proc.wait()
            raise AssertionError(f"soak writer did not start: {self.stderr_path.read_text()}")
        self.connection_id = json.loads(first)["connection_id"]

    def stop(self, timeout: float = 30.0) -> dict:
        """Stop after the statement in progress; the writer must have been writing the whole time."""
        if self.proc.poll() is not None:
            raise AssertionError(f"soak writer stopped early (exit {self.proc.returncode}): "
                                 f"{self.stderr_path.read_text()}")
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"soak writer failed (exit {self.proc.returncode}): {self.stderr_path.read_text()}")
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _server_sessions(env, *, exclude: tuple[int, ...] = ()) -> dict[str, int]:
    """Sessions the servers hold for this test's databases, other than our own and `exclude`."""
    my = mysql_connect()
    try:
        with my.cursor() as cur:
            ids = "".join(", %s" for _ in exclude)
            cur.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB IN (%s, %s) "
                        f"AND ID NOT IN (CONNECTION_ID(){ids})", (env.source_db, env.replica_db, *exclude))
            mysql = cur.fetchone()[0]
    finally:
        my.close()
    pg = pg_connect("postgres")  # not the test's database: this session does not count itself
    try:
        with pg.cursor() as cur:
            # Client sessions only: an autovacuum worker may visit the busy raw tables at any time.
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                        (env.pg_db,))
            postgres = cur.fetchone()[0]
    finally:
        pg.close()
    return {"mysql": mysql, "postgres": postgres}


def _no_server_sessions(env, *, exclude: tuple[int, ...] = (), wait: float = 3.0) -> dict[str, int]:
    """Zero sessions, allowing the servers a moment to reap connections the client just closed."""
    deadline = time.monotonic() + wait
    while True:
        seen = _server_sessions(env, exclude=exclude)
        if not any(seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def _run_rows(env) -> list[dict]:
    """Per pipeline run, oldest first: its status, rows moved per table and connection counters."""
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute(
                "SELECT p.run_id, p.status, p.connection_usage, "
                "       json_object_agg(t.table_name, json_build_object('mode', t.mode, 'status', t.status, "
                "           'replica_rows', t.replica_rows, 'analytics_rows', t.analytics_rows, 'notes', t.notes)) "
                "FROM etl.pipeline_runs p JOIN etl.table_runs t USING (run_id) "
                "GROUP BY p.run_id, p.status, p.connection_usage, p.started_at ORDER BY p.started_at")
            return [dict(run_id=r[0], status=r[1], usage=r[2], tables=r[3]) for r in cur.fetchall()]
    finally:
        pg.close()


def _summary(seconds: list[tuple[str, float]], runs: list[dict], writer: dict) -> str:
    moved = [sum((t["analytics_rows"] or 0) for t in r["tables"].values()) for r in runs]
    full = sum((t["analytics_rows"] or 0) for r in runs for t in r["tables"].values() if t["mode"] == "full")
    # MySQL's affected rows: 1 per inserted row, 2 per changed row, 0 per row merged unchanged.
    replica = sum((t["replica_rows"] or 0) for r in runs for t in r["tables"].values())
    changes = sum(v for k, v in writer.items() if k.endswith(" rows"))
    statements = sum(v for k, v in writer.items() if not k.endswith(" rows") and k != "seconds")

    def timing(kind: str) -> str:
        xs = [x for k, x in seconds if k == kind]
        if not xs:
            return f"{kind}: none"
        return (f"{len(xs)} {kind}: median {statistics.median(xs):.2f} s, max {max(xs):.2f} s, "
                f"total {sum(xs):.1f} s")

    return (f"soak: {len(seconds)} incremental runs back to back while the writer made {statements:,} statements "
            f"({changes:,} row changes) in {writer['seconds']} s\n"
            f"  rows moved to analytics {sum(moved):,} (per run median {statistics.median(moved):.0f}, "
            f"max {max(moved):,}; {full:,} of them by the full-refresh table); replica affected rows {replica:,}\n"
            f"  {timing('etl run (Prefect)')}\n  {timing('runs without Prefect')}")


def test_soak_incremental_runs_under_a_writer(etl_env, tmp_path, capsys, request) -> None:
    env = etl_env
    env.source_sql(SCHEMA)
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"]["batch_size"] = BATCH_SIZE
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))
    tables = cfg["tables"]
    assert {t: tables[t].get("mode", "full") for t in tables} == {
        "visit": "incremental", "patient": "incremental", "payment": "incremental", "codes": "checksum"}
    assert tables["patient"]["incremental_columns"] == ["SecDateTEdit", "DateTEdit"]

    if FLOW_EVERY > 0:
        request.getfixturevalue("prefect_harness")
    env.run_plain(run_id="soak-first")  # no state yet: a full load of every table
    assert_all_copies_equal(env)

    writer = SoakWriter(env.source_db, tmp_path)
    seconds: list[tuple[str, float]] = []
    try:
        for i in range(1, RUNS + 1):
            flow = FLOW_EVERY > 0 and i % FLOW_EVERY == 0
            t0 = time.monotonic()
            if flow:
                code = env.etl("run")
                assert code == 0, f"run {i} of {RUNS} (etl run) failed under the writer (exit {code})"
            else:
                env.run_plain(run_id=f"soak-{i}-{uuid.uuid4().hex[:8]}")
            seconds.append(("etl run (Prefect)" if flow else "runs without Prefect", time.monotonic() - t0))
            # Between runs nothing of the pipeline may stay connected (the writer's session excepted).
            left = _no_server_sessions(env, exclude=(writer.connection_id,))
            assert left == {"mysql": 0, "postgres": 0}, f"after run {i}: sessions left on the servers: {left}"
        done = writer.stop()
    finally:
        writer.kill()

    env.run_plain(run_id="soak-last")  # the writer is stopped: this run catches up with its last changes
    assert_all_copies_equal(env)

    runs = _run_rows(env)
    assert len(runs) == RUNS + 2
    soak_runs = runs[1:-1]
    for n, r in enumerate(runs):
        assert r["status"] == "ok", f"run {n}: {r}"
        leaked = {role: u["still_open"] for role, u in (r["usage"] or {}).items() if u["still_open"]}
        assert r["usage"] and not leaked, f"run {n} left connections open: {leaked or 'no counters'}"
    assert {t["mode"] for t in runs[0]["tables"].values()} == {"full"}
    # A run the probe (tasks/probe.py) finds nothing to do in skips the table: mode `unchanged`.
    modes = {t["mode"] for r in soak_runs for name, t in r["tables"].items() if name != "codes"}
    assert "incremental" in modes and modes <= {"incremental", "unchanged"}, modes
    # codes has a key and no change column: discover puts it in checksum mode (only differing key ranges move)
    modes = {t["mode"] for r in soak_runs for name, t in r["tables"].items() if name == "codes"}
    assert "checksum" in modes and modes <= {"checksum", "unchanged"}, modes
    assert env.etl("connections", "--strict", "--runs", str(RUNS + 2)) == 0
    assert _no_server_sessions(env) == {"mysql": 0, "postgres": 0}

    # The writer really did what the soak is about.
    assert done["visit tie"] > 0 and done["visit burst"] > 0 and done["visit delete rows"] > 0, done
    with capsys.disabled():
        print("\n" + _summary(seconds, soak_runs, done))
