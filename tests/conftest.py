"""Shared fixtures: uniquely named databases on the real servers, dropped afterwards.

Every test that moves data gets its own source and replica MySQL databases and its own PostgreSQL
database, named `etlt_<hex>_*`, and the ETL_* environment pointing at them. Nothing else on the
servers is touched.
"""
from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# No test reads a developer's env file (build/etl.env, written by `make demo`): ETL_* come from the fixtures.
os.environ["ETL_ENV_FILE"] = ""

import psycopg2
import pymysql
import pytest

# No telemetry from the test Prefect server (there is no network here).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.mysql_script import MULTI_STATEMENTS, execute_script  # noqa: E402 - after ROOT is on sys.path

MYSQL = dict(host=os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"), port=int(os.environ.get("TEST_MYSQL_PORT", "3306")),
             user=os.environ.get("TEST_MYSQL_USER", "root"), password=os.environ.get("TEST_MYSQL_PASSWORD", ""))
PG = dict(host=os.environ.get("TEST_PG_HOST", "127.0.0.1"), port=int(os.environ.get("TEST_PG_PORT", "5432")),
          user=os.environ.get("TEST_PG_USER", "postgres"))
SHARED = ROOT.parent / "shared"
FIXTURES = Path(__file__).parent / "fixtures"


def mysql_connect(db: str | None = None, **kw) -> pymysql.connections.Connection:
    # Loopback test servers offer no TLS; PyMySQL building an SSL context costs ~40 ms per connection.
    kw.setdefault("ssl_disabled", True)
    return pymysql.connect(**MYSQL, database=db, charset="utf8mb4", autocommit=True, **kw)


def pg_connect(db: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(**PG, dbname=db, options="-c timezone=UTC")
    conn.autocommit = True
    return conn


def wait_for(predicate, timeout: float = 60.0) -> bool:
    """Poll `predicate` every 0.1 s until it is true (True) or `timeout` seconds pass (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run_mysql_script(db: str, text: str) -> None:
    """Run a multi-statement SQL script (no DELIMITER blocks) in `db`."""
    execute_script(mysql_connect(db, client_flag=MULTI_STATEMENTS), text)


@dataclass
class EtlEnv:
    """One test's databases and the settings that point the pipeline at them."""

    prefix: str
    source_db: str
    replica_db: str
    pg_db: str
    pg_schema: str = "raw"
    config_path: Path = field(default=Path("tables.yml"))

    @property
    def source_url(self) -> str:
        return _mysql_url(self.source_db)

    @property
    def replica_url(self) -> str:
        return _mysql_url(self.replica_db)

    @property
    def analytics_url(self) -> str:
        return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.pg_db}"

    def mysql(self, db: str | None = None) -> pymysql.connections.Connection:
        return mysql_connect(db or self.source_db)

    def pg(self) -> psycopg2.extensions.connection:
        return pg_connect(self.pg_db)

    def source_sql(self, text: str) -> None:
        run_mysql_script(self.source_db, text)

    def write_config(self, text: str) -> Path:
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def etl(self, *args: str) -> int:
        """Run the `etl` CLI in-process against this environment; returns the exit status."""
        from flows.cli import main

        return main(list(args))

    def run_plain(self, *, tables: list[str] | None = None, full_refresh: bool = False, run_id: str | None = None,
                  check: bool = True):  # noqa: ANN201 - tasks.run.RunResult
        """One run of this environment's config through tasks/run.run_pipeline (no Prefect); returns the
        RunResult. With `check` (the default) a failed table fails the test, naming every failed table and why."""
        from config.models import load_pipeline_config
        from config.settings import Settings
        from tasks.run import run_pipeline

        settings = Settings()
        result = run_pipeline(settings, load_pipeline_config(settings.config), tables=tables,
                              full_refresh=full_refresh, run_id=run_id)
        if check and result.failed:
            raise AssertionError("; ".join(f"{o.table}: {o.error}" for o in result.outcomes if o.status != "ok"))
        return result

    def run(self, *args: str) -> int:
        """`etl run [--tables a,b] [--full-refresh] [--config PATH]` without Prefect: the same table work
        through tasks/run.run_pipeline (what the flows wrap). For tests that check data, not orchestration;
        exit status 0 when every table loaded, 1 otherwise (2 for bad config), like the CLI."""
        import argparse

        from config.models import load_pipeline_config
        from config.settings import Settings
        from tasks.errors import ConfigError, EtlError
        from tasks.run import run_pipeline

        p = argparse.ArgumentParser()
        p.add_argument("--tables")
        p.add_argument("--full-refresh", action="store_true")
        p.add_argument("--config")
        a = p.parse_args(list(args))
        settings = Settings()
        try:
            cfg = load_pipeline_config(a.config or settings.config)
            tables = [t for t in (a.tables or "").split(",") if t] or None
            result = run_pipeline(settings, cfg, tables=tables, full_refresh=a.full_refresh)
        except EtlError as e:
            print(f"etl run: {e}", file=sys.stderr)
            return 2 if isinstance(e, ConfigError) else 1
        for o in result.outcomes:
            if o.status != "ok":
                print(f"etl run: {o.table}: {o.error}", file=sys.stderr)
        return 1 if result.failed else 0


def _mysql_url(db: str) -> str:
    pw = f":{MYSQL['password']}" if MYSQL["password"] else ""
    return f"mysql+pymysql://{MYSQL['user']}{pw}@{MYSQL['host']}:{MYSQL['port']}/{db}"


def _drop_everything(env: EtlEnv) -> None:
    try:
        conn = mysql_connect()
        with conn.cursor() as cur:
            for db in (env.source_db, env.replica_db):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        conn.close()
    finally:
        conn = pg_connect("postgres")
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{env.pg_db}" WITH (FORCE)')
        conn.close()


class _Background:
    """Test databases created ahead and dropped behind on one background thread, so a test waits for
    neither.

    A PostgreSQL CREATE or DROP DATABASE syncs to disk and took 0.4-1 s each here (under load), for
    each of the suite's ~200 `etl_env`s. The names stay unique (`etlt_<hex>_*`, one set per test): the
    next test's set is created while this one runs, and a finished test's set is dropped while the
    next one runs. The session waits for all of it at its end (the spare set is dropped too), and a
    drop that failed fails that end."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etlt-databases")
        self.drops: list = []
        self.spare = None  # a Future of the next test's prefix

    def take(self) -> str:
        """The prefix of a set of databases that exist (source MySQL, analytics PostgreSQL) and no test used."""
        spare, self.spare = self.spare, None
        prefix = None
        if spare is not None:
            try:
                prefix = spare.result()
            except Exception:  # noqa: BLE001 - made again below, where its error reaches the test
                prefix = None
        if prefix is None:
            prefix = _create_databases(_new_prefix())
        self.spare = self.pool.submit(lambda: _create_databases(_new_prefix()))
        return prefix

    def drop(self, env: EtlEnv) -> None:
        self.drops.append((env.prefix, self.pool.submit(_drop_everything, env)))

    def wait(self) -> list[str]:
        if self.spare is not None:
            try:
                self.drop(_env(self.spare.result(), Path(".")))
            except Exception:  # noqa: BLE001 - nothing was left to drop
                pass
        self.pool.shutdown(wait=True)
        return [f"{prefix}: {f.exception()!r}" for prefix, f in self.drops if f.exception() is not None]


_BACKGROUND: _Background | None = None


@pytest.fixture(scope="session", autouse=True)
def _background_databases() -> Iterator[None]:
    global _BACKGROUND
    _BACKGROUND = _Background()
    try:
        yield
    finally:
        background, _BACKGROUND = _BACKGROUND, None
        failed = background.wait()
        assert not failed, "could not drop test databases: " + "; ".join(failed)


def drop_later(env: EtlEnv) -> None:
    """Drop `env`'s databases now, or on the background thread while the session runs."""
    if _BACKGROUND is None:
        _drop_everything(env)
    else:
        _BACKGROUND.drop(env)


class Alongside:
    """Work a test starts ahead, on a thread, while the tests of its own directory (`zone`) run; the test
    itself asserts `result()` at the end of that directory.

    Only subprocess-driven sequences that wait on servers belong here (tests/deploy's README sequence).
    Its writes to the shared MariaDB are open transactions in INNODB_TRX, which every other run's probe
    and watermark read server-wide, so it must not run beside the tests that assert what a probe skips
    or where a watermark stands: before any test outside `zone` starts, the session waits for it
    (`pytest_runtest_setup` below), and the session's end waits for it too (its own clean-up runs)."""

    def __init__(self, name: str, zone: Path, fn) -> None:  # noqa: ANN001 - a callable returning anything
        from concurrent.futures import ThreadPoolExecutor

        self.name, self.zone = name, zone
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"etlt-{name}")
        self._future = self._pool.submit(fn)
        self._pool.shutdown(wait=False)

    def covers(self, path: Path) -> bool:
        return self.zone == path or self.zone in path.parents

    def wait(self) -> None:
        try:
            self._future.result()
        except BaseException:  # noqa: BLE001 - reported by result(), to the test that owns it
            pass

    def result(self):  # noqa: ANN201 - whatever fn returned
        return self._future.result()


ALONGSIDE: dict[str, Alongside] = {}


def start_alongside(name: str, zone: Path, fn) -> Alongside:  # noqa: ANN001
    """Start `fn` on a thread once per session (see Alongside); the same job if it is already started."""
    if name not in ALONGSIDE:
        ALONGSIDE[name] = Alongside(name, zone, fn)
    return ALONGSIDE[name]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for job in ALONGSIDE.values():
        if not job.covers(Path(item.path)):
            job.wait()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for job in ALONGSIDE.values():
        job.wait()
    for ahead in AHEAD.values():
        ahead.stop_if_unclaimed()


class Ahead:
    """A session resource (a server to start) started on a thread as soon as collection ends, so its
    start overlaps the tests that run before the first one that needs it.

    The directory that owns the resource registers it in its conftest's `pytest_collection_finish`
    (only when a collected test uses its fixture); the fixture then `take`s what the thread made, or
    the thread's error. Nothing it starts may touch the shared MariaDB (see Alongside): a Prefect
    server on a PostgreSQL database of its own, a MariaDB server of its own. Whatever was started and
    never taken is stopped at the session's end."""

    def __init__(self, name: str, start, stop) -> None:  # noqa: ANN001 - callables
        from concurrent.futures import ThreadPoolExecutor

        self.name, self._stop, self.taken = name, stop, False
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"etlt-ahead-{name}")
        self._future = pool.submit(start)
        pool.shutdown(wait=False)

    def take(self):  # noqa: ANN201 - what `start` returned
        self.taken = True
        return self._future.result()

    def stop_if_unclaimed(self) -> None:
        if self.taken:
            return
        self.taken = True
        try:
            made = self._future.result()
        except BaseException:  # noqa: BLE001 - nothing was made, so nothing to stop
            return
        self._stop(made)


AHEAD: dict[str, Ahead] = {}


def start_ahead(session: pytest.Session, fixture: str, start, stop) -> None:  # noqa: ANN001
    """Start `start()` now on a thread if any collected test uses `fixture` (see Ahead)."""
    if fixture in AHEAD or not any(fixture in getattr(i, "fixturenames", ()) for i in session.items):
        return
    AHEAD[fixture] = Ahead(fixture, start, stop)


def take_ahead(fixture: str, start):  # noqa: ANN001, ANN201
    """What the thread started for `fixture`, or `start()` now when nothing was started ahead."""
    ahead = AHEAD.get(fixture)
    if ahead is None or ahead.taken:
        return start()
    return ahead.take()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the whole session (flows under test report to it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _new_prefix() -> str:
    return f"etlt_{secrets.token_hex(4)}"


def _env(prefix: str, tmp_path: Path) -> EtlEnv:
    return EtlEnv(prefix=prefix, source_db=f"{prefix}_src", replica_db=f"{prefix}_rep", pg_db=f"{prefix}_pg",
                  config_path=tmp_path / "tables.yml")


def _create_databases(prefix: str) -> str:
    """The source MySQL and the analytics PostgreSQL database of `prefix` (the replica is the pipeline's)."""
    env = _env(prefix, Path("."))
    try:
        conn = mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{env.source_db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        conn.close()
        conn = pg_connect("postgres")
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{env.pg_db}"')
        conn.close()
    except BaseException:
        _drop_everything(env)
        raise
    return prefix


def new_env(tmp_path: Path) -> EtlEnv:
    """A test's own databases (made ahead on the background thread while a session runs)."""
    prefix = _BACKGROUND.take() if _BACKGROUND is not None else _create_databases(_new_prefix())
    return _env(prefix, tmp_path)


def env_made_now(tmp_path: Path) -> EtlEnv:
    """A set of databases created on the calling thread, for work on a thread of its own (Alongside):
    new_env's ready-made sets are handed out by the session's thread. Drop it with `drop_now`."""
    return _env(_create_databases(_new_prefix()), tmp_path)


def drop_now(env: EtlEnv) -> None:
    _drop_everything(env)


def env_in_use(env: EtlEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[EtlEnv]:
    """Point the pipeline's ETL_* settings at `env` for one test, then clear injected faults and drop its
    databases (the body of `etl_env`, and of tests/binlog's `bl_env` whose source is on another server)."""
    monkeypatch.setenv("ETL_SOURCE_URL", env.source_url)
    monkeypatch.setenv("ETL_REPLICA_URL", env.replica_url)
    monkeypatch.setenv("ETL_ANALYTICS_URL", env.analytics_url)
    monkeypatch.setenv("ETL_ANALYTICS_SCHEMA", env.pg_schema)
    monkeypatch.setenv("ETL_CONFIG", str(env.config_path))
    try:
        yield env
    finally:
        from tasks import faults

        faults.clear()
        drop_later(env)


@pytest.fixture
def etl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EtlEnv]:
    yield from env_in_use(new_env(tmp_path), monkeypatch)


def load_sakila(db: str) -> None:
    """Load ../shared/corpus/sakila into `db` (its script names the database `sakila`)."""
    schema = (SHARED / "corpus" / "sakila" / "schema.sql").read_text(encoding="utf-8")
    data = (SHARED / "corpus" / "sakila" / "data.sql").read_text(encoding="utf-8")
    schema = re.sub(r"\bsakila\b", db, schema)
    data = re.sub(r"^USE sakila;", f"USE `{db}`;", data, flags=re.M)
    # The schema file uses DELIMITER blocks for triggers, which only the mariadb client understands.
    import subprocess

    for text in (schema, data):
        subprocess.run(["mariadb", "-h", MYSQL["host"], "-P", str(MYSQL["port"]), "-u", MYSQL["user"]],
                       input=text, text=True, check=True, capture_output=True)


@pytest.fixture(autouse=True)
def _prefect_console_on_this_tests_stderr() -> Iterator[None]:
    """Prefect's console log handler keeps the stream it was created with, and pytest gives every test
    its own (capsys/capfd) and closes the last one: a later test's Prefect log lines then fail with
    "I/O operation on closed file", printed as a `--- Logging error ---` traceback into that test's
    output. Point the handlers at this test's stderr (a pytest artefact; a terminal has one stream)."""
    import logging

    def handlers() -> list[logging.Handler]:
        loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger)]
        return [h for lg in loggers for h in lg.handlers if type(h).__name__ == "PrefectConsoleHandler"]

    for h in handlers():
        h.stream = sys.stderr  # not setStream: it flushes the old, closed stream
        h.console.file = sys.stderr
    yield
