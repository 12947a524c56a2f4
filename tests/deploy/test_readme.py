"""The README's "Operating it", run literally in a fresh copy of the checkout, after `make demo`.

    make demo; make server; make blocks; make deploy; make worker
    export PREFECT_API_URL=...; prefect deployment run 'etl-repair/repair' --param 'tables=["patient"]' --watch
    prefect deployment run 'etl-pipeline/nightly' --watch; etl status; etl plan; make stop

Nothing is exported by hand besides PREFECT_API_URL (as docs/operations.md says): the URLs and the
table config reach `etl`, the blocks and the worker through the env file `make demo` writes. For
isolation only, the environment points the demo at this test's databases (DEMO_*_URL, a tiny
DEMO_SCALE) and the server at a free port; the server's database is the one `make server` names for
the copy (dropped afterwards). Also: `make server` refuses a database it did not create.

The sequence is subprocesses waiting on Prefect servers (~2 min), so it runs on a thread from the first
test of tests/deploy on, beside the others there, and the test at the end of the directory asserts its
outcome (tests/deploy/conftest.py); no test outside tests/deploy runs beside it (tests/conftest.Alongside).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG, EtlEnv, drop_now, env_made_now, pg_connect
from tests.dbcompare import assert_pg_matches_mysql
from tests.deploy.prefect_server import ROOT, clean_environment, flow_run_id_from, free_port
from tests.deploy.conftest import readme_sequence

pytestmark = pytest.mark.slow


def _fresh_copy(dst: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) as a clone would have them; the .venv shared."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


def _sh(cmd: str, *, cwd: Path, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _drop_pg(db: str) -> None:
    conn = pg_connect("postgres")
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    conn.close()


def operating_sequence(tmp_path: Path) -> dict[str, float]:
    """The sequence, start to end, in `tmp_path`, on databases of its own; returns the cumulative time
    after each step. Runs on a thread while the rest of tests/deploy runs (see tests/deploy/conftest.py),
    so it touches nothing of the session: no fixture, no os.environ, its own databases made and dropped
    here; every failure is an AssertionError, re-raised by the test below."""
    etl_env = env_made_now(tmp_path)
    try:
        timings = _sequence(etl_env, tmp_path)
    finally:
        drop_now(etl_env)
    shutil.rmtree(tmp_path, ignore_errors=True)  # kept when the sequence failed
    return timings


def _sequence(etl_env: EtlEnv, tmp_path: Path) -> dict[str, float]:
    repo = _fresh_copy(tmp_path / "checkout")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    shell = {**clean_environment(), "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "250",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_PORT": str(port),
             "DEMO_SOURCE_URL": etl_env.source_url, "DEMO_REPLICA_URL": etl_env.replica_url,
             "DEMO_ANALYTICS_URL": etl_env.analytics_url, "DEMO_SCALE": "0.0005"}
    t0 = time.monotonic()
    timings = {}
    try:
        _ok(_sh("make demo", cwd=repo, env=shell, timeout=300), "make demo")
        timings["demo"] = time.monotonic() - t0
        env_file = (repo / "build" / "etl.env").read_text()
        assert f"ETL_CONFIG={repo}/build/demo/tables.yml" in env_file

        out = _ok(_sh("make server", cwd=repo, env=shell), "make server")
        assert "prefect server up" in out
        db = (repo / "build" / "prefect-server.db").read_text().strip().rsplit("/", 1)[1]
        assert db.startswith("prefect_etl_") and db != "prefect_server"
        conn = pg_connect("postgres")
        with conn.cursor() as cur:
            cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (db,))
            assert cur.fetchone() == (f"created by mysql-analytics-etl make server for {repo}",)
        conn.close()
        timings["server"] = time.monotonic() - t0
        _ok(_sh("make blocks", cwd=repo, env=shell), "make blocks")
        timings["blocks"] = time.monotonic() - t0
        _ok(_sh("make deploy", cwd=repo, env=shell, timeout=300), "make deploy")
        timings["deploy"] = time.monotonic() - t0
        out = _ok(_sh("make worker", cwd=repo, env=shell), "make worker")
        assert f"table config {repo}/build/demo/tables.yml" in out
        timings["stack"] = time.monotonic() - t0

        # From the same shell, as docs/operations.md "Running things" has it.
        ops = f"export PREFECT_API_URL={api}\n"
        repair = _sh(ops + "prefect deployment run 'etl-repair/repair' --param 'tables=[\"patient\"]' --watch",
                     cwd=repo, env={**shell, "PATH": f"{repo}/.venv/bin:{shell['PATH']}"})
        timings["repair"] = time.monotonic() - t0
        nightly = _sh(ops + "prefect deployment run 'etl-pipeline/nightly' --watch", cwd=repo,
                      env={**shell, "PATH": f"{repo}/.venv/bin:{shell['PATH']}"})
        timings["runs"] = time.monotonic() - t0
        runs = {}
        for name, proc in (("repair", repair), ("nightly", nightly)):
            run_id = flow_run_id_from(proc.stdout)
            runs[name] = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
            assert runs[name]["state"]["type"] == "COMPLETED", (
                f"{name}: {runs[name]['state']}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
                + (repo / "build" / "prefect-worker.log").read_text()[-5000:])
        assert runs["repair"]["name"] == "repair-patient"
        assert runs["nightly"]["name"].startswith("nightly-manual-")
        # The report on the repair run's own page.
        arts = httpx.post(f"{api}/artifacts/filter", timeout=30, json={
            "artifacts": {"flow_run_id": {"any_": [runs["repair"]["id"]]}}}).json()
        assert [a["key"] for a in arts] == ["etl-run-report"]
        assert "# ETL run OK: 1 of 1 tables ok" in arts[0]["data"]

        bin_path = {**shell, "PATH": f"{repo}/.venv/bin:{shell['PATH']}"}
        status = _ok(_sh(ops + "etl status", cwd=repo, env=bin_path), "etl status")
        assert "patient" in status
        timings["status"] = time.monotonic() - t0
        _ok(_sh(ops + "etl plan", cwd=repo, env=bin_path), "etl plan")
        timings["plan"] = time.monotonic() - t0
    finally:
        stop = _sh("make stop", cwd=repo, env=shell, timeout=120)
        marker = repo / "build" / "prefect-server.db"
        if marker.exists():
            _drop_pg(marker.read_text().strip().rsplit("/", 1)[1])
    timings["stop"] = time.monotonic() - t0
    _ok(stop, "make stop")
    src, pg = etl_env.mysql(), etl_env.pg()
    try:
        assert_pg_matches_mysql(src, etl_env.source_db, pg, "raw", "patient")
    finally:
        src.close(), pg.close()
    timings["all"] = time.monotonic() - t0
    return timings


def test_readme_operating_sequence_from_a_fresh_copy(request: pytest.FixtureRequest) -> None:
    """The sequence ran on a thread from the first test of tests/deploy on (this test is the package's
    last; tests/deploy/conftest.py): here its outcome, failures with the sequence's own message."""
    timings = readme_sequence(request.session).result()
    print("README sequence (beside the other tests/deploy tests), cumulative s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


def test_make_server_refuses_a_database_it_did_not_create(tmp_path) -> None:
    db = f"etlt_{os.urandom(4).hex()}_foreign"
    conn = pg_connect("postgres")
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    port = free_port()
    try:
        url = f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
        proc = _sh(f"make server PREFECT_SERVER_DB_URL='{url}' PREFECT_PORT={port} PREFECT_RUN_DIR='{tmp_path}'",
                   cwd=ROOT, env=clean_environment(), timeout=120)
    finally:
        _drop_pg(db)
    assert proc.returncode != 0
    # One line from us (make adds its own "make: *** [...] Error 1"; `make setup` may add pip's warnings
    # when it installs first).
    [line] = [x for x in proc.stderr.strip().splitlines() if x.startswith("make server")]
    assert line.startswith(f"make server: refused: database '{db}' on ") and "was not created by `make server`" in line
    assert not (tmp_path / "prefect-server.pid").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
