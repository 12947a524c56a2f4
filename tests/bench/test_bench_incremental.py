"""The incremental stage's own parts of the benchmark harness (bench/run.py), on real data.

The stage itself is two `etl run`s (full refresh, then incremental), and each costs 20-40 s of
Prefect start-up on the shared box, which is more than this module may take; `make bench` runs it.
What is tested here without Prefect, in seconds:

* the delete-detection child (`run.py --child deletes`, which times tasks/deletes.find_deleted_ranges
  per table and per side) finds exactly the tables whose source lost rows, reports the replica's row
  counts, and deletes nothing;
* the churn the harness reports is the churn `gen_dental.py --mutate` applied to the source.

Uses its own databases (bench_t<hex>_src / _repl) and its own work directory, dropped afterwards.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MYSQL, mysql_connect

ROOT = Path(__file__).resolve().parents[2]
# Load by path: a module named `run` must not shadow or be shadowed by anything on sys.path.
_spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
bench_run = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench_run
_spec.loader.exec_module(bench_run)

PW = f":{MYSQL['password']}" if MYSQL["password"] else ""
SERVER = f"mysql+pymysql://{MYSQL['user']}{PW}@{MYSQL['host']}:{MYSQL['port']}"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}


@pytest.fixture
def dbs():
    p = f"bench_t{secrets.token_hex(4)}"
    try:
        yield f"{p}_src", f"{p}_repl"
    finally:
        conn = mysql_connect()
        with conn.cursor() as cur:
            for suffix in ("src", "repl"):
                cur.execute(f"DROP DATABASE IF EXISTS `{p}_{suffix}`")
        conn.close()


def _run(*args: str, env: dict | None = None) -> str:
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                       env=env or ENV)
    assert p.returncode == 0, f"{args[:3]}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def _count(db: str, table: str, where: str = "1=1") -> int:
    conn = mysql_connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{table}` WHERE {where}")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_delete_detection_child_finds_the_tables_that_lost_rows(dbs: tuple[str, str], tmp_path: Path) -> None:
    src, repl = dbs
    _run(str(ROOT / "bench" / "gen_dental.py"), "--url", f"{SERVER}/{src}", "--scale", "0.001")
    tables = ["procedurelog", "appointment", "patient", "claim", "payment", "paysplit", "document",
              "procedurecode", "provider", "definition"]
    _run(str(ROOT / "bench" / "run.py"), "--child", "replica", "--method", "server", "--src", src, "--repl", repl,
         "--out", str(tmp_path / "replica.json"), "--mysql-url", SERVER, "--child-tables", ",".join(tables))
    config = tmp_path / "tables.yml"
    etl = Path(sys.executable).parent / "etl"
    subprocess.run([str(etl), "discover", "--output", str(config)], check=True, capture_output=True, cwd=str(ROOT),
                   env={**ENV, "ETL_SOURCE_URL": f"{SERVER}/{src}"}, timeout=60)
    # No foreign key points at procedurelog or appointment rows.
    conn = mysql_connect(src)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM procedurelog WHERE ProcNum IN (5, 700, 1999)")
        assert cur.rowcount == 3
        cur.execute("DELETE FROM appointment WHERE AptNum = 17")
        assert cur.rowcount == 1
    conn.close()
    repl_rows = {t: _count(repl, t) for t in tables}

    out = tmp_path / "deletes.json"
    _run(str(ROOT / "bench" / "run.py"), "--child", "deletes", "--src", src, "--repl", repl, "--config", str(config),
         "--out", str(out), "--mysql-url", SERVER)
    got = {t["table"]: t for t in json.loads(out.read_text())["tables"]}

    # every table discover made incremental (all but `definition`, which has no change column)
    assert set(got) == set(tables) - {"definition"}
    for name, t in got.items():
        assert t["rows"] == repl_rows[name], name  # the replica's rows, all of them, were compared
        assert t["ranges"] == 1 and t["page"] == 50_000, t  # 2,000 rows at most: one range of the default page
        assert t["differing"] == (1 if name in ("procedurelog", "appointment") else 0), t
        # one range: the replica's boundary query, then COUNT/BIT_XOR on the replica and on the source
        assert t["queries"] == 3, t
        assert t["source_s"] + t["replica_s"] <= t["seconds"] + 0.01, t
    # it only looks: the replica still has the rows the source lost
    assert {t: _count(repl, t) for t in tables} == repl_rows
    assert _count(repl, "procedurelog", "ProcNum IN (5, 700, 1999)") == 3


def test_reported_churn_is_what_mutate_applied(dbs: tuple[str, str], tmp_path: Path) -> None:
    src, _ = dbs
    url = f"{SERVER}/{src}"
    _run(str(ROOT / "bench" / "gen_dental.py"), "--url", url, "--scale", "0.001")
    before = _count(src, "procedurelog")
    max_id = before  # ProcNum runs 1..N after generation
    log = tmp_path / "mutate.log"
    log.write_text(_run(str(ROOT / "bench" / "gen_dental.py"), "--url", url, "--mutate", "--round", "3"))

    updated, inserted = bench_run._mutated(log)
    assert inserted == _count(src, "procedurelog") - before == before // 100
    # round 3 updates the rows with ProcNum % 100 == 40 (and sets ProcStatus = 2 on them)
    assert updated == _count(src, "procedurelog", f"ProcNum % 100 = 40 AND ProcNum <= {max_id}") == before // 100
    assert _count(src, "procedurelog", f"ProcNum % 100 = 40 AND ProcNum <= {max_id} AND ProcStatus <> 2") == 0
