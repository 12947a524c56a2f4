"""The `etl` command as an operator meets it: an expected failure is one line (no traceback), exit
codes a script can rely on, `etl status` as a monitor, and help that names every option."""
from __future__ import annotations

import argparse
import socket

import pytest

from flows.cli import build_parser, main
from tasks.metrics import MetricsWriter
from tests.conftest import MYSQL, PG

SOURCE = "CREATE TABLE patient (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO patient VALUES (1, 'a'), (2, 'b');"
CONFIG = """
priorities:
  - {name: critical, workers: 1}
tables:
  patient: {priority: critical, primary_key: [id]}
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(capsys: pytest.CaptureFixture, prefix: str) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in out.out + out.err
    return lines[0]


def test_wrong_password_is_one_line_naming_the_database(etl_env, monkeypatch, capsys) -> None:
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG)
    monkeypatch.setenv("ETL_SOURCE_URL", f"mysql+pymysql://{MYSQL['user']}:n0tTh3pw@{MYSQL['host']}:{MYSQL['port']}/"
                                         f"{etl_env.source_db}")
    for command in ("discover", "plan", "verify"):
        assert main([command]) == 1
        line = _one_line_error(capsys, f"etl {command}: cannot reach the source database at mysql "
                                       f"{MYSQL['host']}:{MYSQL['port']}/{etl_env.source_db}: ")
        assert "Access denied" in line and "n0tTh3pw" not in line


def test_unreachable_analytics_is_one_line_for_status_and_connections(etl_env, monkeypatch, capsys) -> None:
    port = _closed_port()
    monkeypatch.setenv("ETL_ANALYTICS_URL", f"postgresql+psycopg2://{PG['user']}@127.0.0.1:{port}/{etl_env.pg_db}")
    for command in ("status", "connections"):
        assert main([command]) == 1
        _one_line_error(capsys, f"etl {command}: cannot reach the analytics database at postgresql 127.0.0.1:{port}/")


def test_bad_config_is_one_line_exit_2(etl_env, capsys) -> None:
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG.replace("primary_key: [id]", "primary_kye: [id]"))
    for command in ("plan", "run"):
        assert main([command]) == 2
        line = _one_line_error(capsys, f"etl {command}: ")
        assert "primary_kye" in line


def test_plan_exits_1_when_a_table_would_fail(etl_env, capsys) -> None:
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG + "  ghost: {priority: critical, primary_key: [id]}\n")
    assert main(["plan"]) == 1
    out = capsys.readouterr()
    assert "ghost" in out.out
    assert out.err.strip().splitlines() == [
        "etl plan: 1 table(s) would fail: ghost (see their `problems:` lines above)"]
    assert main(["plan", "--tables", "patient"]) == 0


def test_plan_names_the_checksum_log_not_its_state_column(etl_env, capsys) -> None:
    """After a checksum-mode run the plan's watermark column says `checksum log at N` (N the sequence
    the replica's state holds), not the internal `_checksum_seq=N`."""
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG.replace("primary_key: [id]}", "primary_key: [id], mode: checksum}"))
    assert etl_env.run() == 0
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT wm_int FROM _etl_state WHERE table_name = 'patient' AND column_name = '_checksum_seq'")
        (seq,) = cur.fetchone()
    rep.close()
    capsys.readouterr()
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert f"checksum log at {seq}" in next(x for x in out.splitlines() if " patient " in x)
    assert "_checksum_seq" not in out


def test_plan_rows_fit_a_terminal_and_keep_every_text_whole(etl_env, capsys) -> None:
    """The why and protection texts (hundreds of characters) go on indented lines under their table's
    row, whole, as `build_plan` made them; the table rows themselves stay narrow."""
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks.planning import build_plan

    etl_env.source_sql(SOURCE + "CREATE TABLE proc (id INT PRIMARY KEY, changed DATETIME NOT NULL, v INT);"
                       "INSERT INTO proc VALUES (1, '2024-01-01 10:00:00', 1);")
    etl_env.write_config(CONFIG + "  proc: {priority: critical, primary_key: [id], mode: incremental, "
                                  "incremental_columns: [changed]}\n  ghost: {priority: critical, primary_key: [id]}\n")
    # patient: first run (why), proc: incremental (why and protection), ghost: missing (problems)
    assert etl_env.run("--tables", "proc") == 0
    capsys.readouterr()
    assert main(["plan"]) == 1
    lines = capsys.readouterr().out.splitlines()
    plan = build_plan(Settings(), load_pipeline_config(str(etl_env.config_path)), tables=None, full_refresh=False)
    by_table = {p.table: p for p in plan.tables}
    assert by_table["proc"].protection != "-" and len(by_table["proc"].reason) > 60
    for name, p in by_table.items():
        i = next(i for i, x in enumerate(lines) if f" {name} " in x and not x.startswith(" "))
        assert len(lines[i]) <= 120, lines[i]
        texts = [f"problems: {'; '.join(p.problems)}"] if p.problems else [f"why: {p.reason}"]
        texts += [f"protection: {p.protection}"] if p.protection != "-" else []
        assert lines[i + 1:i + 1 + len(texts)] == [f"    {t}" for t in texts]


def test_run_with_a_wrong_password_ends_in_one_line_without_traceback(etl_env, prefect_harness, monkeypatch,
                                                                      capfd) -> None:
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG)
    monkeypatch.setenv("ETL_REPLICA_URL", f"mysql+pymysql://{MYSQL['user']}:n0tTh3pw@{MYSQL['host']}:"
                                          f"{MYSQL['port']}/{etl_env.replica_db}")
    assert main(["run"]) == 1
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "n0tTh3pw" not in text
    assert " DEBUG " not in text  # Prefect's failure records are demoted to DEBUG: not on the console
    last = out.err.strip().splitlines()[-1]
    assert last.startswith(f"etl run: cannot reach the replica database at mysql {MYSQL['host']}:{MYSQL['port']}/"), last
    # The run failed before any table started, and `etl status` shows it (not the run before it).
    assert main(["status"]) == 1
    status = capfd.readouterr()
    assert "FAILED" in status.out and "error: LoadError: cannot reach the replica database" in status.out
    assert "(no table started)" in status.out and "prefect run " in status.out


def test_run_refuses_a_replica_that_is_the_source_before_anything_is_written(etl_env, prefect_harness,
                                                                            monkeypatch, capfd) -> None:
    """The flow runs the same check as the plain runner (tests/tasks/test_guard.py), before open_engines."""
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG)
    monkeypatch.setenv("ETL_REPLICA_URL", etl_env.source_url.replace(f"@{MYSQL['host']}:", "@localhost:"))
    assert main(["run"]) == 2  # refused settings, as `etl plan` and the plain runner exit
    out = capfd.readouterr()
    last = out.err.strip().splitlines()[-1]
    assert last.startswith("etl run: ETL_REPLICA_URL names the source database itself"), last
    assert "Traceback" not in out.out + out.err
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (etl_env.source_db,))
        assert [r[0] for r in cur.fetchall()] == ["patient"]
    conn.close()


def _record_run(env, run_id: str, *, status: str, error: str | None = None,  # noqa: ANN001
                notes: str | None = None) -> None:
    from tasks.connections import create_engine

    engine = create_engine("analytics", env.analytics_url, pool_size=1)
    try:
        w = MetricsWriter(engine, run_id)
        w.ensure_schema()
        w.pipeline_started(tables_total=1, full_refresh=False, replica_method="server",
                           prefect_run_name=f"name-{run_id}", prefect_run_url=f"http://ui/runs/flow-run/{run_id}")
        w.table_started("patient", priority="critical", mode="full")
        w.table_finished("patient", {"status": "failed" if error else "ok", "error": error, "notes": notes})
        if status != "running":
            w.pipeline_finished(status=status, tables_ok=0 if error else 1, failed=["patient"] if error else [],
                                rows_replica=0, rows_analytics=0, connection_usage=None)
    finally:
        engine.dispose()


def test_status_is_a_monitor(etl_env, capsys) -> None:
    assert main(["status"]) == 0 and main(["status", "--strict"]) == 1  # nothing recorded yet
    capsys.readouterr()
    long_error = "SchemaError: " + " ".join(f"column c{i} changed type" for i in range(40)) + " END"
    _record_run(etl_env, "r1", status="failed", error=long_error)
    assert main(["status"]) == 1
    out = capsys.readouterr()
    assert "prefect run name-r1  http://ui/runs/flow-run/r1" in out.out
    assert long_error not in out.out and long_error[:100] in out.out
    assert out.err.strip() == "etl status: the latest run name-r1 is failed"
    assert main(["status", "--table", "patient"]) == 1
    assert f"patient: {long_error}" in capsys.readouterr().out  # whole, on a line of its own

    _record_run(etl_env, "r2", status="ok")
    assert main(["status"]) == 0 and main(["status", "--strict"]) == 0
    _record_run(etl_env, "r3", status="running")
    assert main(["status"]) == 0
    assert main(["status", "--strict"]) == 1


def test_status_notes_are_whole_for_one_table(etl_env, capsys) -> None:
    notes = "; ".join(f"note {i}: small table refreshed in place in one transaction" for i in range(4)) + " END"
    _record_run(etl_env, "r1", status="ok", notes=notes)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert notes not in out and (notes[:95] + "…") in out  # cut in the runs view, and saying so
    assert main(["status", "--table", "patient"]) == 0
    out = capsys.readouterr().out
    assert f"patient: {notes}" in out and "(below)" in out  # whole, on a line of its own
    assert main(["status", "--table", "claim"]) == 0
    assert "(table claim is not in this run)" in capsys.readouterr().out  # not "(no table started)"


def test_status_asks_no_binlog_lag_without_binlog_tables(etl_env, capsys) -> None:
    """Before the first run the replica database does not exist: no `binlog lag` line, with or without
    binlog tables in the config (nothing synced yet; it was `binlog lag: unknown (OperationalError)`)."""
    _record_run(etl_env, "r1", status="ok")
    etl_env.write_config(CONFIG)
    assert main(["status"]) == 0
    assert "binlog lag" not in capsys.readouterr().out
    etl_env.write_config(CONFIG.replace("primary_key: [id]}", "primary_key: [id], mode: binlog}"))
    assert main(["status"]) == 0
    assert "binlog lag" not in capsys.readouterr().out


def test_status_into_a_closed_pipe_exits_quietly(etl_env) -> None:
    """`etl status --json | head`: the reader is gone before etl writes; no message, no traceback."""
    import os
    import subprocess
    import sys

    _record_run(etl_env, "r1", status="ok")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone, as `head` has once it read its lines
    env = {**os.environ, "ETL_ENV_FILE": "", "ETL_ANALYTICS_URL": etl_env.analytics_url}
    try:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 141, (done.returncode, done.stderr)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_names_the_environment_and_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for var in ("ETL_SOURCE_URL", "ETL_REPLICA_URL", "ETL_ANALYTICS_URL", "ETL_CONFIG", "ETL_NOTIFY_WEBHOOK",
                "ETL_BLACKOUT", "PREFECT_API_URL"):
        assert var in text
    assert "examples:" in text
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        assert sub.epilog and sub.epilog.startswith("example:\n  ") and "etl" in sub.epilog, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
    for action in parser._actions:
        assert action.help or isinstance(action, argparse._SubParsersAction), action.dest
    assert "--analytics-block" in _subparsers(parser)["status"].format_help()
