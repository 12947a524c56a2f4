"""A throwaway Prefect server and process workers for the deployment tests, started and stopped by PID.

    stack = PrefectStack.start(run_dir, db_url="postgresql+asyncpg://postgres@127.0.0.1/etlt_1234abcd_prefect",
                               pool="etlt-1234abcd")             # waits for /api/health
    try:
        stack.prefect("--no-prompt", "deploy", "--all")        # the CLI, pointed at this server
        stack.start_worker(env={"ETL_CONFIG": ...})             # waits for its first heartbeat
        stack.start_worker(env=..., limit=1)                    # more workers on the pool: <pool>-worker-2, ...
        run_id = flow_run_id_from(stack.prefect("deployment", "run", ...).stdout)
        run = stack.wait_for_flow_run(run_id, timeout=180)
    finally:
        stack.stop()                                           # workers, their flow runs, then the server

Every process is started in a new session (its own process group) and its PID is written to
`<run_dir>/<name>.pid`; `stop()` signals exactly those groups, plus any process descended from them
that moved to a session of its own (the worker starts each flow run that way). Nothing is found by
name. The server keeps its state in the PostgreSQL database the caller created for it; its
PREFECT_HOME is inside run_dir, so no profile or setting outside the test is read or written.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
_UUID = re.compile(r"UUID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class Proc:
    """One background process we started: its own process group, a PID file and a log file."""

    name: str
    popen: subprocess.Popen
    log: Path
    pid_file: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group and every descendant (some lead groups of their own), then SIGKILL."""
        pgid = self.pid  # start_new_session: the process leads its own group
        below = descendants(self.pid)  # read before signalling: orphans get re-parented to init
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for p in below:
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.popen.poll()
                if not _group_alive(pgid) and not any(_alive(p) for p in below):
                    break
                time.sleep(0.2)
            else:
                continue
            break
        self.popen.poll()
        self.pid_file.unlink(missing_ok=True)


def start_process(name: str, args: list[str], *, env: dict[str, str], cwd: Path, run_dir: Path) -> Proc:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    pid_file = run_dir / f"{name}.pid"
    pid_file.write_text(str(popen.pid), encoding="utf-8")
    return Proc(name=name, popen=popen, log=log, pid_file=pid_file)


def clean_environment() -> dict[str, str]:
    """os.environ without PREFECT_* (another server, profile or test harness) and ETL_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ETL_"))}


@dataclass
class PrefectStack:
    """A Prefect server on `port`, backed by PostgreSQL database `pg_database`, and optionally a worker."""

    run_dir: Path
    port: int
    db_url: str
    pool: str
    server: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config_path: Path | None = None  # the worker's ETL_CONFIG, when the caller sets one
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def worker(self) -> Proc | None:
        """The first worker started (the one every deployment test can rely on)."""
        return self.workers[0] if self.workers else None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, run_dir: Path, *, db_url: str, pool: str, port: int | None = None,
              timeout: float = 120.0) -> "PrefectStack":
        port = port or free_port()
        stack = cls(run_dir=run_dir, port=port, db_url=db_url, pool=pool)
        stack.env = {
            **clean_environment(),
            "PREFECT_HOME": str(run_dir / "prefect-home"),
            "PREFECT_API_URL": stack.api_url,
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "250",  # the CLI's rich output unwrapped, so the flow run id is on one line
            "ETL_ENV_FILE": "",  # not the checkout's build/etl.env (`make demo`): the tests pass what they mean
        }
        server_env = {
            **stack.env,
            "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
            "PREFECT_UI_API_URL": stack.api_url,
            # No scheduler: the nightly cron of prefect.yaml must not create runs during a test.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        }
        stack.server = start_process(
            "prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env, cwd=run_dir, run_dir=run_dir)
        try:
            stack.wait_healthy(timeout)
        except BaseException:
            stack.stop()
            raise
        return stack

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server.running():
                raise RuntimeError(f"prefect server exited ({self.server.popen.returncode}):\n{self.server.tail()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s:\n{self.server.tail()}")

    def prefect(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess:
        """Run the `prefect` CLI against this server, from the repository root."""
        return self.run([str(BIN / "prefect"), *args], env=env, timeout=timeout, check=check)

    def run(self, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, env={**self.env, **(env or {})}, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def worker_name(self, index: int) -> str:
        """Names of the workers started here: `<pool>-worker`, `<pool>-worker-2`, ..."""
        return f"{self.pool}-worker" + (f"-{index + 1}" if index else "")

    def start_worker(self, env: dict[str, str] | None = None, timeout: float = 60.0, *,
                     limit: int | None = None, wait: bool = True) -> Proc:
        """A `process` worker on the pool, started from the repository root (so it can import the project).

        `limit`: at most that many flow runs at a time on this worker (`--limit`). With `wait`, returns
        once the server has its heartbeat; else call `wait_for_workers` later.
        """
        index = len(self.workers)
        worker_env = {**self.env, "PREFECT_WORKER_QUERY_SECONDS": "1", **(env or {})}
        args = [str(BIN / "prefect"), "worker", "start", "--pool", self.pool, "--type", "process",
                "--name", self.worker_name(index)]
        if limit is not None:
            args += ["--limit", str(limit)]
        proc = start_process("prefect-worker" + (f"-{index + 1}" if index else ""), args, env=worker_env, cwd=ROOT,
                             run_dir=self.run_dir)
        self.workers.append(proc)
        if wait:
            self.wait_for_workers(timeout)
        return proc

    def wait_for_workers(self, timeout: float = 60.0) -> None:
        """Until every worker started here has sent the server a heartbeat."""
        deadline = time.monotonic() + timeout
        names = {self.worker_name(i) for i in range(len(self.workers))}
        while time.monotonic() < deadline:
            for proc in self.workers:
                if not proc.running():
                    raise RuntimeError(f"prefect worker exited ({proc.popen.returncode}):\n{proc.tail()}")
            workers = self.api("POST", f"/work_pools/{self.pool}/workers/filter", json={})
            online = {w["name"] for w in workers if w.get("status") == "ONLINE" or w.get("last_heartbeat_time")}
            if names <= online:
                return
            time.sleep(0.5)
        raise RuntimeError(f"prefect workers did not report to the server in {timeout:.0f}s:\n"
                           + "\n".join(p.tail() for p in self.workers))

    def stop(self) -> None:
        """The workers together, each with any flow run it started, then the server. Safe to call twice.

        A worker gets 5 s after SIGTERM, not Proc.stop's 20: a test's flow runs have ended by now, and in a
        full suite run the workers sometimes outlive SIGTERM (alone they stop in 0.6 s; the cause is not
        found), so the longer grace only delayed the SIGKILL."""
        from concurrent.futures import ThreadPoolExecutor

        errors = []

        def stop(proc: Proc, grace: float) -> None:
            try:
                proc.stop(grace)
            except Exception as e:  # noqa: BLE001 - stop the others anyway
                errors.append(f"{proc.name}: {e!r}")

        if self.workers:
            with ThreadPoolExecutor(max_workers=len(self.workers)) as pool:
                list(pool.map(lambda p: stop(p, 5.0), self.workers))
        if self.server is not None:
            stop(self.server, 20.0)
        if errors:
            raise RuntimeError("; ".join(errors))

    # --- the REST API -------------------------------------------------------------------------

    def api(self, method: str, path: str, json: Any = None) -> Any:
        r = httpx.request(method, f"{self.api_url}{path}", json=json, timeout=30)
        r.raise_for_status()
        return r.json() if r.content else None

    def deployment(self, flow: str, name: str) -> dict:
        return self.api("GET", f"/deployments/name/{flow}/{name}")

    def flow_run(self, run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{run_id}")

    def wait_for_flow_run(self, run_id: str, timeout: float = 180.0) -> dict:
        """Poll until the run is in a terminal state or `timeout` passes; returns the last read."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.flow_run(run_id)
            if (run.get("state") or {}).get("type") in TERMINAL or time.monotonic() > deadline:
                return run
            time.sleep(1)

    def run_logs(self, run_id: str, limit: int = 300) -> str:
        """The log lines of the run and of every subflow run below it, oldest first."""
        runs = self.api("POST", "/flow_runs/filter", json={"limit": 200})
        tasks = self.api("POST", "/task_runs/filter", json={"limit": 200})
        flow_of_task = {t["id"]: t["flow_run_id"] for t in tasks}
        ids, added = {run_id}, True
        while added:
            added = False
            for fr in runs:
                if fr["id"] not in ids and flow_of_task.get(fr.get("parent_task_run_id")) in ids:
                    ids.add(fr["id"])
                    added = True
        logs = self.api("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": sorted(ids)}},
                                                      "limit": limit, "sort": "TIMESTAMP_ASC"})
        return "\n".join(f"{entry['timestamp']} {entry['name']}: {entry['message']}" for entry in logs)

    def diagnose(self, run_id: str) -> str:
        """What to print when a run did not complete: its state, its logs, the worker's log."""
        parts = []
        try:
            run = self.flow_run(run_id)
            parts.append(f"flow run {run_id} state: {json.dumps(run.get('state'), default=str)[:2000]}")
            parts.append("--- flow run logs ---\n" + self.run_logs(run_id))
        except Exception as e:  # noqa: BLE001
            parts.append(f"(could not read flow run {run_id}: {e!r})")
        for proc in self.workers:
            parts.append(f"--- {proc.name} log ---\n" + proc.tail(80))
        return "\n".join(parts)


def flow_run_id_from(output: str) -> str:
    """The id that `prefect deployment run` prints ('UUID: ...')."""
    m = _UUID.search(output)
    if not m:
        raise AssertionError(f"no flow run id in `prefect deployment run` output:\n{output}")
    return m.group(1)
