"""The Prefect UI, in headless Chromium, one browser for both runs a person starts or reads there.

1. A custom run of the repair deployment from its parameter form: opens the server's UI at its root
   (which lands on the default UI), goes Deployments -> repair -> Run -> Custom run, adds a table to
   the `tables` list in the form, submits, follows "View run" to the flow run page, and once the run
   has ended checks that its page says Completed; the page is saved to docs/ui-run.png. Then checks
   the data landed, and only that table.
2. A failed nightly run: its page says Failed, its Logs tab has the failed table's line, its
   Artifacts tab the run report (docs/failed-run.png).

One test, not two: the same databases, blocks and browser serve both (each costs a worker's flow run,
which is what takes the time).

Needs Playwright for Python (`pip install playwright`; no `playwright install`: the browser is the
Debian `chromium` package at /usr/bin/chromium, or ETL_TEST_CHROMIUM). Skipped when either is missing.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import time
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import wait_for
from tests.dbcompare import assert_pg_matches_mysql
from tests.deploy.prefect_server import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("ETL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The committed screenshot in docs/ is refreshed only on request, so `make test` leaves the tree clean.
SCREENSHOT = ROOT / ("docs" if os.environ.get("ETL_UPDATE_SCREENSHOT") else "build") / "ui-run.png"
FAILED_SCREENSHOT = SCREENSHOT.with_name("failed-run.png")

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("Playwright for Python is not installed (`.venv/bin/pip install playwright`; "
                "no `playwright install`, the test uses the Debian chromium package)", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):  # pragma: no cover - depends on the machine
    pytest.skip(f"no Chromium at {CHROMIUM} (`apt-get install -y chromium`, or set ETL_TEST_CHROMIUM)",
                allow_module_level=True)

TABLE = """
CREATE TABLE appointment (id INT PRIMARY KEY, patient_id INT NOT NULL, starts_at DATETIME, note TEXT);
INSERT INTO appointment SELECT seq, seq % 37, '2024-03-01 08:00' + INTERVAL seq * 15 MINUTE,
       IF(seq % 5 = 0, NULL, CONCAT('visit ', seq)) FROM seq_1_to_180;
CREATE TABLE document (id INT PRIMARY KEY, body TEXT);
INSERT INTO document SELECT seq, REPEAT('x', seq) FROM seq_1_to_20;
"""
CONFIG = """
priorities:
  - {name: critical, workers: 2}
  - {name: normal, workers: 2}
  - {name: bulk, workers: 1}
tables:
  appointment: {priority: normal, primary_key: [id]}
  document: {priority: bulk, primary_key: [id]}
"""
RUN_URL = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


def _field(page: Page, label: str):
    """The form block of one parameter: the element that holds its <label> and its input."""
    return page.locator("label", has_text=re.compile(rf"^{re.escape(label)}$")).locator(
        "xpath=ancestor::div[.//fieldset or .//textarea][1]")


def _state_badge(page: Page, state: str):
    """The run's state badge in the page header (e.g. "Completed"), not the word anywhere else."""
    return page.locator("span[data-slot='badge']", has_text=re.compile(rf"^\s*{state}\s*$")).filter(visible=True).first


def _wait_for_state_badge(page: Page, state: str, timeout: float) -> None:
    """The run page polls the API and updates itself; should it ever sit on a stale state, reload it
    every 20 s, as a person would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            expect(_state_badge(page, state)).to_be_visible(timeout=20_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            page.reload()


def _tab(page: Page, name: str):
    """A tab of the run page (Logs, Artifacts, ...)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    return tab.first if tab.count() else page.get_by_text(name, exact=True).first


def _custom_run_from_the_deployment_form(page: Page, env, prefect_stack) -> None:  # noqa: ANN001
    """Deployments -> repair -> Run -> Custom run with tables=[appointment]: the run page says Completed,
    the run has the form's parameters, appointment is loaded and document (not asked for) is not."""
    run_id = None
    t0 = time.monotonic()
    page.set_viewport_size({"width": 1400, "height": 1000})
    try:
        page.goto(prefect_stack.ui_url)
        page.get_by_role("link", name="Deployments", exact=True).first.click()
        page.get_by_role("link", name="repair", exact=True).first.click()
        page.get_by_role("button", name="Run", exact=True).first.click()
        page.get_by_text("Custom run", exact=True).first.click()

        tables = _field(page, "tables")
        tables.get_by_role("button", name="Add item").click()
        tables.locator("textarea").first.fill("appointment")
        page.get_by_role("button", name="Submit", exact=True).click()
        # Back on the deployment page, a toast says the run is scheduled and links to it.
        page.get_by_text("View run", exact=True).first.click()
        page.wait_for_url(RUN_URL, timeout=30_000)
        run_id = RUN_URL.search(page.url).group(1)
        # The URL changes before the run page replaces the deployment page, whose list of earlier
        # runs shows "Completed" badges too; so wait for the run to end (API), then reload the
        # run's page and read its own badge.
        prefect_stack.wait_for_flow_run(run_id, timeout=180)
        page.reload()
        _wait_for_state_badge(page, "Completed", timeout=60)
        # Once running, the flow renamed its run after the tables (flows/deployments.py).
        expect(page.get_by_text("repair-appointment", exact=True).first).to_be_visible()
        page.wait_for_timeout(1500)  # let the timeline and logs finish drawing
        expect(_state_badge(page, "Completed")).to_be_visible()
    except Exception:
        failure = prefect_stack.run_dir / "ui-failure.png"
        page.screenshot(path=str(failure))
        print(f"UI test failed at {page.url}; screenshot {failure}")
        if run_id:
            print(prefect_stack.diagnose(run_id))
        raise
    page.screenshot(path=str(SCREENSHOT))
    seconds = time.monotonic() - t0

    run = prefect_stack.wait_for_flow_run(run_id, timeout=30)  # the page said Completed; so must the API
    assert run["state"]["type"] == "COMPLETED", prefect_stack.diagnose(run_id)
    assert run["parameters"]["tables"] == ["appointment"]
    assert run["parameters"]["full_refresh"] is True  # the deployment's default, kept by the form

    src, pg = env.mysql(), env.pg()
    try:
        assert_pg_matches_mysql(src, env.source_db, pg, env.pg_schema, "appointment")
        with pg.cursor() as cur:
            cur.execute("SELECT to_regclass('raw.document') IS NULL")
            assert cur.fetchone()[0] is True
    finally:
        src.close(), pg.close()
    print(f"UI run: {seconds:.1f}s from opening the UI to Completed; screenshot {SCREENSHOT}")


def _failed_nightly_run_page(page: Page, env, prefect_stack) -> None:  # noqa: ANN001
    """A scheduled nightly run with a table missing from the source: named `nightly-<date>`, its page
    says Failed, its Logs tab has the table's one ERROR line and the summary, its Artifacts tab the
    run report naming the repair deployment. The Logs tab is saved to docs/failed-run.png
    (ETL_UPDATE_SCREENSHOT=1)."""
    env.write_config(CONFIG + "  ghost: {priority: critical, primary_key: [id]}\n")
    # A run of the nightly schedule, as the scheduler makes it (the stack's scheduler is off, so the
    # cron never fires mid-test): the last 02:00 America/New_York, backfilled, due at once.
    nightly = prefect_stack.deployment("etl-pipeline", "nightly")
    now = dt.datetime.now(dt.timezone.utc)
    prefect_stack.api("POST", f"/deployments/{nightly['id']}/schedule", json={
        "start_time": (now - dt.timedelta(hours=24)).isoformat(), "end_time": now.isoformat(), "max_runs": 1})
    # Whatever its state: it is due at once, and a polling worker may take it before this read (a clean-clone
    # run's SCHEDULED filter found none). Only this test schedules runs, so it is the one auto-scheduled run.
    [scheduled] = [r for r in prefect_stack.api("POST", "/flow_runs/filter", json={
        "flow_runs": {"deployment_id": {"any_": [nightly["id"]]}}}) if r["auto_scheduled"]]
    run_id = scheduled["id"]
    run = prefect_stack.wait_for_flow_run(run_id, timeout=180)
    assert run["state"]["type"] == "FAILED", prefect_stack.diagnose(run_id)
    night = dt.datetime.fromisoformat(scheduled["expected_start_time"]).astimezone(ZoneInfo("America/New_York"))
    assert night.hour == 2 and run["name"] == f"nightly-{night:%Y-%m-%d}"
    # The same through the API: one ERROR line for ghost, the summary last.
    # The run's last lines reach the API a moment after its state (logs are shipped in batches).
    def read_logs() -> list[dict]:
        return prefect_stack.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                              "sort": "TIMESTAMP_ASC", "limit": 200})
    wait_for(lambda: any(e["message"].startswith("summary: ") for e in read_logs()), timeout=60)
    logs = read_logs()
    assert [e["message"][:40] for e in logs if e["level"] >= 40] == ["table ghost failed: SchemaError: table '"]
    assert logs[-1]["message"].startswith("summary: 2 of 3 tables ok, 1 failed (ghost); ")

    FAILED_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1500})
    try:
        page.goto(f"{prefect_stack.ui_url}/runs/flow-run/{run_id}")
        # The header's state (a Failed badge is not drawn like the Completed one the custom run reads).
        expect(page.get_by_role("banner").get_by_text("Failed", exact=True).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text(run["name"], exact=True).first).to_be_visible()
        _tab(page, "Logs").click()
        line = page.get_by_text(re.compile(r"table ghost failed: SchemaError: table 'ghost' does not exist"))
        expect(line.first).to_be_visible()
        expect(page.get_by_text(re.compile(r"^summary: 2 of 3 tables ok, 1 failed \(ghost\)")).first).to_be_visible()
        page.wait_for_timeout(1000)
        line.first.scroll_into_view_if_needed()  # the graph (red group-critical) above, the line below
        page.screenshot(path=str(FAILED_SCREENSHOT), full_page=True)
        _tab(page, "Artifacts").click()
        page.get_by_text("etl-run-report", exact=True).first.click()
        expect(page.get_by_text("ETL run FAILED: 2 of 3 tables ok, 1 failed").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"Repair: run deployment etl-repair/repair")).first).to_be_visible()
        page.screenshot(path=str(FAILED_SCREENSHOT.with_name("failed-run-report.png")))
    except Exception:
        failure = prefect_stack.run_dir / "ui-failed-run-failure.png"
        page.screenshot(path=str(failure))
        print(f"UI test failed at {page.url}; screenshot {failure}")
        print(prefect_stack.diagnose(run_id))
        raise
    src, pg = env.mysql(), env.pg()
    try:  # the other tables of the failed run were loaded
        for t in ("appointment", "document"):
            assert_pg_matches_mysql(src, env.source_db, pg, env.pg_schema, t)
    finally:
        src.close(), pg.close()


def test_custom_run_completes_and_a_failed_nightly_run_shows_its_table(deployed_env, prefect_stack) -> None:
    """The custom run first (it proves `document` is not loaded), then the nightly run that fails on
    `ghost` and loads the rest, read on the same page of the same browser."""
    env = deployed_env
    env.source_sql(TABLE)
    env.write_config(CONFIG)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            _custom_run_from_the_deployment_form(page, env, prefect_stack)
            _failed_nightly_run_page(page, env, prefect_stack)
        finally:
            browser.close()
