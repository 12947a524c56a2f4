"""Smoke test of the benchmark harness (bench/run.py) at a tiny scale: it runs, prints its table,
and every data check passes.

Uses its own databases (bench_t<hex>_*; the harness only ever touches bench_* names) and its own
work directory, all removed afterwards. The e2e and tiny stages start Prefect, which alone takes
longer than this test may (30 s), and pgloader is optional on a machine: both are left out here.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MYSQL, PG, mysql_connect, pg_connect

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("mariadb", "mariadb-dump", "psql")


@pytest.fixture
def prefix():
    missing = [t for t in NEEDED if not shutil.which(t)]
    if missing:
        pytest.skip(f"command line tools missing: {', '.join(missing)}")
    p = f"bench_t{secrets.token_hex(4)}"
    try:
        yield p
    finally:
        conn = mysql_connect()
        with conn.cursor() as cur:
            for suffix in ("src", "repl", "dump", "same"):
                cur.execute(f"DROP DATABASE IF EXISTS `{p}_{suffix}`")
        conn.close()
        conn = pg_connect("postgres")
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{p}_dst" WITH (FORCE)')
        conn.close()


def test_harness_runs_and_its_data_checks_pass(prefix: str, tmp_path: Path) -> None:
    pw = f":{MYSQL['password']}" if MYSQL["password"] else ""
    mysql_url = f"mysql+pymysql://{MYSQL['user']}{pw}@{MYSQL['host']}:{MYSQL['port']}"
    pg_url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--scale", "0.001", "--prefix", prefix,
         "--work", str(tmp_path), "--stages", "replica,analytics,anchors", "--no-pgloader", "--tiny-tables", "0",
         "--mysql-url", mysql_url, "--pg-url", pg_url],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT),
        env={k: v for k, v in os.environ.items() if not k.startswith("ETL_")},
    )
    took = time.monotonic() - t0
    out = p.stdout
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{p.stderr[-3000:]}"
    assert "stage" in out and "peak RSS MB" in out and "data check" in out
    for stage in ("generate (gen_dental)", "analytics: ours load_full", "analytics: native pipe",
                  "replica: ours stream", "replica: ours server", "replica: mariadb-dump|mariadb",
                  "replica: INSERT..SELECT postidx"):
        line = next((ln for ln in out.splitlines() if ln.startswith(stage)), None)
        assert line is not None, f"no row for {stage!r}\n{out}"
        assert "FAIL" not in line, line
    assert "vs native" in out and "goal >=" in out

    res = json.loads((tmp_path / "results_scale0.001.json").read_text())
    items = res["items"]
    assert res["source_rows"] > 1500  # the fixed-size reference tables alone have 1,850 rows
    for name, it in items.items():
        assert it["ok"], f"{name}: {it['checks']} {it['notes']}"
        assert it["median"] > 0 and max(it["rss_mb"]) > 0
    for name in ("analytics: ours load_full", "analytics: native pipe", "replica: ours stream"):
        checks = items[name]["detail"]["check"]
        assert checks and all(c["ok"] for c in checks)
        assert {t["table"] for t in checks[0]["tables"]} >= {"procedurelog", "patient", "document"}
        assert all(t["src_rows"] == t["dst_rows"] for t in checks[0]["tables"])
    # our stages ran in child processes and reported per-table stats
    tables = items["analytics: ours load_full"]["detail"]["tables"]["tables"]
    assert sum(t["rows"] for t in tables) == res["source_rows"]
    print(f"smoke run took {took:.1f}s")  # speed is the benchmark's to measure, not a timed test's
