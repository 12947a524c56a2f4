"""Run notifications (ETL_NOTIFY_WEBHOOK) reach a real HTTP receiver on 127.0.0.1: one message per
failed run naming each failed table with its reason and repair command, nothing for a successful run,
never a password; an undeliverable webhook is a warning and changes no run's result."""
from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from tasks import notify
from tests.conftest import MYSQL, mysql_connect

SOURCE = "".join(
    f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(20));"
    f"INSERT INTO {t} SELECT seq, CONCAT('{t}-', seq) FROM seq_1_to_{n};"
    for t, n in (("patient", 30), ("claim", 20))
)
CONFIG = """
priorities:
  - {name: critical, workers: 1}
defaults: {batch_size: 100}
tables:
  patient: {priority: critical, primary_key: [id]}
  claim: {priority: critical, primary_key: [id]}
  ghost: {priority: critical, primary_key: [id]}
"""


class Receiver:
    """An HTTP server on a free port of 127.0.0.1 that keeps every POST it receives (raw body, JSON)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
                received.append({"path": self.path, "body": body, "json": json.loads(body),
                                 "content_type": self.headers.get("Content-Type")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:  # noqa: ANN002 - keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/token-123"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_message_names_tables_reasons_repair_commands_and_hides_passwords() -> None:
    run = {"status": "failed", "tables_total": 3, "tables_ok": 1, "tables_failed": 2, "rows_replica": 10,
           "rows_analytics": 10, "tables": [
               {"table_name": "claim", "status": "failed",
                "error": "LoadError: cannot reach mysql://etl:hunter22@db/x\n  Traceback line 2\n" + "x" * 900},
               {"table_name": "patient", "status": "ok", "error": None}]}
    outcome = type("O", (), {"table": "late one", "status": "failed", "error": "never reached the metrics"})()
    p = notify.build_message("failed", run=run, run_id="r1", run_name="nightly-fox", url="http://ui/runs/flow-run/r1",
                             outcomes=[outcome], secrets=("hunter22",))
    assert [f["table"] for f in p["failed_tables"]] == ["claim", "late one"]
    claim = p["failed_tables"][0]
    assert "\n" not in claim["reason"] and len(claim["reason"]) <= notify.REASON_CHARS
    assert claim["reason"].startswith("LoadError: cannot reach mysql://etl:***@db/x Traceback line 2")
    assert claim["repair"] == "prefect deployment run etl-repair/repair --param 'tables=[\"claim\"]'"
    assert "hunter22" not in json.dumps(p)
    assert p["text"].splitlines()[:3] == ["ETL FAILED: etl-pipeline run nightly-fox", "http://ui/runs/flow-run/r1",
                                          "tables ok 1/3, failed 2, rows to analytics 10"]
    assert "  repair: prefect deployment run etl-repair/repair --param 'tables=[\"late one\"]'" in p["text"]


def test_undeliverable_webhook_is_one_warning_naming_the_host_not_the_token(caplog, monkeypatch) -> None:
    monkeypatch.setattr(notify, "RETRY_PAUSE_SECONDS", 0.05)
    url = closed_port_url().replace("/hook", "/hook/secret-token")
    with caplog.at_level(logging.WARNING, logger="etl.notify"):
        assert notify.post(url, {"event": "failed", "text": "x"}) is False
    [record] = [r for r in caplog.records if r.name == "etl.notify"]
    assert "not delivered to 127.0.0.1:" in record.getMessage() and "after 2 attempts" in record.getMessage()
    assert "secret-token" not in record.getMessage()


def test_failed_run_posts_one_message_success_posts_nothing_and_recovery_is_told(
        etl_env, prefect_harness, monkeypatch, receiver, capsys) -> None:
    """Through `etl run`: a success posts nothing; a run with a table missing from the source posts one
    message naming it, its reason and repair command, with no password although the URLs carry one;
    with ETL_NOTIFY_RECOVERED the next successful run says so."""
    user = f"etl_nt_{secrets.token_hex(3)}"
    password = "n0t1fy:p@ss/" + secrets.token_hex(3)
    admin = mysql_connect()
    with admin.cursor() as cur:
        for host in ("localhost", "127.0.0.1", "%"):
            cur.execute(f"CREATE USER '{user}'@'{host.replace('%', '%%')}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL ON `{etl_env.source_db}`.* TO '{user}'@'{host}'")
            cur.execute(f"GRANT ALL ON `{etl_env.replica_db}`.* TO '{user}'@'{host}'")
    try:
        etl_env.source_sql(SOURCE)
        etl_env.write_config(CONFIG)
        base = f"mysql+pymysql://{user}:{urllib.parse.quote(password, safe='')}@{MYSQL['host']}:{MYSQL['port']}"
        monkeypatch.setenv("ETL_SOURCE_URL", f"{base}/{etl_env.source_db}")
        monkeypatch.setenv("ETL_REPLICA_URL", f"{base}/{etl_env.replica_db}")
        monkeypatch.setenv("ETL_NOTIFY_WEBHOOK", receiver.url)

        assert etl_env.etl("run", "--tables", "patient,claim") == 0
        assert etl_env.etl("run") == 1
        [msg] = receiver.wait(1)
        time.sleep(0.5)  # a second message would have arrived by now
        assert len(receiver.received) == 1, receiver.received
        assert msg["path"] == "/hook/token-123" and msg["content_type"] == "application/json"
        p = msg["json"]
        assert p["event"] == "failed" and p["status"] == "failed" and p["flow"] == "etl-pipeline"
        assert (p["tables_total"], p["tables_ok"], p["tables_failed"]) == (3, 2, 1)
        [ghost] = p["failed_tables"]
        assert ghost["table"] == "ghost" and "ghost" in ghost["reason"] and "\n" not in ghost["reason"]
        assert ghost["repair"] == "prefect deployment run etl-repair/repair --param 'tables=[\"ghost\"]'"
        assert p["run_id"] and p["run_name"]
        assert "ghost" in p["text"] and ghost["repair"] in p["text"]
        for leaked in (password, urllib.parse.quote(password, safe="")):
            assert leaked not in msg["body"]

        monkeypatch.setenv("ETL_NOTIFY_RECOVERED", "true")
        assert etl_env.etl("run", "--tables", "patient") == 0
        received = receiver.wait(2)
        assert [m["json"]["event"] for m in received] == ["failed", "recovered"]
        assert received[1]["json"]["status"] == "ok" and received[1]["json"]["failed_tables"] == []

        # An undeliverable webhook: the failing run still fails the same way, with a warning only.
        monkeypatch.setenv("ETL_NOTIFY_WEBHOOK", closed_port_url())
        monkeypatch.setattr(notify, "RETRY_PAUSE_SECONDS", 0.05)
        capsys.readouterr()
        assert etl_env.etl("run") == 1
        out = capsys.readouterr()
        assert "1 of 3 tables failed: ghost" in out.err
        assert len(receiver.received) == 2
    finally:
        with admin.cursor() as cur:
            for host in ("localhost", "127.0.0.1", "%"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        admin.close()


def test_refused_and_early_failed_runs_are_told_and_the_early_failure_is_recorded(
        etl_env, prefect_harness, monkeypatch, receiver) -> None:
    """A run refused by the blackout window posts `refused` and writes nothing; a run that cannot log in
    to the replica (before any table starts) posts `failed` with the reason and leaves a pipeline row."""
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG)
    monkeypatch.setenv("ETL_NOTIFY_WEBHOOK", receiver.url)
    monkeypatch.setenv("ETL_BLACKOUT", "00:00-24:00")
    assert etl_env.etl("run") == 3
    [refused] = receiver.wait(1)
    assert refused["json"]["event"] == "refused" and "blackout" in refused["json"]["error"].lower()
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass('etl.pipeline_runs') IS NULL")
        assert cur.fetchone()[0], "a refused run touched the analytics database"
    monkeypatch.delenv("ETL_BLACKOUT")

    monkeypatch.setenv("ETL_REPLICA_URL", f"mysql+pymysql://nobody_{secrets.token_hex(2)}:wrongpw42@"
                                          f"{MYSQL['host']}:{MYSQL['port']}/{etl_env.replica_db}")
    assert etl_env.etl("run") == 1
    received = receiver.wait(2)
    failed = received[1]["json"]
    assert failed["event"] == "failed" and failed["failed_tables"] == []
    assert f"cannot reach the replica database at mysql {MYSQL['host']}:{MYSQL['port']}/{etl_env.replica_db}" \
        in failed["error"]
    assert "wrongpw42" not in received[1]["body"]
    with pg.cursor() as cur:
        cur.execute("SELECT run_id, status, error, tables_total, prefect_run_name FROM etl.pipeline_runs")
        [(run_id, status, error, total, name)] = cur.fetchall()
    pg.close()
    assert (run_id, status, total, name) == (failed["run_id"], "failed", 0, failed["run_name"])
    assert "cannot reach the replica database" in error and "wrongpw42" not in error


def test_ui_url_follows_the_api_url_or_the_ui_url() -> None:
    """The link `etl status`, the run report and the messages carry; none for the temporary local API."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4999/api"}):
        assert notify.ui_url("abc") == "http://127.0.0.1:4999/runs/flow-run/abc"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4999/api", PREFECT_UI_URL: "https://ui.example/p"}):
        assert notify.ui_url("abc") == "https://ui.example/p/runs/flow-run/abc"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert notify.ui_url("abc") is None
