#!/usr/bin/env python3
"""Benchmark harness: our pipeline's stages vs what a user could chain with stock tools.

    make bench SCALE=1                               # = python bench/run.py --scale 1
    python bench/run.py --scale 0.1 --reps 3
    python bench/run.py --no-gen --stages analytics,anchors
    python bench/run.py --scales 1,4 --stages replica,analytics --tiny-tables 0   # RSS vs size

1. Generates the dataset with the project's generator (bench/gen_dental.py) into bench_src.
2. Runs the chosen stages; every measured item is a child process whose wall time and peak RSS
   (largest process of its tree, from wait4) are taken, then its data is checked (bench/verify.py):
     replica    ours `copy_full` method=stream and method=server, bench_src -> bench_repl
                anchors: mariadb-dump | mariadb -> bench_dump; INSERT..SELECT + indexes after -> bench_same
     analytics  ours `load_full`, bench_repl -> PG bench_dst schema `ours`, 2 worker threads, largest table first
                anchors: native pipe (mariadb --raw | psql \\copy) -> schema `native`; pgloader -> schema `pgloader`
     e2e        `etl run --full-refresh` (a subprocess, Prefect start-up included), config from `etl discover`,
                bench_src -> bench_repl -> bench_dst schema `raw`; anchor: INSERT..SELECT-postidx + pgloader times
     tiny       `etl run --full-refresh` over bench_tiny_src: --tiny-tables tables of 10 rows each
     incremental after a full refresh (the e2e stage's, else one run for it): gen_dental.mutate updates 1% of
                procedurelog and inserts 1% new rows, then `etl run` (same config, no --full-refresh) is timed;
                goal: its wall time < 5% of the full refresh's. --incr-spread: the updates spread over every
                page (uniform), over the newest keys (recent), or both runs one after the other (default),
                each against the same full refresh. Then delete detection alone is timed per table.
   `anchors` in --stages turns the anchor runs on (they are what the ratios are computed against).
3. Prints one table per scale: stage, rows, seconds, rows/s, peak RSS MB, ratio to the anchor,
   data check; then the goals, our per-table timings, and any data check failures.

Working files, logs and results (results_<tag>.json, summary_<tag>.txt) go to --work
(/tmp/bench-etl). Only databases named <prefix>_* (default bench_*) are dropped or created:
bench_src, bench_repl, bench_dump, bench_same, bench_tiny_src, bench_tiny_repl (MariaDB) and
bench_dst, bench_tiny_dst (PostgreSQL). One harness runs at a time (a lock in --work).

Ratios are anchor seconds / our seconds from the same run (> 1: we are faster), because the
machine is shared and absolute timings are noisy.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_T_START = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

DEFAULT_MYSQL_URL = os.environ.get("BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
ALL_STAGES = ("replica", "analytics", "e2e", "incremental", "anchors", "tiny", "clinic", "binlog", "clinics")
WORKERS = 2
E2E = "e2e: etl run --full-refresh"
INCR = "incremental: etl run (1% uniform)"
INCR_MUTATE = "incremental: mutate 1% uniform"
# gen_dental.mutate(spread=...): uniform = every 100th key of procedurelog (every page), recent = every 5th key
# of the newest 5% (as a clinic edits today's procedures); each spread is its own incremental run and row
INCR_SPREADS = ("uniform", "recent")
INCR_RUN = {"uniform": INCR, "recent": "incremental: etl run (1% recent)"}
INCR_MUTATES = {"uniform": INCR_MUTATE, "recent": "incremental: mutate 1% recent"}
# ours seconds / full refresh seconds (same run) must stay below this
INCR_GOAL = 0.05

# The clinic stage (issue 12): 450 tables in a real clinic's shape (bench/gen_clinic.py).
CLINIC_GEN = "clinic: generate (gen_clinic)"
CLINIC_SAME = "clinic: INSERT..SELECT postidx"
CLINIC_NATIVE = "clinic: native pipe"
CLINIC_LIMIT = "clinic: limit pair"
CLINIC_FULL = "clinic: etl run --full-refresh"
CLINIC_NONE = "clinic: etl run, nothing changed"
CLINIC_MUTATE = "clinic: mutate 1% in 70 tables"
CLINIC_CHURN = "clinic: etl run after 1% churn"
# run seconds / the same rep's clinic full refresh seconds must stay at or below these
CLINIC_GOALS = {CLINIC_NONE: 0.05, CLINIC_CHURN: 0.10}
# (ours, anchor, goal ratio): ratio = anchor seconds / our seconds, both from the same run.
GOALS = [
    ("analytics: ours load_full", "analytics: native pipe", 0.8),
    ("analytics: ours load_full", "analytics: pgloader", 1.5),
    ("replica: ours stream", "replica: mariadb-dump|mariadb", 5.0),
    ("replica: ours server", "replica: INSERT..SELECT postidx", 0.9),
    ("e2e: etl run --full-refresh", "e2e: chain postidx+pgloader", 1.25),
    (CLINIC_FULL, CLINIC_LIMIT, 0.8),
]
TINY_GOAL_SECONDS = 60.0
SHORT = {  # how an anchor is named in the ratio column
    "analytics: native pipe": "native", "analytics: pgloader": "pgloader",
    "replica: mariadb-dump|mariadb": "mariadb-dump", "replica: INSERT..SELECT postidx": "INSERT..SELECT-postidx",
    "e2e: chain postidx+pgloader": "chain", CLINIC_LIMIT: "limit pair",
}


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measuring
@dataclass
class Measured:
    seconds: float
    rss_mb: float
    rc: int
    log: str
    wall_start: float = 0.0  # time.time() at start / end, to line up with timestamps the child records
    wall_end: float = 0.0
    timed_out: bool = False


def measure(cmd: list[str], *, log_path: Path, env: dict | None = None, timeout: float = 1800) -> Measured:
    """Run `cmd` as a child in its own process group; wall seconds and peak RSS of the largest
    process in its tree (wait4's rusage: the child and every descendant it waited for).

    On timeout the group gets SIGINT (Python children clean up: Prefect stops its temporary
    server), then SIGKILL 15 s later."""
    with open(log_path, "ab") as lf:
        lf.write(("$ " + " ".join(cmd) + "\n").encode())
        lf.flush()
        wall0 = time.time()
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             cwd=str(ROOT), start_new_session=True)
        timed_out = threading.Event()
        done = threading.Event()

        def kill() -> None:
            timed_out.set()
            _killpg(p.pid, signal.SIGINT)
            if not done.wait(15):
                _killpg(p.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:
            _killpg(p.pid, signal.SIGTERM)
            raise
        finally:
            done.set()
            timer.cancel()
        secs = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        # Anything the child left running in its group (e.g. a server it spawned) is ours to end.
        _killpg(p.pid, signal.SIGTERM)
        if timed_out.is_set():
            lf.write(f"\nTIMEOUT after {timeout:.0f}s\n".encode())
    return Measured(secs, ru.ru_maxrss / 1024.0, 124 if timed_out.is_set() else p.returncode, str(log_path),
                    wall0, time.time(), timed_out.is_set())


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ----------------------------------------------------------------------------- results
@dataclass
class Item:
    name: str
    kind: str  # 'ours', 'anchor', 'gen', 'derived'
    seconds: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    rows: int = 0
    checks: list[str] = field(default_factory=list)  # one summary per rep
    oks: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    detail: dict = field(default_factory=dict)  # last rep: per-table stats, failures

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def ok(self) -> bool:
        return bool(self.oks) and all(self.oks)

    @property
    def check(self) -> str:
        if not self.checks:
            return "-"
        bad = [c for c, ok in zip(self.checks, self.oks) if not ok]
        return bad[0] if bad else self.checks[-1]


class Results:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def item(self, name: str, kind: str) -> Item:
        if name not in self.items:
            self.items[name] = Item(name, kind)
        return self.items[name]

    def get(self, name: str) -> Item | None:
        it = self.items.get(name)
        return it if it and it.seconds else None

    def ratio(self, ours: str, anchor: str) -> float | None:
        o, a = self.get(ours), self.get(anchor)
        if not o or not a or not o.median:
            return None
        # same rows moved: anchor seconds / our seconds == our rows/s / anchor rows/s
        return a.median / o.median


def _slug(name: str) -> str:
    """An item's name as it appears in its log file's name."""
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in name).strip("_")


def _mutated(log_path: Path) -> tuple[int, int]:
    """(updated, inserted) from the log of `gen_dental.py --mutate` ("...: 19803 updated, 20000 inserted ...")."""
    import re

    m = re.search(r"(\d+) updated, (\d+) inserted", log_path.read_text(errors="replace"))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _startup_parts(log_path: str, wall_start: float, flow_start: float) -> dict:
    """Split an `etl run` process's start-up with its log's timestamps: imports and CLI set-up until
    Prefect says it starts its temporary API server, the server's start until the flow run begins, and
    the flow's own set-up (config, engines, etl schema) until etl.pipeline_runs.started_at."""
    import datetime as dt
    import re

    marks: dict[str, float] = {}
    pat = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(Starting temporary server|Beginning flow run)")
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                m = pat.match(line)
                if m and m.group(2) not in marks:
                    marks[m.group(2)] = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except OSError:
        return {}
    flow = marks.get("Beginning flow run")
    if flow is None:
        return {}
    server = marks.get("Starting temporary server", flow)  # none with --prefect-api-url
    return {"imports_s": round(server - wall_start, 1), "api_server_s": round(flow - server, 1),
            "flow_setup_s": round(flow_start - flow, 1)}


def _check_text(results: list) -> str:
    if len(results) == 1:
        return results[0].summary()
    if all(r.ok for r in results):
        return f"ok ({len(results[0].tables)} tables: " + ", ".join(
            ("replica " if r.kind == "mysql" else "PG ") + r.summary().split(", ", 1)[1].rstrip(")") for r in results) + ")"
    return " + ".join(("replica " if r.kind == "mysql" else "PG ") + r.summary() for r in results if not r.ok)


# ----------------------------------------------------------------------------- harness
class Harness:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.work = Path(args.work)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        p = args.prefix
        self.db = dict(src=f"{p}_src", repl=f"{p}_repl", dump=f"{p}_dump", same=f"{p}_same", dst=f"{p}_dst",
                       tiny_src=f"{p}_tiny_src", tiny_repl=f"{p}_tiny_repl", tiny_dst=f"{p}_tiny_dst",
                       clinic_src=f"{p}_clinic_src", clinic_repl=f"{p}_clinic_repl", clinic_same=f"{p}_clinic_same",
                       clinic_dst=f"{p}_clinic_dst")
        self.py = sys.executable
        self.stages = set(args.stages)
        import shutil

        self.have_pgloader = bool(shutil.which("pgloader")) and not args.no_pgloader
        self.tag = ""
        self.src_tables: list[str] = []
        self.src_rows = 0
        self.src_mb = 0.0

    # -------------------------------------------------------------- db helpers
    def my(self, db: str | None = None):
        from verify import mysql_connect

        return mysql_connect(self.a.mysql_url, db)

    def my_exec(self, sql: str | list[str], db: str | None = None) -> list[tuple]:
        conn = self.my(db)
        try:
            rows: list[tuple] = []
            with conn.cursor() as cur:
                for s in [sql] if isinstance(sql, str) else sql:
                    cur.execute(s)
                    rows = list(cur.fetchall()) if cur.description else []
            return rows
        finally:
            conn.close()

    def pg_exec(self, db: str, sql: str) -> list[tuple]:
        from verify import pg_connect

        conn = pg_connect(self.a.pg_url, db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def _owned(self, name: str) -> str:
        if not name.startswith(self.a.prefix + "_") or not name.startswith("bench"):
            raise SystemExit(f"refusing to touch database {name!r}: not one of the harness's own bench_* databases")
        return name

    def my_drop(self, name: str) -> None:
        self.my_exec(f"DROP DATABASE IF EXISTS `{self._owned(name)}`")

    def pg_recreate(self, name: str) -> None:
        self._owned(name)
        self.pg_exec("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.pg_exec("postgres", f'CREATE DATABASE "{name}"')

    def pg_drop_schema(self, db: str, *schemas: str) -> None:
        self.pg_exec(self._owned(db), "; ".join(f'DROP SCHEMA IF EXISTS "{s}" CASCADE' for s in schemas))

    def url_my(self, db: str) -> str:
        return f"{self.a.mysql_url.rstrip('/')}/{db}"

    def url_pg(self, db: str) -> str:
        return f"{self.a.pg_url.rstrip('/')}/{db}"

    def base_env(self) -> dict:
        env = dict(os.environ, BENCH_MYSQL_URL=self.a.mysql_url, BENCH_PG_URL=self.a.pg_url)
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        return env

    def etl_cmd(self) -> list[str]:
        etl = Path(self.py).parent / "etl"
        return [str(etl)] if etl.exists() else [self.py, "-m", "flows.cli"]

    def etl_env(self, src: str, repl: str, dst: str, config: Path) -> dict:
        env = self.base_env()
        env.update(ETL_SOURCE_URL=self.url_my(src), ETL_REPLICA_URL=self.url_my(repl),
                   ETL_ANALYTICS_URL=self.url_pg(dst), ETL_ANALYTICS_SCHEMA="raw", ETL_CONFIG=str(config))
        # A private Prefect home: the temporary API's database is not shared with other runs on the box.
        env.setdefault("PREFECT_HOME", str(self.work / "prefect-home"))
        # Prefect gives its temporary API server 20 s to start; on the loaded shared box it has taken
        # longer, and the run then fails before it begins (the time it takes is measured either way).
        env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        if self.a.prefect_api_url:
            # a Prefect server that is already running (as in production): no temporary server per run
            env["PREFECT_API_URL"] = self.a.prefect_api_url
        return env

    # -------------------------------------------------------------- one measured run
    def run_item(self, res: Results, name: str, kind: str, cmd: list[str], *, env: dict | None = None,
                 check=None, rep: int = 1, out_json: Path | None = None, timeout: float | None = None) -> Item:
        it = res.item(name, kind)
        lp = self.logs / f"{self.tag}.{_slug(name)}.{rep}.log"
        lp.unlink(missing_ok=True)
        if out_json:
            out_json.unlink(missing_ok=True)
        m = measure(cmd, log_path=lp, env=env or self.base_env(), timeout=timeout or self.a.timeout)
        it.detail["wall"] = (m.wall_start, m.wall_end)
        it.detail["log"] = m.log
        it.detail["timed_out"] = m.timed_out
        it.seconds.append(m.seconds)
        it.rss.append(m.rss_mb)
        if out_json and out_json.exists():
            it.detail["tables"] = json.loads(out_json.read_text())
        if m.rc != 0:
            tail = Path(m.log).read_text(errors="replace").strip().splitlines()[-3:]
            it.checks.append("TIMEOUT" if m.timed_out else f"FAIL(rc={m.rc})")
            it.oks.append(False)
            if not m.timed_out:
                it.notes.append(f"rep {rep}: exit {m.rc}: {' | '.join(tail)[:300]} (log {m.log})")
        elif check is not None:
            t0 = time.monotonic()
            try:
                results = check()
            except Exception as e:  # noqa: BLE001 - a check that cannot run is a failed check
                results = []
                it.checks.append(f"FAIL (check error: {str(e).strip().splitlines()[0][:120]})")
                it.oks.append(False)
            if not results:
                log(f"{name} rep {rep}: {m.seconds:.1f}s, peak RSS {m.rss_mb:.0f} MB, {it.checks[-1]}")
                it.rows = it.rows or self.src_rows
                return it
            ok = all(r.ok for r in results)
            it.checks.append(_check_text(results))
            it.oks.append(ok)
            it.rows = sum(t.dst_rows or 0 for t in results[0].tables)
            it.detail["check"] = [r.as_dict() for r in results]
            it.detail["check_seconds"] = round(time.monotonic() - t0, 1)
        else:
            it.checks.append("- (exit 0)")
            it.oks.append(True)
        if not it.rows:
            it.rows = self.src_rows
        log(f"{name} rep {rep}: {m.seconds:.1f}s, peak RSS {m.rss_mb:.0f} MB, {it.checks[-1]}")
        return it

    # -------------------------------------------------------------- checks
    def check_mysql(self, src: str, dst: str, tables: list[str] | None = None):
        from verify import check_mysql

        return lambda: [check_mysql(src, dst, mysql_url=self.a.mysql_url, tables=tables or self.src_tables)]

    def check_pg(self, src: str, dst: str, schema: str, tables: list[str] | None = None):
        from verify import check_pg

        return lambda: [check_pg(src, dst, schema, mysql_url=self.a.mysql_url, pg_url=self.a.pg_url,
                                 tables=tables or self.src_tables)]

    def check_both(self, src: str, repl: str, dst: str, schema: str, tables: list[str] | None = None):
        a, b = self.check_mysql(src, repl, tables), self.check_pg(src, dst, schema, tables)
        return lambda: a() + b()

    # -------------------------------------------------------------- child commands
    def child_cmd(self, what: str, out: Path, **kw: str) -> list[str]:
        cmd = [self.py, str(BENCH / "run.py"), "--child", what, "--out", str(out),
               "--mysql-url", self.a.mysql_url, "--pg-url", self.a.pg_url, "--workers", str(WORKERS),
               "--child-tables", ",".join(self.src_tables)]
        for k, v in kw.items():
            cmd += [f"--{k.replace('_', '-')}", v]
        return cmd

    def anchor_cmd(self, what: str, src: str, dst: str, schema: str = "native") -> list[str]:
        return [self.py, str(BENCH / "anchors.py"), what, "--src", src, "--dst", dst, "--schema", schema,
                "--jobs", str(WORKERS), "--work", str(self.work), "--mysql-url", self.a.mysql_url,
                "--pg-url", self.a.pg_url]

    # -------------------------------------------------------------- stages
    def source_info(self) -> None:
        from verify import source_tables

        my = self.my()
        try:
            self.src_tables = source_tables(my, self.db["src"])
            if not self.src_tables:
                raise SystemExit(f"{self.db['src']} has no tables: run without --no-gen")
            with my.cursor() as cur:
                cur.execute(" UNION ALL ".join(f"SELECT COUNT(*) FROM `{self.db['src']}`.`{t}`" for t in self.src_tables))
                self.src_rows = sum(int(r[0]) for r in cur.fetchall())
                cur.execute("SELECT SUM(data_length) FROM information_schema.tables WHERE table_schema = %s",
                            (self.db["src"],))
                self.src_mb = float(cur.fetchone()[0] or 0) / 1e6
        finally:
            my.close()

    def stage_gen(self, res: Results, scale: float) -> None:
        from verify import clear_cache

        clear_cache()
        it = self.run_item(res, "generate (gen_dental)", "gen",
                           [self.py, str(BENCH / "gen_dental.py"), "--url", self.url_my(self.db["src"]),
                            "--scale", str(scale)])
        if not it.ok:
            raise SystemExit(f"generation failed: {it.notes}")
        self.source_info()
        it.rows = self.src_rows

    def anchors_for(self, stage: str) -> bool:
        """Anchors run for the chosen stages; `--stages anchors` alone runs every anchor.
        The e2e anchor is the chain INSERT..SELECT-postidx + pgloader."""
        if "anchors" not in self.stages:
            return False
        chosen = self.stages - {"anchors", "tiny", "incremental"}
        return not chosen or stage in chosen

    def stage_replica(self, res: Results, rep: int) -> None:
        src, repl = self.db["src"], self.db["repl"]
        if self.anchors_for("replica"):
            self.run_item(res, "replica: mariadb-dump|mariadb", "anchor",
                          self.anchor_cmd("dump", src, self.db["dump"]), check=self.check_mysql(src, self.db["dump"]),
                          rep=rep)
            self.my_drop(self.db["dump"])  # 0.5 GB per scale-1 copy; nothing reads it later
        if self.anchors_for("replica") or self.anchors_for("e2e"):
            self.run_item(res, "replica: INSERT..SELECT postidx", "anchor",
                          self.anchor_cmd("same", src, self.db["same"]), check=self.check_mysql(src, self.db["same"]),
                          rep=rep)
            self.my_drop(self.db["same"])
        if "replica" in self.stages:
            for method in ("stream", "server"):
                self.my_drop(repl)
                out = self.work / f"{self.tag}.replica_{method}.json"
                self.run_item(res, f"replica: ours {method}", "ours",
                              self.child_cmd("replica", out, method=method, src=src, repl=repl),
                              check=self.check_mysql(src, repl), rep=rep, out_json=out)

    def ensure_replica(self, res: Results) -> None:
        """The analytics stage reads bench_repl: make it (untimed) unless it already equals the source."""
        from verify import check_mysql

        last = res.get("replica: ours server")
        if last and last.oks and last.oks[-1]:
            return
        if check_mysql(self.db["src"], self.db["repl"], mysql_url=self.a.mysql_url, tables=self.src_tables).ok:
            return
        log(f"{self.db['repl']} is missing or differs from {self.db['src']}: copying it first (not timed)")
        out = self.work / f"{self.tag}.replica_prep.json"
        m = measure(self.child_cmd("replica", out, method="server", src=self.db["src"], repl=self.db["repl"]),
                    log_path=self.logs / f"{self.tag}.replica_prep.log", env=self.base_env(), timeout=self.a.timeout)
        if m.rc:
            raise SystemExit(f"could not prepare {self.db['repl']}; see {m.log}")

    def stage_analytics(self, res: Results, rep: int) -> None:
        src, repl, dst = self.db["src"], self.db["repl"], self.db["dst"]
        if self.anchors_for("analytics"):
            self.pg_drop_schema(dst, "native")
            self.run_item(res, "analytics: native pipe", "anchor", self.anchor_cmd("native", repl, dst, "native"),
                          check=self.check_pg(src, dst, "native"), rep=rep)
            self.pg_drop_schema(dst, "native")
        if self.have_pgloader and (self.anchors_for("analytics") or self.anchors_for("e2e")):
            self.pg_drop_schema(dst, "pgloader", repl)
            self.run_item(res, "analytics: pgloader", "anchor", self.anchor_cmd("pgloader", repl, dst, "pgloader"),
                          check=self.check_pg(src, dst, "pgloader"), rep=rep)
            self.pg_drop_schema(dst, "pgloader", repl)
        if "analytics" in self.stages:
            self.pg_drop_schema(dst, "ours")
            out = self.work / f"{self.tag}.analytics.json"
            self.run_item(res, "analytics: ours load_full", "ours",
                          self.child_cmd("analytics", out, repl=repl, dst=dst, schema="ours"),
                          check=self.check_pg(src, dst, "ours"), rep=rep, out_json=out)
            self.pg_drop_schema(dst, "ours")

    def discover(self, src: str, config: Path) -> float:
        env = self.etl_env(src, "unused", "unused", config)
        t0 = time.monotonic()
        p = subprocess.run(self.etl_cmd() + ["discover", "--output", str(config)], env=env, cwd=str(ROOT),
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"etl discover failed: {p.stderr.strip()[-500:]}")
        return time.monotonic() - t0

    def prefect_warmup(self, env: dict) -> None:
        """First use of a Prefect home creates its database (migrations): a one-off, not timed."""
        home = Path(env["PREFECT_HOME"])
        if (home / ".bench-warm").exists():
            return
        home.mkdir(parents=True, exist_ok=True)
        code = "from prefect import flow\n@flow\ndef warmup():\n    return 1\nwarmup()\n"
        t0 = time.monotonic()
        p = subprocess.run([self.py, "-c", code], env=env, cwd=str(ROOT), capture_output=True, text=True)
        if p.returncode == 0:
            (home / ".bench-warm").write_text("ok\n")
        log(f"prefect warm-up in {home}: {time.monotonic() - t0:.1f}s (rc {p.returncode}, not timed)")

    def etl_tables(self, dst: str, wall: tuple[float, float], log_path: str | None = None) -> dict:
        """Per-table timings of the last pipeline run, from the run history in etl.*, and how much of
        the process wall time was outside the flow (Prefect start-up before, shutdown after)."""
        try:
            # only a run this process started (a run that failed before it began leaves no row)
            run = self.pg_exec(dst, "SELECT run_id, EXTRACT(EPOCH FROM started_at), EXTRACT(EPOCH FROM ended_at) "
                                    f"FROM etl.pipeline_runs WHERE started_at >= to_timestamp({wall[0]:.3f}) "
                                    "ORDER BY started_at DESC LIMIT 1")
            if not run:
                return {}
            rid, t_start, t_end = run[0][0], float(run[0][1]), (float(run[0][2]) if run[0][2] is not None else None)
            rows = self.pg_exec(dst, f"""SELECT table_name, priority, replica_rows, replica_seconds, analytics_seconds,
                    verify_seconds, EXTRACT(EPOCH FROM started_at) - {t_start},
                    EXTRACT(EPOCH FROM ended_at - started_at), status, mode, analytics_rows, notes
                FROM etl.table_runs WHERE run_id = '{rid}' ORDER BY started_at""")
        except Exception as e:  # noqa: BLE001
            return {"error": str(e).strip()}
        return {"flow_seconds": (t_end - t_start) if t_end else None,
                "startup_s": t_start - wall[0], "shutdown_s": (wall[1] - t_end) if t_end else None,
                "startup_parts": _startup_parts(log_path, wall[0], t_start) if log_path else {},
                "tables_ok": sum(1 for r in rows if r[8] == "ok"),
                "tables": [dict(table=r[0], priority=r[1], rows=r[2], replica_s=r[3], analytics_s=r[4], verify_s=r[5],
                                start_offset_s=float(r[6] or 0), table_s=float(r[7] or 0), status=r[8], mode=r[9],
                                analytics_rows=r[10], notes=r[11]) for r in rows]}

    def stage_e2e(self, res: Results, rep: int) -> None:
        src, repl, dst = self.db["src"], self.db["repl"], self.db["dst"]
        config = self.work / f"{self.tag}.tables.yml"
        secs = self.discover(src, config)
        env = self.etl_env(src, repl, dst, config)
        self.prefect_warmup(env)
        self.my_drop(repl)
        self.pg_drop_schema(dst, "raw", "etl")
        it = self.run_item(res, "e2e: etl run --full-refresh", "ours",
                           self.etl_cmd() + ["run", "--full-refresh", "--config", str(config)], env=env,
                           check=self.check_both(src, repl, dst, "raw"), rep=rep)
        it.rows = self.src_rows
        it.detail["etl"] = self.etl_tables(dst, it.detail["wall"], it.detail["log"])
        if rep == 1:
            it.notes.append(f"config from `etl discover` ({secs:.1f}s, not timed); Prefect start-up included")

    def chain(self, res: Results) -> None:
        a, b = res.get("replica: INSERT..SELECT postidx"), res.get("analytics: pgloader")
        if not a or not b:
            return
        it = res.item("e2e: chain postidx+pgloader", "derived")
        it.seconds = [a.median + b.median]
        it.rss = [max(max(a.rss), max(b.rss))]
        it.rows = self.src_rows
        it.checks = [f"ok (both checked above)" if a.ok and b.ok else "FAIL (see the two anchors)"]
        it.oks = [a.ok and b.ok]
        it.notes.append("sum of the two anchors' median times in this run (INSERT..SELECT postidx + pgloader)")

    def make_tiny(self, n: int) -> int:
        db = self._owned(self.db["tiny_src"])
        stmts = [f"DROP DATABASE IF EXISTS `{db}`", f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4", f"USE `{db}`"]
        for i in range(1, n + 1):
            t = f"tiny_{i:04d}"
            stmts.append(f"CREATE TABLE `{t}` (id INT NOT NULL PRIMARY KEY, name VARCHAR(40) NOT NULL, "
                         f"amount DECIMAL(10,2) NOT NULL, created DATETIME NOT NULL, note TEXT)")
            stmts.append(f"INSERT INTO `{t}` SELECT seq, CONCAT('row ', seq, ' of {t}'), seq * {i} / 100, "
                         f"'2024-01-01' + INTERVAL (seq * {i}) MINUTE, IF(seq % 3 = 0, NULL, 'a\\tb') FROM seq_1_to_10")
        self.my_exec(stmts)
        return n * 10

    def stage_tiny(self, res: Results, rep: int) -> None:
        n = self.a.tiny_tables
        src, repl, dst = self.db["tiny_src"], self.db["tiny_repl"], self.db["tiny_dst"]
        if rep == 1:
            t0 = time.monotonic()
            self.make_tiny(n)
            log(f"created {src}: {n} tables x 10 rows in {time.monotonic() - t0:.1f}s")
        config = self.work / f"{self.tag}.tiny_tables.yml"
        self.discover(src, config)
        env = self.etl_env(src, repl, dst, config)
        self.prefect_warmup(env)
        self.my_drop(repl)
        self.pg_recreate(dst)
        tables = [f"tiny_{i:04d}" for i in range(1, n + 1)]
        it = self.run_item(res, f"tiny: etl run {n} tables x 10 rows", "ours",
                           self.etl_cmd() + ["run", "--full-refresh", "--config", str(config)], env=env,
                           check=self.check_both(src, repl, dst, "raw", tables), rep=rep,
                           timeout=self.a.tiny_timeout)
        it.rows = n * 10
        it.detail["etl"] = etl = self.etl_tables(dst, it.detail["wall"], it.detail["log"])
        etl["tables_total"] = n
        if it.detail.get("timed_out"):
            done = etl.get("tables_ok", 0)
            secs = it.seconds[-1]
            proj = f"; at that pace all {n} would take ~{secs * n / done:.0f}s" if done else ""
            it.checks[-1] = f"TIMEOUT ({done}/{n} tables done)"
            it.notes.append(f"rep {rep}: stopped at --tiny-timeout {self.a.tiny_timeout:.0f}s with {done} of {n} "
                            f"tables loaded{proj}")

    def stage_incremental(self, res: Results, rep: int) -> None:
        """1% churn: from a fully refreshed replica and analytics copy (this rep's e2e run, else one made
        here and reported as the e2e row), mutate the source (1% of procedurelog updated, 1% inserted),
        then time `etl run` with the same config and no --full-refresh, and check all three copies.
        Then delete detection alone, per table: an item of its own, not part of the ratio."""
        src, repl, dst = self.db["src"], self.db["repl"], self.db["dst"]
        full = res.items.get(E2E)
        if "e2e" not in self.stages or not full or len(full.seconds) < rep:
            self.stage_e2e(res, rep)  # the baseline: same command, same checks as the e2e stage
            full = res.items[E2E]
        if not full.oks[-1]:
            log(f"incremental rep {rep}: skipped, the full refresh it starts from failed ({full.check})")
            return
        config = self.work / f"{self.tag}.tables.yml"
        # With both spreads the second incremental run follows the first (no new full refresh): each run
        # merges only its own churn, and both ratios divide by this rep's one full refresh.
        for spread in self.a.incr_spreads:
            self.run_incremental(res, rep, INCR_RUN[spread], INCR_MUTATES[spread], config, round_no=rep,
                                 spread=spread)
        if self.a.incr_deletes_every:
            # The same churn again, with delete detection not due on this run (deletes_every: N).
            spread = self.a.incr_spreads[-1]
            cfg2 = self.work / f"{self.tag}.tables_deletes_every.yml"
            cfg2.write_text(config.read_text().replace(
                "\ndefaults:\n", f"\ndefaults:\n  deletes_every: {self.a.incr_deletes_every}\n", 1))
            self.run_incremental(res, rep, f"incremental: etl run {spread}, deletes not due "
                                           f"(every {self.a.incr_deletes_every})",
                                 INCR_MUTATES[spread].replace("mutate", "mutate again"), cfg2, round_no=rep + 50,
                                 spread=spread)
        out = self.work / f"{self.tag}.deletes.json"
        it = self.run_item(res, "incremental: delete detection alone", "diag",
                           self.child_cmd("deletes", out, src=src, repl=repl, config=str(config)), rep=rep,
                           out_json=out)
        tabs = (it.detail.get("tables") or {}).get("tables", [])
        it.rows = sum(t["rows"] for t in tabs)
        if it.oks[-1]:
            it.checks[-1] = (f"- ({len(tabs)} tables, {sum(t['ranges'] for t in tabs)} ranges, "
                             f"{sum(t['differing'] for t in tabs)} differing)")

    def run_incremental(self, res: Results, rep: int, name: str, mutate_name: str, config: Path, *,
                        round_no: int, spread: str) -> None:
        """Mutate the source (a measured child, reported but not part of the ratio), then the timed
        incremental `etl run` with `config` and its data check."""
        from verify import clear_cache

        src, repl, dst = self.db["src"], self.db["repl"], self.db["dst"]
        mut = self.run_item(res, mutate_name, "gen",
                            [self.py, str(BENCH / "gen_dental.py"), "--url", self.url_my(src), "--mutate",
                             "--pct", str(self.a.incr_pct), "--round", str(round_no), "--spread", spread],
                            rep=rep)
        changed = _mutated(self.logs / f"{self.tag}.{_slug(mutate_name)}.{rep}.log")
        mut.rows = sum(changed)
        mut.detail.setdefault("changes", []).append(dict(zip(("updated", "inserted"), changed)))
        if not mut.oks[-1]:
            raise SystemExit(f"gen_dental --mutate failed: {mut.notes}")
        clear_cache()  # the source changed: its checksums and aggregates must be read again
        self.source_info()
        env = self.etl_env(src, repl, dst, config)
        it = self.run_item(res, name, "ours", self.etl_cmd() + ["run", "--config", str(config)], env=env,
                           check=self.check_both(src, repl, dst, "raw"), rep=rep)
        it.detail["etl"] = etl = self.etl_tables(dst, it.detail["wall"], it.detail["log"])
        # rows moved: what the analytics merges wrote (the replica's count is MySQL's affected rows,
        # 2 per updated row)
        it.rows = sum(t["analytics_rows"] or 0 for t in etl.get("tables", [])) or it.rows
        full = res.items[E2E]
        it.detail.setdefault("full_refresh_s", []).append(full.seconds[-1])
        it.detail["spread"] = spread
        it.detail.setdefault("source_changes", []).append(dict(zip(("updated", "inserted"), changed)))
        if self.a.incr_pct != 1.0 and rep == 1:
            it.notes.append(f"--incr-pct {self.a.incr_pct:g}: the churn is {self.a.incr_pct:g}%, not the 1% the name says")

    def stage_clinic(self, res: Results, rep: int) -> None:
        """450 tables in a clinic's shape (bench/gen_clinic.py): the limit pair (same-server INSERT..SELECT
        with indexes after, then the native mariadb | psql \\copy pipe), then ours: `etl run --full-refresh`,
        `etl run` with nothing changed, and `etl run` after 1% churn in 70 tables, each checked against the
        source. Ratios: the limit pair / our full refresh (goal >= 0.8), and each later run / the same rep's
        full refresh (goals <= 0.05 and <= 0.10)."""
        from verify import clear_cache, source_tables

        src, repl, same, dst = (self.db[k] for k in ("clinic_src", "clinic_repl", "clinic_same", "clinic_dst"))
        scale = self.a.clinic_scale
        if rep == 1 and not self.a.no_gen:
            clear_cache()
            it = self.run_item(res, CLINIC_GEN, "gen", [self.py, str(BENCH / "gen_clinic.py"), "--url",
                                                        self.url_my(src), "--scale", str(scale)])
            if not it.ok:
                raise SystemExit(f"gen_clinic failed: {it.notes}")
        my = self.my()
        try:
            tables = source_tables(my, src)
            with my.cursor() as cur:
                cur.execute("SELECT SUM(TABLE_ROWS) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (src,))
                est = int(cur.fetchone()[0] or 0)
        finally:
            my.close()
        if not tables:
            raise SystemExit(f"{src} has no tables: run without --no-gen")
        rows = self.count_rows(src, tables)
        log(f"clinic source {src}: {len(tables)} tables, {rows:,} rows (estimate {est:,})")
        self.pg_recreate(dst)
        if self.anchors_for("clinic") or "anchors" not in self.stages:
            a = self.run_item(res, CLINIC_SAME, "anchor", self.anchor_cmd("same", src, same),
                              check=self.check_mysql(src, same, tables), rep=rep)
            b = self.run_item(res, CLINIC_NATIVE, "anchor", self.anchor_cmd("native", same, dst, "native"),
                              check=self.check_pg(src, dst, "native", tables), rep=rep)
            a.rows = b.rows = rows
            pair = res.item(CLINIC_LIMIT, "derived")
            pair.seconds.append(a.seconds[-1] + b.seconds[-1])
            pair.rss.append(max(a.rss[-1], b.rss[-1]))
            pair.rows = rows
            pair.checks.append("ok (both checked)" if a.oks[-1] and b.oks[-1] else "FAIL (see the two anchors)")
            pair.oks.append(a.oks[-1] and b.oks[-1])
            self.pg_drop_schema(dst, "native")
        config = self.work / f"{self.tag}.clinic.tables.yml"
        self.discover(src, config)
        env = self.etl_env(src, repl, dst, config)
        self.prefect_warmup(env)
        self.my_drop(repl)
        self.pg_drop_schema(dst, "raw", "etl")
        check = self.check_both(src, repl, dst, "raw", tables)
        full = self.run_item(res, CLINIC_FULL, "ours", self.etl_cmd() + ["run", "--full-refresh", "--config", str(config)],
                             env=env, check=check, rep=rep)
        full.rows = rows
        full.detail["etl"] = self.etl_tables(dst, full.detail["wall"], full.detail["log"])
        none = self.run_item(res, CLINIC_NONE, "ours", self.etl_cmd() + ["run", "--config", str(config)], env=env,
                             check=check, rep=rep)
        none.detail["etl"] = etl = self.etl_tables(dst, none.detail["wall"], none.detail["log"])
        none.rows = sum(t["analytics_rows"] or 0 for t in etl.get("tables", []))
        none.detail.setdefault("full_refresh_s", []).append(full.seconds[-1])
        mut = self.run_item(res, CLINIC_MUTATE, "gen", [self.py, str(BENCH / "gen_clinic.py"), "--url", self.url_my(src),
                                                        "--mutate", "--round", str(rep), "--scale", str(scale)], rep=rep)
        try:
            mut.detail["changes"] = json.loads(Path(mut.detail["log"]).read_text().strip().splitlines()[-1])
            mut.rows = sum(mut.detail["changes"].get(k, 0) for k in ("updated", "inserted", "deleted"))
        except (ValueError, IndexError):
            pass
        clear_cache()
        churn = self.run_item(res, CLINIC_CHURN, "ours", self.etl_cmd() + ["run", "--config", str(config)], env=env,
                              check=self.check_both(src, repl, dst, "raw", tables), rep=rep)
        churn.detail["etl"] = etl = self.etl_tables(dst, churn.detail["wall"], churn.detail["log"])
        churn.rows = sum(t["analytics_rows"] or 0 for t in etl.get("tables", []))
        churn.detail.setdefault("full_refresh_s", []).append(full.seconds[-1])

    def count_rows(self, db: str, tables: list[str]) -> int:
        total = 0
        for i in range(0, len(tables), 100):
            part = tables[i:i + 100]
            total += sum(int(r[0]) for r in self.my_exec(
                " UNION ALL ".join(f"SELECT COUNT(*) FROM `{db}`.`{t}`" for t in part)))
        return total

    # -------------------------------------------------------------- one scale
    def run_scale(self, scale: float) -> Results:
        res = Results()
        self.tag = f"scale{scale:g}"
        # The dental dataset (bench_src) is needed unless only the stages with their own data were chosen.
        needs_dental = bool(self.stages - {"clinic", "tiny", "anchors", "binlog", "clinics"})
        if not needs_dental:
            pass
        elif self.a.no_gen:
            self.source_info()
            log(f"reusing {self.db['src']}: {self.src_rows:,} rows")
        else:
            log(f"generating {self.db['src']} at scale {scale:g}")
            self.stage_gen(res, scale)
        if needs_dental:
            log(f"source {self.db['src']}: {len(self.src_tables)} tables, {self.src_rows:,} rows, "
                f"{self.src_mb:.1f} MB InnoDB data")
        do_replica = "replica" in self.stages or self.anchors_for("replica") or self.anchors_for("e2e")
        do_analytics = "analytics" in self.stages or self.anchors_for("analytics") or (
            self.anchors_for("e2e") and self.have_pgloader)
        if do_analytics or "e2e" in self.stages or "incremental" in self.stages:
            self.pg_recreate(self.db["dst"])
        for rep in range(1, self.a.reps + 1):
            if do_replica:
                self.stage_replica(res, rep)
            if do_analytics:
                self.ensure_replica(res)
                self.stage_analytics(res, rep)
            if "e2e" in self.stages:
                self.stage_e2e(res, rep)
            if "incremental" in self.stages:
                self.stage_incremental(res, rep)
            if "tiny" in self.stages and self.a.tiny_tables > 0:
                self.stage_tiny(res, rep)
            if "clinic" in self.stages:
                self.stage_clinic(res, rep)
            if "binlog" in self.stages:  # its own source server and data (bench/binlog_stage.py)
                import binlog_stage
                binlog_stage.stage_binlog(self, res, rep)
            if "clinics" in self.stages:  # issue 14: N clinics through etl-all (bench/clinics_stage.py)
                import clinics_stage

                clinics_stage.stage_clinics(self, res, rep)
        self.chain(res)
        return res


# ----------------------------------------------------------------------------- report
ORDER = [
    "generate (gen_dental)",
    "analytics: ours load_full", "analytics: native pipe", "analytics: pgloader",
    "replica: ours stream", "replica: ours server", "replica: mariadb-dump|mariadb", "replica: INSERT..SELECT postidx",
    "e2e: etl run --full-refresh", "e2e: chain postidx+pgloader",
    INCR_MUTATES["uniform"], INCR_RUN["uniform"], INCR_MUTATES["recent"], INCR_RUN["recent"],
]


def incr_ratio(res: Results, name: str) -> float | None:
    """Median over reps of (incremental run seconds / the same rep's full refresh seconds)."""
    it = res.get(name)
    full = it.detail.get("full_refresh_s") if it else None
    if not it or not full:
        return None
    return statistics.median(s / f for s, f in zip(it.seconds, full) if f)


def incr_names(res: Results) -> list[str]:
    return [n for n in res.items if n.startswith("incremental: etl run") and res.get(n)]


def ratio_text(res: Results, name: str) -> str:
    parts = []
    for ours, anchor, _goal in GOALS:
        if ours == name:
            r = res.ratio(ours, anchor)
            parts.append(f"{r:.2f}x {SHORT[anchor]}" if r is not None else f"- {SHORT[anchor]}")
    if name.startswith("tiny:"):
        it = res.get(name)
        if it:
            parts.append(f"goal < {TINY_GOAL_SECONDS:.0f}s")
    if name.startswith("incremental: etl run"):
        r = incr_ratio(res, name)
        if r is not None:
            parts.append(f"{r:.3f} of full refresh (goal < {INCR_GOAL:g})")
    if name in CLINIC_GOALS:
        r = incr_ratio(res, name)
        if r is not None:
            parts.append(f"{r:.3f} of the clinic full refresh (goal <= {CLINIC_GOALS[name]:g})")
    if name.startswith("binlog: "):
        import binlog_stage
        parts += binlog_stage.ratio_parts(res, name)
    return ", ".join(parts) if parts else ("(anchor)" if res.items[name].kind in ("anchor", "derived") else "-")


def render(res: Results, h: Harness, scale: float) -> str:
    names = [n for n in ORDER if res.get(n)] + [n for n in res.items if n not in ORDER and res.get(n)]
    reps = max((len(res.items[n].seconds) for n in names), default=0)
    head = (f"scale {scale:g}: {h.src_rows:,} source rows in {len(h.src_tables)} tables, {h.src_mb:.0f} MB InnoDB data; "
            f"{reps} rep(s), median seconds, max peak RSS")
    rows = [("stage", "rows", "seconds", "rows/s", "peak RSS MB", "ratio (anchor s / our s)", "data check")]
    for n in names:
        it = res.items[n]
        s = it.median
        rows.append((n, f"{it.rows:,}", f"{s:.1f}", f"{it.rows / s:,.0f}" if s else "-", f"{max(it.rss):.0f}",
                     ratio_text(res, n), it.check))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = ["<", ">", ">", ">", ">", "<", "<"]
    lines = [head]
    for j, r in enumerate(rows):
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    # goals
    goal_lines = []
    for ours, anchor, goal in GOALS:
        r = res.ratio(ours, anchor)
        if r is None:
            why = "anchor not run" if res.get(ours) else "not run"
            goal_lines.append(f"  {ours} vs {SHORT[anchor]}: goal >= {goal:g}x: {why}")
        else:
            goal_lines.append(f"  {ours} vs {SHORT[anchor]}: {r:.2f}x (goal >= {goal:g}x) "
                              f"{'MET' if r >= goal else 'MISSED'}")
    for n in names:
        if n.startswith("tiny:"):
            it = res.items[n]
            s = it.median
            stopped = " (stopped at --tiny-timeout: " + it.check + ")" if it.detail.get("timed_out") else ""
            goal_lines.append(f"  {n}: {s:.1f}s{stopped} (goal < {TINY_GOAL_SECONDS:.0f}s) "
                              f"{'MET' if s < TINY_GOAL_SECONDS and not stopped else 'MISSED'}")
    for n in incr_names(res):
        r = incr_ratio(res, n)
        it = res.items[n]
        full = statistics.median(it.detail["full_refresh_s"])
        goal_lines.append(f"  {n}: {it.median:.1f}s / full refresh {full:.1f}s = {r:.3f} (goal < {INCR_GOAL:g}) "
                          f"{'MET' if r < INCR_GOAL else 'MISSED'}")
    for n, goal in CLINIC_GOALS.items():
        r = incr_ratio(res, n)
        if r is not None:
            it = res.items[n]
            full = statistics.median(it.detail["full_refresh_s"])
            goal_lines.append(f"  {n}: {it.median:.1f}s / clinic full refresh {full:.1f}s = {r:.3f} (goal <= {goal:g}) "
                              f"{'MET' if r <= goal else 'MISSED'}")
    if len(incr_names(res)) > 1:
        goal_lines.append("  every incremental ratio divides by the same full refresh (the e2e row of the same rep); "
                          "the runs follow one another after it without a new full refresh, in the order shown, "
                          "each merging only its own churn")
    if not h.have_pgloader and "anchors" in h.stages:
        goal_lines.append("  pgloader: skipped (not installed; apt-get install -y pgloader)")
    lines += ["", "goals (same-run ratios):"] + goal_lines
    if any(n.startswith("binlog: ") for n in names):
        import binlog_stage
        lines += binlog_stage.report_lines(res)
    lines += render_checks(res, names)
    # our per-table timings
    for n in ("replica: ours stream", "replica: ours server", "analytics: ours load_full"):
        it = res.get(n)
        tabs = (it.detail.get("tables") or {}).get("tables") if it else None
        if not tabs:
            continue
        d = it.detail["tables"]
        lines += ["", f"{n}: per table (last rep; {WORKERS} threads, largest first; child start-up "
                      f"{d.get('startup_s', 0):.1f}s, work {d.get('work_s', 0):.1f}s)"]
        for t in tabs:
            rps = t["rows"] / t["seconds"] if t["seconds"] else 0
            lines.append(f"  {t['table']:<16} {t['rows']:>10,} rows {t['seconds']:7.1f}s {rps:>10,.0f} rows/s "
                         f"{t['chunks']:>4} chunks  start +{t['start_s']:.1f}s" + (f"  {'; '.join(t['notes'])}" if t['notes'] else ""))
    for n in names:
        etl = res.items[n].detail.get("etl")
        if not etl or not etl.get("tables"):
            continue
        tabs = etl["tables"]
        flow = etl.get("flow_seconds")
        wall = res.items[n].seconds[-1]
        parts = etl.get("startup_parts") or {}
        split = (f" (imports {parts['imports_s']:.1f} + temporary API server {parts['api_server_s']:.1f} + flow set-up "
                 f"{parts['flow_setup_s']:.1f})" if parts else "")
        head = (f"{n} (last rep): process {wall:.1f}s = Prefect start-up {etl['startup_s']:.1f}s{split} + flow "
                f"{flow:.1f}s + shutdown {etl['shutdown_s']:.1f}s" if flow else f"{n} (last rep): flow did not finish")
        if len(tabs) > 20:
            ts = sorted(t["table_s"] for t in tabs)
            starts = [t["start_offset_s"] for t in tabs]
            gap = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else 0
            total = etl.get("tables_total", len(tabs))
            lines += ["", head, f"  {etl.get('tables_ok', 0)} of {total} tables done; per table: work median "
                                f"{statistics.median(ts):.2f}s, max {ts[-1]:.2f}s; a new table starts every {gap:.2f}s"]
            continue
        lines += ["", head + "; per table from etl.table_runs:"] + render_etl_tables(tabs)
        if n.startswith("incremental:"):
            lines += render_incr_summary(res, n, tabs)
    # failures and notes
    extra = []
    for n in names:
        it = res.items[n]
        for note in it.notes:
            extra.append(f"  {n}: {note}")
        for chk in it.detail.get("check", []):
            for t in chk["tables"]:
                if not t["ok"]:
                    extra.append(f"  {n}: {chk['target']}.{t['table']}: rows {t['src_rows']}/{t['dst_rows']}: "
                                 + "; ".join(t["problems"][:5]))
    if extra:
        lines += ["", "notes and data check details:"] + extra
    return "\n".join(lines)


CHECK_LABEL = {
    "analytics: ours load_full": "load_full", "analytics: native pipe": "native", "analytics: pgloader": "pgloader",
    "replica: ours stream": "stream", "replica: ours server": "server", "replica: mariadb-dump|mariadb": "dump",
    "replica: INSERT..SELECT postidx": "postidx", "e2e: etl run --full-refresh": "e2e", INCR: "incr",
    INCR_RUN["recent"]: "incr-recent",
}


def render_etl_tables(tabs: list[dict]) -> list[str]:
    """One line per table of a pipeline run: mode, rows, and where its time went. `other` is the table's
    wall time minus its three phase timings: task/flow orchestration, and in an incremental run the
    delete check (tasks/sync.py runs it after the merge, outside analytics_seconds)."""
    out = []
    for t in tabs:
        rep_s, ana_s, ver_s = t["replica_s"] or 0, t["analytics_s"] or 0, t["verify_s"] or 0
        other = t["table_s"] - rep_s - ana_s - ver_s
        rows = t.get("analytics_rows") if t.get("analytics_rows") is not None else t["rows"]
        notes = "; ".join(n for n in (t.get("notes") or "").split("; ")
                          if n.startswith(("deletes checked", "mode:", "no primary key", "reloaded", "schema drift")))
        out.append(f"  {t['table']:<14} {t['priority'] or '':<8} {t.get('mode') or '':<11} {rows or 0:>10,} rows  "
                   f"starts +{t['start_offset_s']:6.1f}s  table {t['table_s']:6.1f}s = replica {rep_s:5.1f} + load "
                   f"{ana_s:5.1f} + verify {ver_s:4.1f} + other {other:5.1f}" + (f"  ({notes})" if notes else "")
                   + ("" if t["status"] == "ok" else f"  {t['status'].upper()}"))
    return out


def render_incr_summary(res: Results, name: str, tabs: list[dict]) -> list[str]:
    """Where an incremental run's time went: incremental vs full tables, and delete detection timed alone."""
    out = []
    etl = res.items[name].detail.get("etl") or {}
    full = (res.items[E2E].detail.get("etl") or {}) if E2E in res.items else {}
    if etl.get("flow_seconds") and full.get("flow_seconds"):
        out.append(f"  flow only (Prefect start-up and shutdown left out, last rep): {etl['flow_seconds']:.1f}s / full "
                   f"refresh flow {full['flow_seconds']:.1f}s = {etl['flow_seconds'] / full['flow_seconds']:.3f}")
    by_mode: dict[str, list[dict]] = {}
    for t in tabs:
        by_mode.setdefault(t.get("mode") or "?", []).append(t)
    for mode, ts in sorted(by_mode.items()):
        out.append(f"  {mode} tables: {len(ts)} ({', '.join(t['table'] for t in ts)}): "
                   f"{sum(t['analytics_rows'] or 0 for t in ts):,} rows, table time {sum(t['table_s'] for t in ts):.1f}s "
                   f"(replica {sum(t['replica_s'] or 0 for t in ts):.1f} + load {sum(t['analytics_s'] or 0 for t in ts):.1f} "
                   f"+ verify {sum(t['verify_s'] or 0 for t in ts):.1f} + other "
                   f"{sum(t['table_s'] - (t['replica_s'] or 0) - (t['analytics_s'] or 0) - (t['verify_s'] or 0) for t in ts):.1f})")
    it = res.items[name]
    for ch in it.detail.get("source_changes", [])[-1:]:
        out.append(f"  source churn this rep: procedurelog {ch.get('updated', 0):,} rows updated + "
                   f"{ch.get('inserted', 0):,} inserted")
    dd = res.get("incremental: delete detection alone")
    d = (dd.detail.get("tables") or {}) if dd else {}
    if d.get("tables") and name == incr_names(res)[-1]:  # it runs after the last incremental run
        dt = d["tables"]
        out.append(f"  delete detection timed alone afterwards (tasks/deletes.find_deleted_ranges, one table at a time): "
                   f"{sum(t['seconds'] for t in dt):.1f}s = source {sum(t['source_s'] for t in dt):.1f}s + replica "
                   f"{sum(t['replica_s'] for t in dt):.1f}s over {sum(t['rows'] for t in dt):,} rows, "
                   f"{sum(t['ranges'] for t in dt)} ranges:")
        for t in sorted(dt, key=lambda t: -t["seconds"]):
            out.append(f"    {t['table']:<14} {t['rows']:>10,} rows {t['ranges']:>4} ranges of {t['page']:,}  "
                       f"{t['seconds']:6.2f}s (source {t['source_s']:5.2f}s, replica {t['replica_s']:5.2f}s)  "
                       f"{t['differing']} differing")
    return out


def render_checks(res: Results, names: list[str]) -> list[str]:
    """Per table: source rows and CHECKSUM TABLE, and whether each copy matched (last rep)."""
    cols: list[tuple[str, dict]] = []
    for n in names:
        for chk in res.items[n].detail.get("check", []):
            if n in CHECK_LABEL and len(chk["tables"]) <= 50:
                suffix = "" if len(res.items[n].detail["check"]) == 1 else ("-repl" if chk["kind"] == "mysql" else "-pg")
                cols.append((CHECK_LABEL[n] + suffix, {t["table"]: t for t in chk["tables"]}))
    if not cols:
        return []
    tables = list(cols[0][1])
    src: dict[str, tuple] = {}
    for _, by in cols:
        for t, v in by.items():
            if t not in src or (v["compared"] == 0 and v["src_sum"]):
                src[t] = (v["src_rows"], v["src_sum"] if v["compared"] == 0 else src.get(t, (0, ""))[1])
    head = ["table", "source rows", "CHECKSUM TABLE"] + [c for c, _ in cols]
    rows = [head]
    for t in tables:
        r, cs = src.get(t, (None, ""))
        rows.append([t, f"{r:,}" if r is not None else "-", cs or "-"] +
                    [("ok" if by[t]["ok"] else "FAIL") if t in by else "-" for _, by in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = ["", "data check per table (last rep): count + CHECKSUM TABLE for MySQL copies, count + column "
               "aggregates/MD5 sums for PG copies"]
    for j, r in enumerate(rows):
        out.append("  " + "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))))
    return out


def render_rss(all_res: dict[float, Results]) -> str:
    scales = list(all_res)
    names = []
    for res in all_res.values():
        names += [n for n in res.items if n not in names and res.get(n) and res.items[n].kind != "derived"]
    lines = ["peak RSS MB by scale (does memory grow with the data?)",
             f"{'stage':<34}" + "".join(f"{'scale ' + format(s, 'g'):>12}" for s in scales)]
    for n in names:
        cells = []
        for s in scales:
            it = all_res[s].get(n)
            cells.append(f"{max(it.rss):>12.0f}" if it else f"{'-':>12}")
        lines.append(f"{n:<34}" + "".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- child: our stages
def child_main(a: argparse.Namespace) -> int:
    """One of our stages in this (child) process: every table, WORKERS threads, largest table first."""
    import concurrent.futures as cf

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from config.models import PipelineConfig, TableConfig
    from tasks import analytics_full, replica_full
    from tasks.connections import EngineUrls, open_engines
    from tasks.discovery import discover_tables
    from tasks.job import build_job, read_job
    from tasks.mysql_schema import list_base_tables, read_table_schema

    startup = time.monotonic() - _T_START
    replica = a.child == "replica"
    urls = EngineUrls(source=f"{a.mysql_url.rstrip('/')}/{a.src}", replica=f"{a.mysql_url.rstrip('/')}/{a.repl}",
                      analytics=f"{a.pg_url.rstrip('/')}/{a.dst}")
    read_db = a.src if replica else a.repl
    t0 = time.monotonic()
    out: list[dict] = []
    with open_engines(urls, workers=a.workers) as engines:
        with (engines.source if replica else engines.replica).connect() as conn:
            found = {t.name: t for t in discover_tables(conn, read_db)}
            sizes = {i.name: i.data_length for i in list_base_tables(conn, read_db)}
        wanted = [t for t in (a.child_tables.split(",") if a.child_tables else found) if t]
        names = [t for t in wanted if not t.startswith("_etl")]
        cfg = PipelineConfig(tables={n: TableConfig(primary_key=list(found[n].primary_key),
                                                    estimated_rows=found[n].estimated_rows) for n in names})
        order = sorted(names, key=lambda n: -sizes.get(n, 0))

        def one(name: str) -> dict:
            table = cfg.resolve(name)
            ts = time.monotonic()
            if replica:
                job = build_job(engines, table, source_db=a.src, replica_db=a.repl)
                st = replica_full.copy_full(engines, job, method=a.method)
            else:
                # The analytics leg alone: the replica stands in for the source (it may be gone by now),
                # so the job's facts are read from the replica's table, which is what is loaded.
                with engines.replica.connect() as rc:
                    job = read_job(rc, table, source_db=a.repl, replica_db=a.repl, pg_schema=a.schema)
                    schema = read_table_schema(rc, a.repl, name)
                st = analytics_full.load_full(engines, job, schema=schema)
            print(f"{name}: {st.rows} rows in {st.seconds:.2f}s ({st.chunks} chunks) {'; '.join(st.notes)}", flush=True)
            return dict(table=name, rows=st.rows, seconds=round(st.seconds, 3), chunks=st.chunks, bytes=st.bytes,
                        start_s=round(ts - t0, 2), notes=st.notes)

        with cf.ThreadPoolExecutor(a.workers) as ex:
            futs = [ex.submit(one, n) for n in order]
            for f in futs:
                out.append(f.result())
    work = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    Path(a.out).write_text(json.dumps({"stage": a.child, "method": a.method, "startup_s": round(startup, 2),
                                       "work_s": round(work, 2), "rss_mb": round(ru.ru_maxrss / 1024, 1),
                                       "tables": out}, indent=1))
    print(f"{a.child}: {sum(t['rows'] for t in out)} rows, start-up {startup:.1f}s, work {work:.1f}s, "
          f"peak RSS {ru.ru_maxrss / 1024:.0f} MB")
    return 0


class _TimedCursor:
    """A DB-API cursor that adds up the seconds spent in its execute and fetch calls."""

    def __init__(self, cur) -> None:  # noqa: ANN001
        self._cur = cur
        self.seconds = 0.0
        self.queries = 0

    def _timed(self, fn, *args):  # noqa: ANN001, ANN202
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.seconds += time.monotonic() - t0

    def execute(self, sql: str, params=None):  # noqa: ANN001, ANN201
        self.queries += 1
        return self._timed(self._cur.execute, sql, params)

    def fetchone(self):  # noqa: ANN201
        return self._timed(self._cur.fetchone)

    def fetchall(self):  # noqa: ANN201
        return self._timed(self._cur.fetchall)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._cur, name)


def child_deletes(a: argparse.Namespace) -> int:
    """Delete detection alone, as `etl run` does it for each incremental table with `deletes: detect`
    (tasks.deletes.find_deleted_ranges: per key range COUNT + BIT_XOR(CRC32(key)) on replica and
    source, same page size as tasks/sync.py uses), one table after another, timed per table and per side.
    Reads only; it deletes nothing."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from config.models import load_pipeline_config
    from tasks import deletes
    from tasks.connections import EngineUrls, open_engines
    from tasks.identifiers import mysql_qualified

    cfg = load_pipeline_config(a.config)
    urls = EngineUrls(source=f"{a.mysql_url.rstrip('/')}/{a.src}", replica=f"{a.mysql_url.rstrip('/')}/{a.repl}",
                      analytics=f"{a.pg_url.rstrip('/')}/postgres")
    out: list[dict] = []
    t_all = time.monotonic()
    with open_engines(urls, workers=1, create_replica=False) as engines:
        for t in cfg.resolved_tables(None):
            if t.mode != "incremental" or t.deletes != "detect" or not t.primary_key:
                continue
            page = max(t.batch_size, 10_000)  # as tasks/sync.py _propagate_deletes
            with engines.source.connect() as sc, engines.replica.connect() as rc:
                scur = _TimedCursor(sc.connection.driver_connection.cursor())
                rcur = _TimedCursor(rc.connection.driver_connection.cursor())
                t0 = time.monotonic()
                differing, result = deletes.find_deleted_ranges(
                    scur, rcur, mysql_qualified(a.src, t.name), mysql_qualified(a.repl, t.name),
                    tuple(t.primary_key), page)
                secs = time.monotonic() - t0
                sc.rollback()
                rc.rollback()
            out.append(dict(table=t.name, rows=result.replica_rows, ranges=result.ranges, page=page,
                            differing=len(differing), seconds=round(secs, 3), source_s=round(scur.seconds, 3),
                            replica_s=round(rcur.seconds, 3), queries=scur.queries + rcur.queries))
            print(f"{t.name}: {result.replica_rows} rows, {result.ranges} ranges of {page}, {len(differing)} differing, "
                  f"{secs:.2f}s (source {scur.seconds:.2f}s, replica {rcur.seconds:.2f}s)", flush=True)
    Path(a.out).write_text(json.dumps({"stage": "deletes", "work_s": round(time.monotonic() - t_all, 2),
                                       "startup_s": round(t_all - _T_START, 2), "tables": out}, indent=1))
    return 0


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="dataset scale (1 = ~3M rows; default 1)")
    ap.add_argument("--scales", help="comma list, e.g. 1,4: run everything at each scale and compare peak RSS "
                                     "(scale 4 = ~12M rows: generation alone takes a few minutes)")
    ap.add_argument("--stages", default=None,
                    help=f"comma list of {','.join(ALL_STAGES)} (default all); 'anchors' runs the anchors of the "
                         f"chosen stages")
    ap.add_argument("--no-gen", action="store_true", help="reuse the existing bench_src")
    ap.add_argument("--reps", type=int, default=1, help="runs of each item; the table shows medians")
    ap.add_argument("--tiny-tables", type=int, default=400, help="tables of 10 rows for the 'tiny' stage (0 = skip)")
    ap.add_argument("--tiny-timeout", type=float, default=90,
                    help="stop the 'tiny' run after this many seconds (1.5x its 60 s goal; default 90) and "
                         "report how many tables it loaded")
    ap.add_argument("--incremental", action="store_true",
                    help="run the incremental 1%% churn stage (alone, unless --stages is given: then added to it)")
    ap.add_argument("--incr-pct", type=float, default=1.0,
                    help="incremental stage: percent of procedurelog updated and inserted (default 1)")
    ap.add_argument("--incr-deletes-every", type=int, default=0, metavar="N",
                    help="incremental stage: one more churn + `etl run` whose config sets deletes_every: N (> 2 + the "
                         "number of spreads, e.g. >= 4 with --incr-spread both), "
                         "so delete detection is not due on that run; 0 (default) skips it")
    ap.add_argument("--incr-spread", choices=(*INCR_SPREADS, "both"), default="both",
                    help="incremental stage: which procedurelog rows the 1%% churn updates: uniform = every 100th "
                         "key (every page), recent = every 5th key of the newest 5%%, both (default) = uniform, "
                         "then recent right after it; each gets its own row and ratio against the same full refresh")
    ap.add_argument("--prefect-api-url", help="run `etl run` against this running Prefect server (e.g. "
                                              "http://127.0.0.1:4200/api from `prefect server start`) instead of "
                                              "a temporary one per run; say so when you quote the figures")
    ap.add_argument("--binlog-prefect-api-url", help="binlog stage: also run a third churn's binlog and timestamp "
                                                     "`etl run` against this running Prefect server (`make server`), "
                                                     "beside the temporary-API runs")
    ap.add_argument("--clinic-scale", type=float, default=1.0,
                    help="clinic stage: bench/gen_clinic.py scale (1 = 450 tables, ~1.7M rows; default 1)")
    ap.add_argument("--no-pgloader", action="store_true", help="skip the pgloader anchor")
    import clinics_stage

    clinics_stage.add_args(ap)
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK", "/tmp/bench-etl"), help="logs, results, configs")
    ap.add_argument("--prefix", default="bench", help="database name prefix (must start with 'bench'; default bench)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed for one measured run")
    ap.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL, help="MariaDB server URL (no database)")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server URL (no database)")
    # child mode (used by the harness itself)
    ap.add_argument("--child", choices=["replica", "analytics", "deletes"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="stream", help=argparse.SUPPRESS)
    ap.add_argument("--src", default="bench_src", help=argparse.SUPPRESS)
    ap.add_argument("--repl", default="bench_repl", help=argparse.SUPPRESS)
    ap.add_argument("--dst", default="bench_dst", help=argparse.SUPPRESS)
    ap.add_argument("--schema", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=WORKERS, help=argparse.SUPPRESS)
    ap.add_argument("--child-tables", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stages is None:
        a.stages = "incremental" if a.incremental else ",".join(ALL_STAGES)
    a.stages = ["incremental" if s.strip() == "incr" else s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in a.stages if s not in ALL_STAGES]
    if bad:
        ap.error(f"unknown stage {bad[0]!r}; choose from {', '.join(ALL_STAGES)}")
    if a.incremental and "incremental" not in a.stages:
        a.stages.append("incremental")
    a.incr_spreads = INCR_SPREADS if a.incr_spread == "both" else (a.incr_spread,)
    nth = len(a.incr_spreads) + 1  # that run follows one incremental run per spread: run_count + 1 = nth
    if a.incr_deletes_every and a.incr_deletes_every <= nth:
        ap.error(f"--incr-deletes-every must be 0 or > {nth} with --incr-spread {a.incr_spread} (that run is incremental "
                 f"run {nth} after the full refresh; with N <= {nth} delete detection could be due on it)")
    a.scale_list = [float(s) for s in a.scales.split(",")] if a.scales else [a.scale]
    if not a.prefix.startswith("bench") or not a.prefix.replace("_", "").isalnum():
        ap.error("--prefix must start with 'bench' and hold only letters, digits and _")
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child == "deletes":
        return child_deletes(a)
    if a.child:
        return child_main(a)
    h = Harness(a)
    lock = open(h.work / f"{a.prefix}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another benchmark run holds {h.work / (a.prefix + '.lock')}; timings would overlap", file=sys.stderr)
        return 2
    if "anchors" in h.stages and not h.have_pgloader and not a.no_pgloader:
        log("pgloader not installed: its anchor is skipped (apt-get install -y pgloader)")
    all_res: dict[float, Results] = {}
    ok = True
    for i, scale in enumerate(a.scale_list):
        if i > 0:
            a.no_gen = False
        res = h.run_scale(scale)
        all_res[scale] = res
        text = render(res, h, scale)
        print("\n" + text + "\n", flush=True)
        (h.work / f"summary_{h.tag}.txt").write_text(text + "\n")
        (h.work / f"results_{h.tag}.json").write_text(json.dumps(
            {"scale": scale, "source_rows": h.src_rows, "source_mb": round(h.src_mb, 1),
             "items": {n: dict(kind=it.kind, seconds=it.seconds, median=it.median, rss_mb=it.rss, rows=it.rows,
                               ok=it.ok, checks=it.checks, notes=it.notes, detail=it.detail)
                       for n, it in res.items.items()},
             "ratios": {**{f"{o} vs {an}": res.ratio(o, an) for o, an, _ in GOALS},
                        **{f"{n} / full refresh": incr_ratio(res, n) for n in incr_names(res)}}}, indent=1, default=str))
        ok = ok and all(it.ok for it in res.items.values())
    if len(all_res) > 1:
        print(render_rss(all_res) + "\n")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"harness process peak RSS {rss:.0f} MB; logs and results in {h.work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
