"""Operating the pipeline: the run report artifact, metrics retention, connection tracking and the
business-hours guard, each checked against the real servers and the Prefect API.

One pipeline run (module fixture `ops_run`) serves the report, retention and connection tests:
two critical tables that load side by side (2 workers), one missing table that fails, and run
history rows backdated before the run.
"""
from __future__ import annotations

import datetime as dt
import json
import threading
import time
from zoneinfo import ZoneInfo

import pytest

from tasks import faults
from tasks.schedule_guard import BlackoutRefused, check_blackout, decide, parse_blackout
from tests.conftest import _drop_everything, mysql_connect, new_env

TABLES = "".join(
    f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(20), d DATETIME);"
    f"INSERT INTO {t} SELECT seq, CONCAT('{t}-', seq), '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_{n};"
    for t, n in (("patient", 300), ("appointment", 500), ("document", 50))
)

WORKERS = 2
# What one table holds at once in its widest phase (full refresh, server replica path, one COPY stream):
# - replica copy: the GET_LOCK connection (tasks/locks.py) + the connection running INSERT ... SELECT;
#   the source connection only reads the schema, before the copy (SOURCE_PER_TABLE);
# - analytics load: the advisory-lock connection + the DDL/swap connection + the COPY stream's
#   connection (and 1 replica connection for the rows);
# metrics rows and verify take one connection at a time, between the phases.
REPLICA_PER_TABLE = 2
ANALYTICS_PER_TABLE = 3
SOURCE_PER_TABLE = 1
CONFIG = f"""
priorities:
  - {{name: critical, workers: {WORKERS}}}
  - {{name: normal, workers: 1}}
defaults: {{batch_size: 100}}
tables:
  patient: {{priority: critical, primary_key: [id]}}
  appointment: {{priority: critical, primary_key: [id]}}
  ghost: {{priority: normal, primary_key: [id]}}
  document: {{priority: normal, primary_key: [id]}}
"""


@pytest.fixture(scope="module")
def ops_run(tmp_path_factory: pytest.TempPathFactory, prefect_harness):  # noqa: ANN201
    """Backdated history, then one `etl run` whose two critical tables hold their connections at the same time."""
    env = new_env(tmp_path_factory.mktemp("ops"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (("ETL_SOURCE_URL", env.source_url), ("ETL_REPLICA_URL", env.replica_url),
                           ("ETL_ANALYTICS_URL", env.analytics_url), ("ETL_ANALYTICS_SCHEMA", env.pg_schema),
                           ("ETL_CONFIG", str(env.config_path))):
            mp.setenv(key, value)
        mp.delenv("ETL_BLACKOUT", raising=False)
        try:
            env.source_sql(TABLES)
            env.write_config(CONFIG)
            _backdated_history(env)
            # The critical tables meet after their first chunk of each phase, while they hold that phase's
            # connections (through the fault-injection hook the phases call after every chunk), so both
            # tables of the 2-worker group are inside the same phase at the same moment.
            mp.setattr(faults, "check", _rendezvous(faults.check, ("patient", "appointment")))
            code = env.etl("run")
            pg = env.pg()
            with pg.cursor() as cur:
                cur.execute("SELECT run_id FROM etl.pipeline_runs WHERE run_id NOT LIKE 'backdated-%%'")
                [(run_id,)] = cur.fetchall()
            pg.close()
            yield env, code, run_id
        finally:
            faults.clear()
            _drop_everything(env)


def _rendezvous(check, tables: tuple[str, ...]):  # noqa: ANN001, ANN202
    """faults.check that makes `tables` wait for each other after chunk 1 of each phase, and otherwise does
    what faults.check does. After meeting they leave a second apart, so they do not start their next
    phase in the same instant (tasks/state.py's CREATE TABLE IF NOT EXISTS races when they do)."""
    barriers = {phase: threading.Barrier(len(tables), timeout=60) for phase in ("replica", "analytics")}

    def hook(phase: str, table: str, chunks_done: int) -> None:
        if table in tables and chunks_done == 1 and phase in barriers:
            barriers[phase].wait()
            time.sleep(0.3 + tables.index(table))
        check(phase, table, chunks_done)

    return hook


def _backdated_history(env) -> None:  # noqa: ANN001
    """Run history as an earlier release left it: one run 100 days old, one 10 days old."""
    from tasks.connections import create_engine
    from tasks.metrics import MetricsWriter

    engine = create_engine("analytics", env.analytics_url, pool_size=1)
    try:
        MetricsWriter(engine, "setup").ensure_schema()
    finally:
        engine.dispose()
    pg = env.pg()
    with pg.cursor() as cur:
        for run_id, days in (("backdated-old", 100), ("backdated-recent", 10)):
            at = f"now() - interval '{days} days'"
            cur.execute(f"INSERT INTO etl.pipeline_runs (run_id, started_at, ended_at, status) "
                        f"VALUES (%s, {at}, {at}, 'ok')", (run_id,))
            cur.execute(f"INSERT INTO etl.table_runs (run_id, table_name, status, started_at, ended_at) "
                        f"VALUES (%s, 'patient', 'ok', {at}, {at})", (run_id,))
            cur.execute(f"INSERT INTO etl.errors (run_id, table_name, phase, error_class, message, retriable, "
                        f"attempt, at) VALUES (%s, 'patient', 'replica', 'X', 'old', false, 1, {at})", (run_id,))
    pg.close()


def test_run_report_artifact_names_every_table_failed_first(ops_run) -> None:
    env, code, run_id = ops_run
    assert code == 1  # ghost does not exist: the run fails, and still publishes its report

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["etl-run-report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    [artifact] = artifacts
    assert artifact.type == "markdown"
    md = artifact.data
    assert md.startswith("# ETL run FAILED: 3 of 4 tables ok, 1 failed")
    assert md.index("## Failed tables") < md.index("## Tables") < md.index("## Totals") < md.index("## Slowest")
    failed = md[md.index("## Failed tables"):md.index("## Tables")]
    assert "### ghost (group normal)" in failed and "does not exist" in failed and "etl-repair/repair" in failed
    body = md[md.index("## Tables"):md.index("## Totals")]
    rows = [line.split("|")[1].strip() for line in body.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["table", "ghost", "appointment", "document", "patient"]
    assert "| appointment | critical | ok | 500 |" in body
    assert "| 4 | 3 | 1 | 850 |" in md  # totals: tables, ok, failed, rows
    slowest = [line.split("**")[1] for line in md[md.index("## Slowest"):].splitlines() if line[:1].isdigit()]
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT table_name FROM etl.table_runs WHERE run_id = %s ORDER BY ended_at - started_at DESC",
                    (run_id,))
        assert slowest == [r[0] for r in cur.fetchall()]
    pg.close()


def test_retention_removes_old_history_and_keeps_recent(ops_run) -> None:
    env, _, run_id = ops_run
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT run_id FROM etl.pipeline_runs ORDER BY started_at")
        assert [r[0] for r in cur.fetchall()] == ["backdated-recent", run_id]
        cur.execute("SELECT DISTINCT run_id FROM etl.table_runs ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == sorted(["backdated-recent", run_id])
        cur.execute("SELECT run_id, message FROM etl.errors WHERE run_id LIKE 'backdated-%%'")
        assert cur.fetchall() == [("backdated-recent", "old")]
    pg.close()


def test_connections_none_left_open_and_peak_matches_the_workers(ops_run, capsys) -> None:
    env, _, run_id = ops_run
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT connection_usage FROM etl.pipeline_runs WHERE run_id = %s", (run_id,))
        usage = cur.fetchone()[0]
        cur.execute("SELECT DISTINCT split_part(worker, '@', 1) FROM etl.table_runs WHERE run_id = %s", (run_id,))
        assert [r[0] for r in cur.fetchall()] == ["local"]  # in-process tables: no Prefect worker name
    pg.close()
    # open_engines sizes the pools for the widest group: 3 x workers, as many again as overflow; the
    # source pool is the configured cap on connections to production (ETL_MAX_SOURCE_QUERIES, 4), no overflow.
    for role in ("source", "replica", "analytics"):
        u = usage[role]
        assert u["still_open"] == 0 and u["opened"] == u["closed"], usage
        expected = (4, 0, WORKERS) if role == "source" else (3 * WORKERS, 3 * WORKERS, WORKERS)
        assert (u["pool_size"], u["max_overflow"], u["workers"]) == expected, usage
    # Both critical tables met inside each phase (after its first chunk), so each database's peak is
    # exactly workers x what one table holds in its widest phase, as the code reads today:
    assert usage["replica"]["peak_checked_out"] == WORKERS * REPLICA_PER_TABLE, usage
    assert usage["analytics"]["peak_checked_out"] == WORKERS * ANALYTICS_PER_TABLE, usage
    assert 1 <= usage["source"]["peak_checked_out"] <= WORKERS * SOURCE_PER_TABLE, usage

    capsys.readouterr()
    assert env.etl("connections", "--runs", "5", "--json") == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [run_id, "backdated-recent"]
    assert runs[0]["connection_usage"] == usage
    # The advice follows the numbers: a peak above the pool size is reported as overflow use.
    expected = [f"{role}: overflow used: peak {u['peak_checked_out']} > pool_size {u['pool_size']}"
                for role, u in usage.items() if u["peak_checked_out"] > u["pool_size"]]
    advice = runs[0]["advice"]
    assert len(advice) == len(expected) and all(a.startswith(e) for a, e in zip(advice, expected)), advice
    assert env.etl("connections", "--runs", "1") == 0
    text = capsys.readouterr().out
    assert f"run {run_id}  FAILED" in text and f"workers {WORKERS}" in text
    if not expected:
        assert "ok: every pool within its size, no connection left open" in text
    for role in ("source", "replica", "analytics"):
        assert any(line.split()[:1] == [role] for line in text.splitlines()), text


# --- business-hours guard ---------------------------------------------------------------------------

NY = ZoneInfo("America/New_York")


def _at(text: str) -> dt.datetime:
    """A New York wall-clock time as an aware datetime (the fixed clock of these tests)."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=NY)


@pytest.mark.parametrize("spec,when,inside", [
    ("07:00-19:00", "2024-05-01 06:59", False),            # Wednesday
    ("07:00-19:00", "2024-05-01 07:00", True),
    ("07:00-19:00", "2024-05-01 18:59", True),
    ("07:00-19:00", "2024-05-01 19:00", False),
    ("07:00-19:00", "2024-05-04 12:00", True),             # Saturday: no days given = every day
    ("Mon-Fri 07:00-19:00", "2024-05-04 12:00", False),    # Saturday
    ("Mon-Fri 07:00-19:00", "2024-05-03 12:00", True),     # Friday
    ("Sat,Sun 00:00-24:00", "2024-05-05 23:59", True),     # Sunday, end of day
    ("Sat,Sun 00:00-24:00", "2024-05-06 00:00", False),    # Monday
    ("Fri-Mon 09:00-10:00", "2024-05-06 09:30", True),     # a day range across the weekend
    ("Fri-Mon 09:00-10:00", "2024-05-07 09:30", False),
    ("Mon-Fri 22:00-06:00", "2024-05-03 23:00", True),     # Friday night
    ("Mon-Fri 22:00-06:00", "2024-05-04 05:59", True),     # ... into Saturday morning
    ("Mon-Fri 22:00-06:00", "2024-05-05 05:59", False),    # Sunday morning: Saturday is not listed
    ("Mon-Fri 22:00-06:00", "2024-05-06 05:59", False),    # Monday morning: Sunday is not listed
    ("Mon-Fri 07:00-09:00; Mon-Fri 17:00-19:00", "2024-05-01 12:00", False),
    ("Mon-Fri 07:00-09:00; Mon-Fri 17:00-19:00", "2024-05-01 17:30", True),
])
def test_blackout_window_logic(spec: str, when: str, inside: bool) -> None:
    b = parse_blackout(spec, "America/New_York")
    assert (b.active_window(_at(when)) is not None) is inside


def test_blackout_window_is_in_the_local_time_zone_across_dst() -> None:
    b = parse_blackout("Mon-Fri 07:00-19:00", "America/New_York")
    # 11:30 UTC is 07:30 in New York in summer (EDT, UTC-4) and 06:30 in winter (EST, UTC-5).
    assert b.active_window(dt.datetime(2024, 7, 10, 11, 30, tzinfo=dt.timezone.utc)) is not None
    assert b.active_window(dt.datetime(2024, 1, 10, 11, 30, tzinfo=dt.timezone.utc)) is None


@pytest.mark.parametrize("spec,tz,message", [
    ("Mon-Fri", None, "'Mon' is not a time"),
    ("7-19", None, "start .7. is not a time"),
    ("07:00-25:00", None, "is not a time"),
    ("Mon-Fry 07:00-19:00", None, "'Fry' is not a day"),
    ("07:00-07:00", None, "is empty"),
    ("07:00-19:00", "Mars/Olympus", "not an IANA time zone"),
])
def test_blackout_spec_errors_name_the_problem(spec: str, tz: str | None, message: str) -> None:
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_blackout(spec, tz)


def test_who_is_refused_inside_the_window() -> None:
    b = parse_blackout("Mon-Fri 07:00-19:00", "America/New_York")
    now = _at("2024-05-01 10:15")
    scheduled = decide(b, now, scheduled=True, ignore_blackout=False)
    assert scheduled.refuse and "Wed 10:15 America/New_York" in scheduled.message
    assert "scheduled run does not start" in scheduled.message and "ends at 19:00" in scheduled.message
    # A scheduled run cannot override (a deployment default would otherwise switch the guard off).
    assert decide(b, now, scheduled=True, ignore_blackout=True).refuse
    manual = decide(b, now, scheduled=False, ignore_blackout=False)
    assert manual.refuse and "--ignore-blackout" in manual.message
    forced = decide(b, now, scheduled=False, ignore_blackout=True)
    assert not forced.refuse and "running anyway" in forced.message
    allowed = decide(b, now, scheduled=False, ignore_blackout=False, manual_policy="allow")
    assert not allowed.refuse and "ETL_BLACKOUT_MANUAL=allow" in allowed.message
    outside = decide(b, _at("2024-05-01 20:00"), scheduled=True, ignore_blackout=False)
    assert outside == type(outside)(False, None)
    # Unset: no guard at all.
    check_blackout(ignore_blackout=False, scheduled=True, environ={})


def test_a_scheduled_flow_run_is_recognised_and_refused(prefect_harness) -> None:
    """Inside a real flow run whose `auto_scheduled` flag is set, as the scheduler sets it."""
    from prefect import flow
    from prefect.context import FlowRunContext

    @flow
    def probe(auto: bool) -> str:
        FlowRunContext.get().flow_run.auto_scheduled = auto
        try:
            check_blackout(ignore_blackout=True, environ={"ETL_BLACKOUT": "00:00-24:00"})
        except BlackoutRefused as e:
            return str(e)
        return "started"

    assert "this scheduled run does not start" in probe(True)
    assert probe(False) == "started"  # manual, with ignore_blackout


def test_run_inside_the_blackout_refuses_before_touching_any_database(etl_env, prefect_harness, monkeypatch,
                                                                      capsys) -> None:
    etl_env.source_sql(TABLES)
    etl_env.write_config(CONFIG)
    now = dt.datetime.now(NY)
    window = f"{(now - dt.timedelta(hours=1)):%H:%M}-{(now + dt.timedelta(hours=1)):%H:%M}"
    monkeypatch.setenv("ETL_BLACKOUT", window)
    monkeypatch.setenv("ETL_BLACKOUT_TZ", "America/New_York")

    assert etl_env.etl("run") == 3
    err = capsys.readouterr().err
    assert f"inside the blackout window '{window}'" in err and "America/New_York" in err
    assert "the source is not read" in err and "--ignore-blackout" in err
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN ('etl', 'raw')")
        assert cur.fetchone()[0] == 0
    pg.close()
    conn = mysql_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (etl_env.replica_db,))
        assert cur.fetchone()[0] == 0  # the replica database was not even created
    conn.close()
