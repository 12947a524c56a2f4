"""Telling the operator: one message when a pipeline run fails, crashes or is refused (and, if asked,
when it recovers), posted to ETL_NOTIFY_WEBHOOK.

    payload = build_message("failed", run=run_report(engine, run_id), run_name="nightly-fox", url=...)
    post(webhook, payload)            # True when delivered; False (and a warning) when not

The message is JSON: the fields (`event`, `run_id`, `run_name`, `url`, `status`, `error`, totals,
`failed_tables` with each table's one-line reason and its repair command) and a readable `text`
(what a Slack incoming webhook shows). It is built from the run's rows in etl.pipeline_runs /
etl.table_runs, so tables that ran on other workers are in it too, and every string is redacted:
no password reaches a webhook.

Delivery is a courtesy: a short timeout, one retry, and a warning in the log when it still fails;
it never changes the run's result. The flow calls it from its state hooks (flows/pipeline.py), so a
run that fails before any table started is reported (and recorded as a pipeline row with its
error) as well as one whose tables failed. What no flow code can report (a worker killed mid-run,
a run no worker picked up) is covered on a Prefect server by the automations `make deploy` creates
(`etl notifications setup`, `ensure_prefect_notifications` below).
"""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Any, Iterable, Literal

from tasks.errors import redact

log = logging.getLogger("etl.notify")

Event = Literal["failed", "crashed", "refused", "recovered", "test"]

# The deployment that reloads named tables (prefect.yaml, flows/deployments.py).
REPAIR_DEPLOYMENT = "etl-repair/repair"
REASON_CHARS = 300
TIMEOUT_SECONDS = 5.0
RETRY_PAUSE_SECONDS = 1.0
# Flows whose runs the Prefect automations watch (the parent flows, not table or group subflows).
WATCHED_FLOWS = ("etl-pipeline", "etl-repair", "etl-table")
BLOCK_NAME = "etl-notify"
AUTOMATION_PREFIX = "etl-notify-"


def one_line(text: Any, limit: int = REASON_CHARS) -> str:
    """A reason as one line of bounded length (tracebacks and multi-line server messages folded)."""
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def repair_command(table: str) -> str:
    """The command that reloads one table on the deployment (quoted for a POSIX shell)."""
    return f"prefect deployment run {REPAIR_DEPLOYMENT} --param 'tables=[{json.dumps(table)}]'"


def ui_url(flow_run_id: str | None) -> str | None:
    """The run's page in the Prefect UI when a server is configured (PREFECT_UI_URL, else derived from
    PREFECT_API_URL); None for the temporary local API `etl run` starts on its own (gone after the run)."""
    if not flow_run_id:
        return None
    try:
        from prefect.settings import get_current_settings

        s = get_current_settings()
        api = s.api.url
        if not api:
            return None
        ui = s.ui_url or api.rstrip("/").removesuffix("/api")  # Prefect 3 settings: `ui_url`, derived from the API URL
        return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}"
    except Exception:  # noqa: BLE001 - a link is a nicety
        return None


def build_message(event: Event, *, run: dict | None, run_id: str, run_name: str | None = None,
                  url: str | None = None, error: str | None = None, flow: str = "etl-pipeline",
                  outcomes: Iterable[Any] = (), secrets: tuple[str, ...] = ()) -> dict:
    """The payload for one run: fields plus a readable `text`. `run` is tasks.reports.run_report's dict
    (None when the run wrote no row); `outcomes` (TableOutcome-like) add failed tables it does not hold."""
    def clean(v: Any) -> str:
        return redact(one_line(v), secrets)

    failed: list[dict] = []
    seen: set[str] = set()
    for t in (run or {}).get("tables", []):
        if t.get("status") not in ("ok", "running"):
            failed.append({"table": t["table_name"], "status": t["status"],
                           "reason": clean(t.get("error") or t["status"])})
            seen.add(t["table_name"])
    for o in outcomes:
        name, status = getattr(o, "table", None), getattr(o, "status", "ok")
        if name and status != "ok" and name not in seen:
            failed.append({"table": name, "status": status, "reason": clean(getattr(o, "error", None) or status)})
            seen.add(name)
    for f in failed:
        f["repair"] = repair_command(f["table"])
    run = run or {}
    totals = {k: run.get(k) for k in ("tables_total", "tables_ok", "tables_failed", "rows_replica", "rows_analytics")}
    if totals["tables_failed"] is None and failed:
        totals["tables_failed"] = len(failed)
    status = run.get("status") or {"recovered": "ok", "test": "test"}.get(event, event)
    payload = {
        "event": event, "flow": flow, "run_id": run_id, "run_name": clean(run_name) if run_name else None,
        "url": url, "status": status, "error": clean(error) if error else None,
        **totals, "failed_tables": failed,
    }
    payload["text"] = render_text(payload)
    return payload


def render_text(p: dict) -> str:
    who = f"{p['flow']} run {p['run_name'] or p['run_id']}"
    head = {
        "failed": f"ETL FAILED: {who}",
        "crashed": f"ETL CRASHED: {who} (its process stopped before it finished)",
        "refused": f"ETL REFUSED: {who} did not start",
        "recovered": f"ETL RECOVERED: {who} succeeded after a failed run",
        "test": f"ETL test notification from {who}",
    }[p["event"]]
    lines = [head]
    if p.get("url"):
        lines.append(p["url"])
    if p.get("error"):
        lines.append(f"reason: {p['error']}")
    if p.get("tables_total") is not None:
        lines.append(f"tables ok {p.get('tables_ok') or 0}/{p['tables_total']}, failed {p.get('tables_failed') or 0}, "
                     f"rows to analytics {p.get('rows_analytics') or 0:,}")
    for f in p["failed_tables"]:
        lines.append(f"- {f['table']} ({f['status']}): {f['reason']}")
        lines.append(f"  repair: {f['repair']}")
    return "\n".join(lines)


def post(webhook: str, payload: dict, *, timeout: float = TIMEOUT_SECONDS, attempts: int = 2) -> bool:
    """POST the payload as JSON; retried once. Never raises: a failure is a warning naming the host only
    (the URL's path or query often is the token)."""
    data = json.dumps(payload, default=str).encode("utf-8")
    host = urllib.parse.urlsplit(webhook).netloc.rpartition("@")[2] or "<no host>"
    why = ""
    for attempt in range(1, attempts + 1):
        try:
            req = urllib.request.Request(webhook, data=data, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "etl-notify"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - operator-configured URL
                if 200 <= resp.status < 300:
                    return True
                why = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code}"
        except Exception as e:  # noqa: BLE001 - delivery must never fail the run
            why = one_line(f"{type(e).__name__}: {getattr(e, 'reason', None) or e}", 200)
        if attempt < attempts:
            time.sleep(RETRY_PAUSE_SECONDS)
    log.warning("notification (%s) not delivered to %s after %d attempts: %s", payload.get("event"), host,
                attempts, redact(why))
    return False


# --- from the flow's state hooks ------------------------------------------------------------------


def _passwords(urls: tuple[str, ...]) -> tuple[str, ...]:
    """The passwords in these URLs; a URL that does not parse (the run may have failed on it) has none
    to take, and must not stop the run from being recorded."""
    from sqlalchemy.engine import make_url

    out = []
    for u in urls:
        try:
            pw = make_url(u).password
        except Exception:  # noqa: BLE001
            pw = None
        if pw:
            out.append(str(pw))
    return tuple(out)


def _analytics_target(parameters: dict) -> tuple[str, dict | None, tuple[str, ...]] | None:
    """The analytics URL (and connect args, secrets) the run used: its blocks, else ETL_ANALYTICS_URL."""
    from config.settings import Settings

    blocks = parameters.get("blocks")
    try:
        if blocks:
            from blocks.connectors import BlockNames, urls_from_blocks

            urls = urls_from_blocks(blocks if isinstance(blocks, BlockNames) else BlockNames(**dict(blocks)))
            return urls.analytics, urls.analytics_connect_args, urls.secrets()
        s = Settings()
        if s.analytics_url is None:
            return None
        url = s.url("analytics")
        secrets = tuple(str(getattr(s, f"{r}_url").get_secret_value()) for r in ("source", "replica", "analytics")
                        if getattr(s, f"{r}_url") is not None)
        return url, None, _passwords(secrets)
    except Exception as e:  # noqa: BLE001 - then the run is reported without its rows
        log.warning("run history not read for the notification: %s", redact(one_line(e)))
        return None


def _state_error(state: Any) -> str | None:
    msg = getattr(state, "message", None) or ""
    for prefix in ("Flow run encountered an exception: ", "Flow run encountered an exception. "):
        msg = msg.removeprefix(prefix)
    return msg or None


def on_run_end(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow state hook of etl-pipeline (on_failure, on_crashed, on_completion). Records a run that failed
    before it wrote its pipeline row, then posts the message. Never raises."""
    try:
        _on_run_end(flow, flow_run, state)
    except Exception as e:  # noqa: BLE001 - a hook must not change the run's result
        log.warning("run-end notification failed: %s", redact(one_line(e)))


def _on_run_end(flow: Any, flow_run: Any, state: Any) -> None:
    from config.settings import Settings
    from tasks.schedule_guard import BlackoutRefused

    settings = Settings()
    run_id = str(flow_run.id)
    if state.is_completed():
        event: Event | None = "recovered" if settings.notify_recovered else None
    elif state.is_crashed():
        event = "crashed"
    else:
        event = "failed"
    error = _state_error(state)
    refused = False
    if event == "failed":
        try:
            state.result(raise_on_failure=True)
        except BlackoutRefused:
            refused = True
        except BaseException:  # noqa: BLE001 - only its type matters here
            refused = "BlackoutRefused" in (getattr(state, "message", None) or "")
    if refused:
        event = "refused"
    if event is None:
        return
    run: dict | None = None
    secrets: tuple[str, ...] = ()
    previous_failed = False
    # Nothing of a refused run touches a database (the guard's promise), not even the history.
    target = None if refused else _analytics_target(dict(flow_run.parameters or {}))
    if target is not None:
        url, connect_args, secrets = target
        run, previous_failed = _record_and_read(url, connect_args, secrets, run_id, event, error, flow_run)
    if event is None or not settings.notify_webhook:
        return
    if event == "recovered" and not previous_failed:
        return
    name = (run or {}).get("prefect_run_name") or getattr(flow_run, "name", None)
    link = (run or {}).get("prefect_run_url") or ui_url(run_id)
    payload = build_message(event, run=run, run_id=run_id, run_name=name, url=link,
                            error=None if event == "recovered" else error,
                            flow=getattr(flow, "name", "etl-pipeline"), secrets=secrets)
    post(settings.notify_webhook.get_secret_value(), payload)


def _record_and_read(url: str, connect_args: dict | None, secrets: tuple[str, ...], run_id: str, event: str | None,
                     error: str | None, flow_run: Any) -> tuple[dict | None, bool]:
    """A failed run without a pipeline row gets one (status failed, its error), so `etl status` shows it;
    one left `running` is closed as failed. Returns the run's report and whether the run before it failed."""
    from tasks.connections import open_metrics_engine
    from tasks.metrics import MetricsWriter, prefect_identity
    from tasks.reports import previous_status, run_report

    try:
        with open_metrics_engine(url, connect_args) as engine:
            run = run_report(engine, run_id)
            if event in ("failed", "crashed") and (run is None or run.get("status") == "running"):
                writer = MetricsWriter(engine, run_id, secrets,
                                       source=(getattr(flow_run, "parameters", None) or {}).get("source"))
                if run is None:
                    writer.ensure_schema()
                    name, link = prefect_identity(flow_run)
                    writer.pipeline_started(tables_total=0, full_refresh=bool((flow_run.parameters or {})
                                            .get("full_refresh")), replica_method="",
                                            prefect_run_name=name, prefect_run_url=link)
                writer.pipeline_failed(error or event, status="crashed" if event == "crashed" else "failed")
                run = run_report(engine, run_id)
            previous_failed = previous_status(engine, run_id) not in (None, "ok")
            return run, previous_failed
    except Exception as e:  # noqa: BLE001 - the analytics database may be the reason the run failed
        log.warning("run %s not recorded in the analytics database: %s", run_id, redact(one_line(e), secrets))
        return None, False


# --- on a Prefect server: notification block and automations (make deploy) -----------------------


def ensure_prefect_notifications(webhook: str, *, late_minutes: float) -> list[str]:
    """Create or replace the notification block `etl-notify` (a Slack webhook when the URL is Slack's,
    else a JSON webhook) and one automation per watched state: Failed, Crashed, and Late for longer than
    `late_minutes`. Returns the automation names. Needs PREFECT_API_URL (a server, not the temporary API)."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    if "hooks.slack.com/" in webhook:
        block: Any = SlackWebhook(url=webhook)
    else:
        block = CustomWebhookNotificationBlock(
            name=BLOCK_NAME, url=webhook, method="POST",
            json_data={"event": "prefect-automation", "subject": "{{subject}}", "text": "{{subject}}\n{{body}}"})
    block_id = block.save(BLOCK_NAME, overwrite=True)
    # Runs of the deployments only: a subflow (the pipeline inside a repair run) has no deployment, so a
    # failed repair run is one message, not two. Failed: not the table runs of dispatch=deployment
    # either (their parent fails and names them); Crashed and Late: those too (a dead worker).
    deployment = {"prefect.resource.role": "deployment"}
    watched = [{"prefect.resource.role": "flow", "prefect.resource.name": list(WATCHED_FLOWS)}, deployment]
    parents = [{"prefect.resource.role": "flow", "prefect.resource.name": ["etl-pipeline", "etl-repair"]},
               deployment]
    body = ("{{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}"
            "{% if flow_run.state.message %}: {{ flow_run.state.message }}{% endif %}\n"
            "{{ flow_run|ui_url }}\nid {{ flow_run.id }}; deployment {{ deployment.name }}")
    late_after = timedelta(minutes=late_minutes)
    specs = {
        "failed": (EventTrigger(expect={"prefect.flow-run.Failed"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                                match_related=parents, posture=Posture.Reactive, threshold=1),
                   "ETL run failed: {{ flow_run.name }}"),
        "crashed": (EventTrigger(expect={"prefect.flow-run.Crashed"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                                 match_related=watched, posture=Posture.Reactive, threshold=1),
                    "ETL run crashed (worker or process died): {{ flow_run.name }}"),
        # Still Late `late_minutes` after it turned Late: no worker took it (none running, or all busy).
        "late": ((EventTrigger(expect={"prefect.flow-run.Late"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                               match_related=watched, posture=Posture.Reactive, threshold=1)
                  if late_after < timedelta(seconds=10) else
                  EventTrigger(after={"prefect.flow-run.Late"},
                               expect={"prefect.flow-run.Pending", "prefect.flow-run.Running",
                                       "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                                       "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
                               match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=watched,
                               for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                               within=late_after)),
                 "ETL run not started (Late, no worker took it): {{ flow_run.name }}"),
    }
    names = []
    for key, (trigger, subject) in specs.items():
        name = AUTOMATION_PREFIX + key
        _delete_automations(name)
        Automation(name=name, description=f"mysql-analytics-etl: notify {BLOCK_NAME} when a run is {key}",
                   trigger=trigger, actions=[SendNotification(block_document_id=block_id, subject=subject,
                                                              body=body)]).create()
        names.append(name)
    return names


def _delete_automations(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for a in client.read_automations_by_name(name):
            client.delete_automation(a.id)
