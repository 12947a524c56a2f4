"""One Prefect server + two process workers for the deployment tests, with prefect.yaml deployed to it.

The server runs on a free port, on a PostgreSQL database of its own (`etlt_<hex>_prefect`, dropped
afterwards), with its scheduler off (the nightly cron must not fire mid-test). As `make deploy` does,
the global concurrency limit `etl-source` is created and `prefect deploy --all` applies the
repository's prefect.yaml to a uniquely named `process` pool. Two workers poll that pool from the
repository root, each running one flow run at a time (`--limit 1`), so runs started together are
spread over both (test_scale_out.py relies on it). The workers get no ETL_*_URL: credentials come
from the blocks. Everything is stopped by PID (process group) whatever happens.
"""
from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from flows.dispatch import SOURCE_LIMIT
from tests.conftest import PG, Alongside, EtlEnv, pg_connect, start_ahead, start_alongside, take_ahead
from tests.deploy.prefect_server import ROOT, PrefectStack


def _pg_url(db: str) -> str:
    return f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{db}"


def _start_stack() -> PrefectStack:
    """The server on its own PostgreSQL database, prefect.yaml deployed, two workers polling; stopped
    (database dropped) by `_stop_stack`, and by itself when any step of this fails."""
    token = secrets.token_hex(4)
    db = f"etlt_{token}_prefect"
    run_dir = Path(tempfile.mkdtemp(prefix="etlt-prefect-stack-"))
    conn = pg_connect("postgres")
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    stack = None
    t0 = time.monotonic()
    try:
        stack = PrefectStack.start(run_dir, db_url=_pg_url(db), pool=f"etlt-{token}")
        stack.db = db
        stack.timings["server"] = time.monotonic() - t0
        stack.prefect("block", "register", "-m", "prefect_sqlalchemy")
        stack.prefect("work-pool", "create", stack.pool, "--type", "process")
        stack.prefect("global-concurrency-limit", "create", SOURCE_LIMIT, "--limit", "2")
        t1 = time.monotonic()
        stack.prefect("--no-prompt", "deploy", "--all", timeout=180, env={
            "ETL_WORK_POOL": stack.pool, "ETL_IMAGE": "unused-by-process-pools", "ETL_CODE_DIR": str(ROOT)})
        stack.timings["deploy"] = time.monotonic() - t1
        stack.config_path = run_dir / "tables.yml"
        stack.sources_path = run_dir / "sources.yml"  # the workers' ETL_SOURCES (test_scale_out.py's clinics)
        for _ in range(2):
            stack.start_worker(env={"ETL_CONFIG": str(stack.config_path), "ETL_SOURCES": str(stack.sources_path)},
                               limit=1, wait=False)
        stack.wait_for_workers()
        stack.timings["total"] = time.monotonic() - t0
        return stack
    except BaseException:
        _stop_stack(stack, db)
        raise


def _stop_stack(stack: PrefectStack | None, db: str | None = None) -> None:
    db = db or getattr(stack, "db", None)
    try:
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.run_dir, ignore_errors=True)
    finally:
        if db:
            conn = pg_connect("postgres")
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The stack (~25-55 s: a server, five `prefect` commands, two workers) starts while the tests before
    tests/deploy run (tests/conftest.Ahead). It writes only its own PostgreSQL database; the workers
    poll and run nothing until a test here starts a deployment."""
    start_ahead(session, "prefect_stack", _start_stack, _stop_stack)


@pytest.fixture(scope="package")
def prefect_stack() -> Iterator[PrefectStack]:
    stack = take_ahead("prefect_stack", _start_stack)
    try:
        yield stack
    finally:
        _stop_stack(stack)


@pytest.fixture
def deployed_env(etl_env: EtlEnv, prefect_stack: PrefectStack) -> EtlEnv:
    """etl_env behind the deployments: the three blocks point at its databases and
    `write_config` writes the worker's table config (ETL_CONFIG)."""
    prefect_stack.run([sys.executable, "-m", "flows.cli", "blocks", "register"], env={
        "ETL_SOURCE_URL": etl_env.source_url, "ETL_REPLICA_URL": etl_env.replica_url,
        "ETL_ANALYTICS_URL": etl_env.analytics_url})
    etl_env.config_path = prefect_stack.config_path
    return etl_env


# The README's operating sequence in a fresh copy (test_readme.py) is two temporary Prefect servers and
# a worker, mostly waited on: ~2 minutes that overlap the rest of this directory instead of adding to it.
# It starts with the first test here and is this directory's last test; no test outside tests/deploy runs
# beside it (tests/conftest.Alongside says why).
README_TEST = "tests/deploy/test_readme.py::test_readme_operating_sequence_from_a_fresh_copy"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The README test goes after the last test of tests/deploy, so everything between it and the first
    test here overlaps its sequence."""
    readme = [i for i in items if i.nodeid == README_TEST]
    if not readme:
        return
    items.remove(readme[0])
    here = [n for n, i in enumerate(items) if HERE in Path(i.path).parents]
    items.insert(here[-1] + 1 if here else len(items), readme[0])


def readme_sequence(session: pytest.Session) -> Alongside:
    from tests.deploy.test_readme import operating_sequence

    return start_alongside("readme", HERE, lambda: operating_sequence(Path(tempfile.mkdtemp(prefix="etlt-readme-"))))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if any(i.nodeid == README_TEST for i in item.session.items):
        readme_sequence(item.session)
