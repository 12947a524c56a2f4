"""What no flow code can report reaches the operator through the server's automations
(`etl notifications setup`, which `make deploy` runs with ETL_NOTIFY_WEBHOOK set): a run whose process is
killed mid-run (Crashed) and a run that no worker picks up (Late). A local HTTP receiver plays the webhook.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time

import pytest

from tests.deploy.prefect_server import flow_run_id_from
from tests.test_notify import Receiver

pytestmark = pytest.mark.slow

TABLES = ("CREATE TABLE patient (id INT PRIMARY KEY, v VARCHAR(30));"
          "INSERT INTO patient SELECT seq, CONCAT('patient-', seq) FROM seq_1_to_300;")
CONFIG = """
priorities:
  - {name: critical, workers: 1}
defaults: {batch_size: 100}
tables:
  patient: {priority: critical, primary_key: [id]}
"""


@pytest.fixture(scope="module")
def automations(prefect_stack):  # noqa: ANN201
    """The receiver, and the notification block + automations pointed at it (Late reported at once).

    Also creates the run that no worker takes (see test_run_no_worker_takes_is_reported_late) right
    away, so the server turns it Late while the other tests run instead of while one test waits."""
    receiver = Receiver()
    try:
        out = prefect_stack.run([sys.executable, "-m", "flows.cli", "notifications", "setup"], env={
            "ETL_NOTIFY_WEBHOOK": receiver.url, "ETL_NOTIFY_LATE_MINUTES": "0"})
        assert "etl-notify-crashed" in out.stdout and "etl-notify-late" in out.stdout, out.stdout + out.stderr
        receiver.late_run = _late_probe_run(prefect_stack)
        yield receiver
    finally:
        receiver.close()


def _late_probe_run(prefect_stack) -> dict:  # noqa: ANN001
    """A run of a deployment on a pool nobody polls, due a minute ago."""
    pool = f"{prefect_stack.pool}-nobody"
    prefect_stack.prefect("work-pool", "create", pool, "--type", "process")
    nightly = prefect_stack.deployment("etl-pipeline", "nightly")
    dep = prefect_stack.api("POST", "/deployments/", json={
        "name": "late-probe", "flow_id": nightly["flow_id"], "work_pool_name": pool,
        "entrypoint": nightly["entrypoint"], "path": nightly.get("path"), "parameters": {}})
    due = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).isoformat()
    return prefect_stack.api("POST", f"/deployments/{dep['id']}/create_flow_run", json={
        "name": "late-probe-run", "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due}}})


def _wait_for(receiver: Receiver, predicate, timeout: float) -> dict | None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in receiver.received:
            if predicate(m["json"]):
                return m["json"]
        time.sleep(0.5)
    return None


def test_setup_is_repeatable_and_saves_one_automation_per_state(prefect_stack, automations) -> None:
    again = prefect_stack.run([sys.executable, "-m", "flows.cli", "notifications", "setup"], env={
        "ETL_NOTIFY_WEBHOOK": automations.url, "ETL_NOTIFY_LATE_MINUTES": "0"})
    assert again.returncode == 0
    names = sorted(a["name"] for a in prefect_stack.api("POST", "/automations/filter", json={}))
    assert names == ["etl-notify-crashed", "etl-notify-failed", "etl-notify-late"]


def test_killed_run_is_crashed_and_failed_run_is_one_message(deployed_env, prefect_stack, automations) -> None:
    """Two repair runs at once, one on each worker (other tables, so no lock is shared):
    - patient, whose flow-run process kills itself (SIGKILL) after the first analytics chunk: no hook
      of ours runs, the run is Crashed and the server's automation says so;
    - ghost, which is not in the source: the run fails; its inner pipeline subflow fails too, but only
      runs of a deployment are reported: one message."""
    env = deployed_env
    env.source_sql(TABLES)
    env.write_config(CONFIG + "  ghost: {priority: critical, primary_key: [id]}\n")
    before = len(automations.received)
    out = prefect_stack.prefect(
        "deployment", "run", "etl-repair/repair", "--param", 'tables=["patient"]',
        "--job-variable", 'env={"ETL_FAULT": "analytics:patient:1:kill", "PREFECT_LOGGING_EXTRA_LOGGERS": "etl"}')
    killed_id = flow_run_id_from(out.stdout)
    out = prefect_stack.prefect("deployment", "run", "etl-repair/repair", "--param", 'tables=["ghost"]')
    failed_id = flow_run_id_from(out.stdout)

    run = prefect_stack.wait_for_flow_run(failed_id, timeout=120)
    assert run["state"]["type"] == "FAILED", prefect_stack.diagnose(failed_id)
    msg = _wait_for(automations, lambda p: run["name"] in p.get("text", "") and "failed" in p["subject"], timeout=60)
    assert msg is not None, automations.received
    failed_seen = time.monotonic()
    assert "ghost" in msg["text"]

    run = prefect_stack.wait_for_flow_run(killed_id, timeout=120)
    assert run["state"]["type"] == "CRASHED", prefect_stack.diagnose(killed_id)
    msg = _wait_for(automations, lambda p: run["name"] in p.get("text", "") and "crashed" in p["subject"].lower(),
                    timeout=60)
    assert msg is not None, json.dumps(automations.received, indent=1)
    assert f"/runs/flow-run/{killed_id}" in msg["text"] and "Crashed" in msg["text"]

    # The subflow's Failed event came with the parent's; a second message would be here 8 s after the first.
    time.sleep(max(0.0, 8 - (time.monotonic() - failed_seen)))
    failed = [m["json"] for m in automations.received[before:] if "failed" in m["json"]["subject"]]
    assert len(failed) == 1, failed


def test_run_no_worker_takes_is_reported_late(prefect_stack, automations) -> None:
    """The run of a deployment on a pool nobody polls, due a minute before the module started
    (`automations`): the server marks it Late, the automation posts."""
    fr = automations.late_run
    msg = _wait_for(automations, lambda p: "late-probe-run" in p.get("text", ""), timeout=90)
    assert msg is not None, (prefect_stack.flow_run(fr["id"])["state"], automations.received)
    assert "Late" in msg["text"] and "not started" in msg["subject"]
