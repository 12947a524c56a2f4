"""The faults of issue 6 not covered elsewhere, each against the real servers (README, Reliability).

- fault 3: the whole `etl run` process is SIGKILLed in the middle of a table (a real subprocess;
  tasks/faults.py kills it after the n-th committed chunk): readers keep yesterday's complete
  table, and the next run converges over whatever the dead run left behind;
- fault 5: a database unreachable at start: one line naming it, retried while the reason is
  transient, then the run fails having created and written nothing;
- fault 6: a MySQL lock wait timeout while merging into the replica: the task is retried;
- fault 7: PostgreSQL itself raises disk_full part-way through a table's load: that table fails
  cleanly, the others load, the error is in the metrics.
Every scenario ends with each table of replica and analytics compared with the source value by value.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import PG, ROOT, mysql_connect, wait_for
from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql, fetch_mysql_rows, fetch_pg_rows

# 2,000 rows in 100-row chunks: a kill after chunk 5 is well inside the table.
ROWS, BATCH, KILL_AFTER = 2000, 100, 5
VISITS = (
    "CREATE TABLE visits (id INT PRIMARY KEY, note VARCHAR(40) NOT NULL, updated_at DATETIME(6) NOT NULL);"
    f"INSERT INTO visits SELECT seq, CONCAT('visit\\t', seq), '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_{ROWS};"
)
FULL = f"defaults: {{batch_size: {BATCH}}}\ntables:\n  visits: {{primary_key: [id], mode: full}}\n"
INCREMENTAL = (f"defaults: {{batch_size: {BATCH}}}\ntables:\n"
               "  visits: {primary_key: [id], mode: incremental, incremental_columns: [updated_at]}\n")
# Today's changes: every row edited (so the incremental window spans the whole table), 200 new rows,
# and for the full refresh also deletions, which only a reload can see.
TODAY = ("UPDATE visits SET note = CONCAT(note, '-new'), updated_at = '2024-06-01' + INTERVAL id SECOND;"
         f"INSERT INTO visits SELECT {ROWS} + seq, CONCAT('late ', seq), '2024-06-02' + INTERVAL seq SECOND "
         "FROM seq_1_to_200;")
TODAY_FULL = TODAY + "DELETE FROM visits WHERE id % 97 = 0;"


def _keep_yesterday(env, table: str = "visits") -> None:
    """A copy of the source as the last good run loaded it, to compare readers' view with."""
    env.source_sql(f"CREATE TABLE {table}_yesterday LIKE {table}; INSERT INTO {table}_yesterday SELECT * FROM {table};")


def _assert_all_equal_source(env, tables=("visits",), *, analytics: bool = True) -> None:
    """Replica (and analytics) equal the source, value by value."""
    src, rep, pg = env.mysql(), env.mysql(env.replica_db), env.pg()
    try:
        for t in tables:
            assert_mysql_equal(src, env.source_db, rep, env.replica_db, t)
            if analytics:
                assert_pg_matches_mysql(src, env.source_db, pg, "raw", t)
    finally:
        src.close(), rep.close(), pg.close()


def _replica_tables(env) -> set[str]:
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (env.replica_db,))
        return {r[0] for r in cur.fetchall()}


def _pg_tables(env, schema: str = "raw") -> set[str]:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        out = {r[0] for r in cur.fetchall()}
    pg.close()
    return out


def _one(env, sql: str, params: tuple = ()) -> tuple | None:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    pg.close()
    return row


def _etl_killed(env, fault: str, *args: str) -> subprocess.CompletedProcess:
    """`etl run` as a real process, SIGKILLed by the injected fault; reports to the test's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    child = {**os.environ, "ETL_FAULT": fault, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", *args], cwd=ROOT, env=child,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, expected SIGKILL:\n{proc.stderr[-3000:]}"
    return proc


def _replica_watermark(env) -> object:
    with mysql_connect(env.replica_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT wm_datetime FROM _etl_state WHERE table_name = 'visits' AND column_name = 'updated_at'")
        return cur.fetchone()


def _analytics_watermark(env) -> tuple | None:
    return _one(env, "SELECT wm_timestamp FROM etl.table_state WHERE table_name = 'visits' AND column_name = 'updated_at'")


def _assert_rows_old_or_new(yesterday: list[tuple], today: list[tuple], seen: list[tuple], where: str) -> None:
    """An incremental merge cut short: every row is yesterday's or today's version, none lost or doubled."""
    old = {r[0]: r for r in yesterday}
    new = {r[0]: r for r in today}
    ids = [r[0] for r in seen]
    assert len(ids) == len(set(ids)), f"{where}: duplicate keys"
    bad = [r for r in seen if r != old.get(r[0]) and r != new.get(r[0])]
    assert not bad, f"{where}: rows that are neither yesterday's nor today's: {bad[:5]}"
    assert set(old) <= set(ids), f"{where}: rows lost: {sorted(set(old) - set(ids))[:10]}"
    merged = sum(1 for r in seen if r == new.get(r[0]) and r != old.get(r[0]))
    # The kill came after KILL_AFTER chunks of the window, before its end: part merged, part not.
    assert KILL_AFTER * BATCH <= merged < len(new), f"{where}: {merged} rows merged before the kill"


def _newest_task_run(name: str):
    """The latest task run of that name on the test's Prefect API (tests run one at a time)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)
        assert runs, f"no task run {name!r}"
        return runs[0]


def _prefect_database() -> Path:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    return Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split("///", 1)[1])


def _flush_prefect_logs() -> None:
    """Send the buffered run logs and events to the API now, as the harness does when it stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
            if hasattr(result, "__await__"):
                await result

    run_coro_as_sync(drain())


# --------------------------------------------------------------------------- fault 3: SIGKILL mid-table

@pytest.mark.parametrize("phase", ["replica", "analytics"])
def test_sigkill_mid_full_refresh_keeps_yesterdays_table_and_next_run_converges(
        etl_env, prefect_harness, monkeypatch, phase) -> None:
    monkeypatch.setenv("ETL_REPLICA_METHOD", "stream")  # the production path: separate servers
    etl_env.source_sql(VISITS)
    etl_env.write_config(FULL)
    assert etl_env.etl("run") == 0
    _keep_yesterday(etl_env)
    etl_env.source_sql(TODAY_FULL)

    _etl_killed(etl_env, f"{phase}:visits:{KILL_AFTER}:kill")

    # Right after the kill a reader sees yesterday's complete table in both copies (the replica
    # holds today's only if its own swap happened before the analytics phase was killed).
    src, rep, pg = etl_env.mysql(), etl_env.mysql(etl_env.replica_db), etl_env.pg()
    try:
        replica_view = "visits" if phase == "analytics" else "visits_yesterday"
        assert_mysql_equal(src, etl_env.source_db, rep, etl_env.replica_db, replica_view, dst_table="visits")
        assert_pg_matches_mysql(src, etl_env.source_db, pg, "raw", "visits_yesterday", pg_table="visits")
    finally:
        src.close(), rep.close(), pg.close()
    # What the dead run left: its shadow table with exactly the committed chunks, the checkpoint
    # that would let a retry resume, and its run rows still saying "running".
    if phase == "replica":
        assert "_etl_new_visits" in _replica_tables(etl_env)
        with mysql_connect(etl_env.replica_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM _etl_new_visits")
            assert cur.fetchone()[0] == KILL_AFTER * BATCH
            cur.execute("SELECT rows_done FROM _etl_checkpoints WHERE table_name = 'visits'")
            assert cur.fetchone()[0] == KILL_AFTER * BATCH
    else:
        assert "_etl_new_visits" in _pg_tables(etl_env)
        assert _one(etl_env, "SELECT count(*) FROM raw._etl_new_visits")[0] == KILL_AFTER * BATCH
        assert _one(etl_env, "SELECT sum(rows_done) FROM etl.load_checkpoints WHERE table_name = 'visits'")[0] \
            == KILL_AFTER * BATCH
    assert _one(etl_env, "SELECT count(*) FROM etl.pipeline_runs WHERE status = 'running'")[0] == 1

    # The next ordinary run is not held up by the dead run's table locks (they died with its
    # connections), starts the table afresh over the leftovers and converges.
    t0 = time.monotonic()
    assert etl_env.etl("run") == 0
    assert time.monotonic() - t0 < 120
    _assert_all_equal_source(etl_env)
    assert not {t for t in _replica_tables(etl_env) if t.startswith("_etl_new") or t.startswith("_etl_old")}
    assert not {t for t in _pg_tables(etl_env) if t.startswith("_etl")}
    assert _one(etl_env, "SELECT count(*) FROM etl.load_checkpoints WHERE table_name = 'visits'")[0] == 0
    with mysql_connect(etl_env.replica_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM _etl_checkpoints WHERE table_name = 'visits'")
        assert cur.fetchone()[0] == 0
    # The dead run's rows no longer say "running": the next run saw its process was gone.
    assert _one(etl_env, "SELECT count(*) FROM etl.pipeline_runs WHERE status = 'running'")[0] == 0
    assert _one(etl_env, "SELECT count(*) FROM etl.pipeline_runs WHERE status = 'abandoned'")[0] == 1
    assert _one(etl_env, "SELECT count(*) FROM etl.table_runs WHERE status = 'abandoned' "
                         "AND table_name = 'visits'")[0] == 1


@pytest.mark.parametrize("phase", ["replica", "analytics"])
def test_sigkill_mid_incremental_merge_keeps_the_watermark_and_next_run_converges(
        etl_env, prefect_harness, monkeypatch, phase) -> None:
    monkeypatch.setenv("ETL_REPLICA_METHOD", "stream")
    etl_env.source_sql(VISITS)
    etl_env.write_config(INCREMENTAL)
    assert etl_env.etl("run") == 0  # first run: a full load that sets the watermarks
    _keep_yesterday(etl_env)
    replica_wm, analytics_wm = _replica_watermark(etl_env), _analytics_watermark(etl_env)
    assert replica_wm and analytics_wm
    etl_env.source_sql(TODAY)

    _etl_killed(etl_env, f"{phase}:visits:{KILL_AFTER}:kill")

    src, rep, pg = etl_env.mysql(), etl_env.mysql(etl_env.replica_db), etl_env.pg()
    try:
        cols = ["id", "note", "updated_at"]
        yesterday = fetch_mysql_rows(src, "visits_yesterday", ["id"], columns=cols)
        today = fetch_mysql_rows(src, "visits", ["id"], columns=cols)
        replica = fetch_mysql_rows(rep, "visits", ["id"], columns=cols)
        analytics = fetch_pg_rows(pg, "raw", "visits", ["id"], columns=cols)
    finally:
        src.close(), rep.close(), pg.close()
    if phase == "replica":
        # Some chunks were merged, the watermark was not moved past them: it is saved only with
        # the last chunk, so the whole window is read again next time.
        _assert_rows_old_or_new(yesterday, today, replica, "replica")
        assert _replica_watermark(etl_env) == replica_wm
        assert analytics == yesterday
    else:
        assert replica == today
        assert _replica_watermark(etl_env) != replica_wm
        _assert_rows_old_or_new(yesterday, today, analytics, "analytics")
        assert _analytics_watermark(etl_env) == analytics_wm
    # The streamed merge's staging table is what the dead run leaves in the replica (the analytics
    # stage is a temporary table, gone with its session).
    assert ("_etl_stage_visits" in _replica_tables(etl_env)) == (phase == "replica")

    assert etl_env.etl("run") == 0
    _assert_all_equal_source(etl_env)
    assert not {t for t in _replica_tables(etl_env) if t.startswith(("_etl_new", "_etl_stage", "_etl_old"))}
    row = _one(etl_env, "SELECT mode, status FROM etl.table_runs WHERE table_name = 'visits' "
                        "ORDER BY started_at DESC LIMIT 1")
    assert row == ("incremental", "ok")


# --------------------------------------------------------------------------- fault 5: unreachable at start

@pytest.mark.parametrize("role", ["source", "analytics"])
def test_unreachable_database_at_start_fails_naming_it_and_touches_nothing(
        etl_env, prefect_harness, monkeypatch, capfd, role) -> None:
    """source: a closed port, a transient reason: retried, then the run fails. analytics: a database
    that does not exist, a fatal reason: no retry. Either way nothing is created or written, and the
    password in the URL appears nowhere: not in the output, the exception, the Prefect run's state,
    its logs, nor anywhere in the Prefect API's database."""
    import flows.pipeline as pipeline
    import flows.wiring as wiring

    monkeypatch.setattr(wiring, "CONNECT_RETRY_DELAYS", [0.2, 0.2, 0.2])
    password = f"Pw-{os.urandom(4).hex()}-s3cret"
    quoted = urllib.parse.quote(password, safe="")
    etl_env.source_sql(VISITS)
    etl_env.write_config(FULL)
    if role == "source":
        where = f"127.0.0.1:1/{etl_env.source_db}"
        monkeypatch.setenv("ETL_SOURCE_URL", f"mysql+pymysql://etl:{quoted}@{where}")
        attempts, reason = 4, "Can't connect to MySQL server"
    else:
        where = f"{PG['host']}:{PG['port']}/{etl_env.pg_db}_missing"
        monkeypatch.setenv("ETL_ANALYTICS_URL", f"postgresql+psycopg2://{PG['user']}:{quoted}@{where}")
        attempts, reason = 1, "does not exist"
    kind = "mysql" if role == "source" else "postgresql"

    # The flow itself, for its exception; then the CLI, for its output and exit status.
    state = pipeline.etl_pipeline(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as raised:
        state.result()
    message = str(raised.value)
    assert message.startswith(f"cannot reach the {role} database at {kind} {where}: "), message
    assert reason in message and "\n" not in message
    assert ("gave up after 4 attempts" in message) == (attempts == 4)
    # A missing analytics database says what to do (the replica database is created by the run).
    assert (f"create it (createdb -h {PG['host']} -p {PG['port']} {etl_env.pg_db}_missing)" in message) == (
        role == "analytics")
    chain = "".join(traceback.format_exception(raised.value, chain=True))
    cause = raised.value.__context__
    while cause is not None:  # the suppressed driver errors too, however they are printed
        chain += repr(cause) + str(cause)
        cause = cause.__context__
    check = _newest_task_run("check-connections")
    assert check.run_count == attempts and check.state.is_failed()

    assert etl_env.etl("run") == 1
    out = capfd.readouterr()
    assert f"etl run: cannot reach the {role} database at {kind} {where}: " in out.err

    # Everything the Prefect API stored (its SQLite file and journal), once the run's logs reached it.
    _flush_prefect_logs()
    stored = b""

    def api_has_the_failure() -> bool:
        nonlocal stored
        db = _prefect_database()
        stored = b"".join(f.read_bytes() for f in db.parent.glob(db.name + "*"))
        return f"cannot reach the {role} database".encode() in stored
    assert wait_for(api_has_the_failure, timeout=30)
    for text in (message, chain, out.out, out.err, state.message or "", check.state.message or ""):
        assert password not in text and quoted not in text
    assert password.encode() not in stored and quoted.encode() not in stored

    # Nothing was created: no replica database, no `raw` schema, no table. The one thing written is
    # the run's history when the analytics database is reachable (the source is the one down): a
    # pipeline row per run, failed, with the error and no password, so `etl status` shows it.
    with mysql_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (etl_env.replica_db,))
        assert cur.fetchone()[0] == 0
    assert _one(etl_env, "SELECT count(*) FROM pg_namespace WHERE nspname = 'raw'")[0] == 0
    assert _one(etl_env, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'etl')")[0] == 0
    if role == "source":
        runs = _one(etl_env, "SELECT count(*), min(status), max(status), bool_and(error LIKE %s), "
                             "bool_or(strpos(error, %s) > 0), (SELECT count(*) FROM etl.table_runs) "
                             "FROM etl.pipeline_runs", (f"%cannot reach the source database at {kind} {where}%",
                                                        password))
        assert runs == (2, "failed", "failed", True, False, 0)
    else:
        assert _one(etl_env, "SELECT count(*) FROM pg_namespace WHERE nspname = 'etl'")[0] == 0

    # Once the database is back, the same configuration runs.
    monkeypatch.setenv("ETL_SOURCE_URL", etl_env.source_url)
    monkeypatch.setenv("ETL_ANALYTICS_URL", etl_env.analytics_url)
    assert etl_env.etl("run") == 0
    _assert_all_equal_source(etl_env)


# --------------------------------------------------------------------------- fault 6: lock wait timeout

LEDGER = (
    "CREATE TABLE ledger (id INT PRIMARY KEY, amount DECIMAL(10,2) NOT NULL, updated_at DATETIME(6) NOT NULL);"
    "INSERT INTO ledger SELECT seq, seq / 4, '2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_1000;"
)
LEDGER_CONFIG = (f"defaults: {{batch_size: {BATCH}}}\ntables:\n"
                 "  ledger: {primary_key: [id], mode: incremental, incremental_columns: [updated_at]}\n")


def test_lock_wait_timeout_merging_into_the_replica_is_retried(etl_env, prefect_harness, monkeypatch) -> None:
    # The streamed merge (separate servers, as in production); the same-server INSERT .. SELECT
    # merge fails and is retried the same way (error 1205 on the replica connection either way).
    monkeypatch.setenv("ETL_REPLICA_METHOD", "stream")
    etl_env.source_sql(LEDGER)
    etl_env.write_config(LEDGER_CONFIG)
    assert etl_env.etl("run") == 0
    etl_env.source_sql("UPDATE ledger SET amount = amount + 1, updated_at = '2024-06-01' + INTERVAL id SECOND")
    # The ETL's replica sessions give up a lock wait after 1 s (the server default is 50 s); only
    # this run's sessions, through the URL, so no GLOBAL variable changes under concurrent tests.
    init = urllib.parse.quote("SET SESSION innodb_lock_wait_timeout = 1", safe="")
    monkeypatch.setenv("ETL_REPLICA_URL", f"{etl_env.replica_url}?init_command={init}")

    # A second session holds row 550 of the replica, which the merge must update (in its 6th chunk).
    holder = mysql_connect(etl_env.replica_db)
    holder.autocommit(False)
    with holder.cursor() as cur:
        cur.execute("SELECT amount FROM ledger WHERE id = 550 FOR UPDATE")
    released = threading.Event()

    def release_after_first_failure() -> None:
        try:
            def failed_once() -> bool:
                row = _one(etl_env, "SELECT count(*) FROM etl.errors WHERE table_name = 'ledger'")
                return bool(row and row[0])
            wait_for(failed_once, timeout=120)
        finally:
            holder.rollback()
            holder.close()
            released.set()

    t = threading.Thread(target=release_after_first_failure)
    t.start()
    started = time.time()
    try:
        assert etl_env.etl("run") == 0
    finally:
        t.join()
    assert released.is_set()
    waited = _one(etl_env, "SELECT extract(epoch FROM min(at)) FROM etl.errors WHERE table_name = 'ledger'")[0]
    assert float(waited) - started < 45, "the lock wait was not cut short by the session's init_command"

    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT phase, error_class, retriable, attempt, message FROM etl.errors WHERE table_name = 'ledger'")
        errors = cur.fetchall()
        cur.execute("SELECT mode, status FROM etl.table_runs WHERE table_name = 'ledger' ORDER BY started_at DESC LIMIT 1")
        assert cur.fetchone() == ("incremental", "ok")
    pg.close()
    assert [e[:4] for e in errors] == [("replica", "OperationalError", True, 1)]
    assert "Lock wait timeout exceeded" in errors[0][4]
    # Prefect ran the table's task twice: the failed attempt and the retry that merged everything
    # (ledger's last sync was incremental, so it runs in a batch: one sync task run, flows/wiring.sync_table).
    task_run = _newest_task_run("sync-ledger")
    assert task_run.run_count == 2 and task_run.state.is_completed()
    _assert_all_equal_source(etl_env, tables=("ledger",))


# --------------------------------------------------------------------------- fault 7: disk full on PostgreSQL

OTHERS = "".join(
    f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL);"
    f"INSERT INTO {t} SELECT seq, CONCAT('{t}-', seq) FROM seq_1_to_{n};"
    for t, n in (("claims", 300), ("notes", 150))
)
THREE_TABLES = (f"defaults: {{batch_size: {BATCH}}}\ntables:\n  visits: {{primary_key: [id], mode: full}}\n"
                "  claims: {primary_key: [id], estimated_rows: 300}\n  notes: {primary_key: [id], estimated_rows: 150}\n")
# PostgreSQL itself raises disk_full in the middle of the load: when the load creates visits' shadow
# table, an event trigger arms a row trigger on it that fails the 501st row (the 6th COPY chunk).
DISK_FILLS_UP = """
CREATE SEQUENCE public.test_disk_used;
CREATE FUNCTION public.test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('public.test_disk_used') > 500 THEN
    RAISE EXCEPTION 'could not extend file "base/16384/2619": No space left on device'
      USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION public.test_arm_disk_full() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    IF r.command_tag = 'CREATE TABLE' AND r.object_identity = 'raw._etl_new_visits' THEN
      EXECUTE 'CREATE TRIGGER test_disk_full BEFORE INSERT ON raw._etl_new_visits '
              'FOR EACH ROW EXECUTE FUNCTION public.test_disk_full()';
    END IF;
  END LOOP;
END $$;
CREATE EVENT TRIGGER test_arm_disk_full ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION public.test_arm_disk_full();
"""


def test_disk_full_on_postgresql_fails_that_table_cleanly_and_the_others_load(etl_env, prefect_harness, capsys) -> None:
    etl_env.source_sql(VISITS + OTHERS)
    etl_env.write_config(THREE_TABLES)
    assert etl_env.etl("run") == 0
    _keep_yesterday(etl_env)
    etl_env.source_sql(TODAY_FULL + "UPDATE claims SET v = CONCAT(v, '-new'); DELETE FROM notes WHERE id > 100;")
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute(DISK_FILLS_UP)

    assert etl_env.etl("run") == 1
    err = capsys.readouterr().err
    assert "1 of 3 tables failed: visits" in err and "No space left on device" in err

    src = etl_env.mysql()
    try:
        # The table that hit the full disk: yesterday's copy still live and whole in analytics.
        assert_pg_matches_mysql(src, etl_env.source_db, pg, "raw", "visits_yesterday", pg_table="visits")
    finally:
        src.close()
    # The half-written shadow table was dropped at once (a fatal error: no retry would resume it, and
    # its rows would only hold disk space), with its checkpoints.
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass('raw._etl_new_visits')")
        assert cur.fetchone()[0] is None
        cur.execute("SELECT count(*) FROM etl.load_checkpoints WHERE table_name = 'visits'")
        assert cur.fetchone()[0] == 0
    _assert_all_equal_source(etl_env, tables=("claims", "notes"))
    _assert_all_equal_source(etl_env, tables=("visits",), analytics=False)

    # In the metrics: one error, not retried (disk_full is fatal, see tasks/errors.py), the table
    # and the run failed with the reason.
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, phase, error_class, retriable, attempt, message FROM etl.errors")
        errors = cur.fetchall()
        cur.execute("SELECT table_name, status, error FROM etl.table_runs WHERE run_id = "
                    "(SELECT run_id FROM etl.pipeline_runs ORDER BY started_at DESC LIMIT 1) ORDER BY table_name")
        runs = cur.fetchall()
        cur.execute("SELECT status, tables_ok, failed_tables FROM etl.pipeline_runs ORDER BY started_at DESC LIMIT 1")
        assert cur.fetchone() == ("failed", 2, ["visits"])
    assert [e[:5] for e in errors] == [("visits", "analytics", "DiskFull", False, 1)]
    assert "No space left on device" in errors[0][5]
    assert [(r[0], r[1]) for r in runs] == [("claims", "ok"), ("notes", "ok"), ("visits", "failed")]
    assert "DiskFull" in runs[2][2] and "No space left on device" in runs[2][2]

    # Space freed: the next run replaces the leftover shadow and converges.
    with pg.cursor() as cur:
        cur.execute("DROP EVENT TRIGGER test_arm_disk_full")
    assert etl_env.etl("run") == 0
    _assert_all_equal_source(etl_env, tables=("visits", "claims", "notes"))
    assert not {t for t in _pg_tables(etl_env) if t.startswith("_etl")}
    pg.close()

