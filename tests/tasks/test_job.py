"""tasks/job.py: a table's facts are gathered once per table per run, on the real servers.

The source's schema is read and the key chosen once per table per run, however many phases use
them. The replica's table is another table: the analytics phase reads its shape once (it is what
is loaded: drift applied in place, nullability held back), and an incremental replica phase reads
it once more (what drift compares the source against). Counted by wrapping the real functions.
"""
from __future__ import annotations

import sys
import threading
from collections import Counter

import pytest

from tests.test_end_to_end import assert_all_copies_equal
from tests.tasks.test_run import SCHEMA, _config


class _Calls:
    """Calls of the wrapped functions, by (function, database, table)."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()
        self._lock = threading.Lock()

    def wrap(self, fn, name: str):  # noqa: ANN001, ANN201
        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if name == "read_database_schemas":  # the run's one metadata read: a read of each table it returns
                result = fn(*args, **kwargs)
                with self._lock:
                    for t in result:
                        self.seen[("read_table_schema", args[1], t)] += 1
                return result
            if name == "read_table_schema":
                _, database, table = args[:3]
                what = (name, database, table)
            else:  # choose_key(schema, configured, uniques)
                what = (name, args[0].database, args[0].name)
            with self._lock:
                self.seen[what] += 1
            return fn(*args, **kwargs)
        return counted

    def by(self, name: str, database: str) -> dict[str, int]:
        return {t: n for (f, db, t), n in self.seen.items() if f == name and db == database}


@pytest.fixture
def calls(monkeypatch) -> _Calls:  # noqa: ANN001
    """Wrap read_table_schema and choose_key wherever a tasks module holds them, so a call through
    any import path is counted."""
    import flows.pipeline  # noqa: F401 - every module of a run imported first: one imported later would
    import tasks.mysql_schema as ms  # bind the wrapper itself and keep it after this test

    c = _Calls()
    for name in ("read_table_schema", "choose_key", "read_database_schemas"):
        real = getattr(ms, name)
        counted = c.wrap(real, name)
        for mod in [m for n, m in list(sys.modules.items()) if n.startswith("tasks") and m is not None]:
            if getattr(mod, name, None) is real:
                monkeypatch.setattr(mod, name, counted)
    return c


def test_schema_read_and_key_chosen_once_per_table_per_run(etl_env, calls) -> None:
    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    tables = {"patient", "codes", "audit"}
    src, rep = etl_env.source_db, etl_env.replica_db
    calls.seen.clear()  # discover read the schemas too; only the runs count

    assert etl_env.run() == 0
    assert calls.by("read_table_schema", src) == dict.fromkeys(tables, 1)
    assert calls.by("choose_key", src) == dict.fromkeys(tables, 1)
    assert calls.by("choose_key", rep) == {}
    # First run: no replica table yet, so only the analytics phase reads the replica's shape.
    assert calls.by("read_table_schema", rep) == dict.fromkeys(tables, 1)

    etl_env.source_sql("UPDATE patient SET Balance = Balance + 1 WHERE PatNum <= 5")
    calls.seen.clear()
    assert etl_env.run() == 0
    assert calls.by("read_table_schema", src) == dict.fromkeys(tables, 1)
    assert calls.by("choose_key", src) == dict.fromkeys(tables, 1)
    assert calls.by("choose_key", rep) == {}
    # patient is merged: its replica phase reads the replica's shape for drift; the others did not change,
    # so the probe (tasks/probe.py) skips them before any phase reads the replica.
    assert calls.by("read_table_schema", rep) == {"patient": 2}
    assert set(calls.seen) <= {(f, db, t) for f in ("read_table_schema", "choose_key") for db in (src, rep)
                               for t in tables}
    assert_all_copies_equal(etl_env)


def test_the_flows_share_the_run_s_jobs_across_their_task_runs(etl_env, prefect_harness, calls) -> None:
    # `etl run` (Prefect) builds a RunContext per task run; the phases of a table still share one job.
    etl_env.source_sql(SCHEMA)
    _config(etl_env)
    tables = {"patient", "codes", "audit"}
    calls.seen.clear()
    assert etl_env.etl("run") == 0
    assert calls.by("read_table_schema", etl_env.source_db) == dict.fromkeys(tables, 1)
    assert calls.by("choose_key", etl_env.source_db) == dict.fromkeys(tables, 1)
    assert calls.by("read_table_schema", etl_env.replica_db) == dict.fromkeys(tables, 1)
    assert_all_copies_equal(etl_env)
