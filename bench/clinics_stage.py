"""The `clinics` bench stage (issue 14): N copies of the demo clinic through `etl-all` on one machine.

    python bench/run.py --stages clinics                          # N = 1, 4, 8; a Prefect server + 2 workers
    python bench/run.py --stages clinics --clinics-counts 1,2 --clinics-mode local   # in process, no server

For each N the clinics bench_clinics_c01..cNN (copies of one demo clinic, bench/gen_dental.py at
--clinics-scale) are loaded with `etl run --full-refresh` under ETL_SOURCES into one warehouse
(PostgreSQL bench_clinics_dst, schemas raw_c01..., union raw_all), from empty replicas:

- `workers` (default): a throwaway Prefect server on PostgreSQL (tests/deploy/prefect_server.py, the
  deployment tests' helper, stopped by PID), prefect.yaml deployed to a process pool and 2 workers, each
  running one flow run at a time (--clinics-worker-limit). `etl run --blocks --dispatch deployment
  --max-sources N` runs etl-all in the harness's child and every clinic as a run of etl-pipeline/clinic
  on the pool, so at most 2 clinics load at once.
- `local`: `etl run --full-refresh --max-sources 2` (etl-all with dispatch=local: 2 clinics at once in
  one process, a temporary Prefect API).

Measured per N: the etl-all process's wall time and peak RSS, wall time per clinic (total / N), each
clinic's own run time (etl.pipeline_runs), and, sampled every 0.25 s from information_schema.PROCESSLIST,
the peak number of connections whose current database is each clinic's source (what
ETL_MAX_SOURCE_QUERIES caps) and the server's peak Threads_connected. Every clinic's replica and
analytics copy is checked against its source (bench/verify.py), like every other stage.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = "clinics"
WAREHOUSE = "clinics_dst"  # bench_<...> database names (the harness's prefix)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--clinics-counts", default="1,4,8", help="clinics stage: numbers of clinics (default 1,4,8)")
    ap.add_argument("--clinics-scale", type=float, default=0.02,
                    help="clinics stage: gen_dental scale of each clinic (default 0.02, the `make demo` clinic)")
    ap.add_argument("--clinics-mode", choices=["workers", "local"], default="workers",
                    help="clinics stage: workers = Prefect server + 2 workers (clinics as deployment runs); "
                         "local = etl-all in one process, 2 clinics at once")
    ap.add_argument("--clinics-worker-limit", type=int, default=1,
                    help="clinics stage, workers mode: flow runs per worker at a time (default 1)")


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def _name(i: int) -> str:
    return f"c{i:02d}"


class Sampler(threading.Thread):
    """Peak connections per current database (PROCESSLIST.DB) and peak Threads_connected, every 0.25 s."""

    def __init__(self, connect, databases: list[str]) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.connect, self.databases = connect, databases
        self.peak: dict[str, int] = {db: 0 for db in databases}
        self.threads_peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                marks = ", ".join(["%s"] * len(self.databases))
                while not self._halt.is_set():
                    cur.execute(f"SELECT DB, COUNT(*) FROM information_schema.PROCESSLIST WHERE DB IN ({marks}) "
                                "GROUP BY DB", self.databases)
                    for db, n in cur.fetchall():
                        self.peak[db] = max(self.peak[db], int(n))
                    cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                    self.threads_peak = max(self.threads_peak, int(cur.fetchone()[1]))
                    self.samples += 1
                    self._halt.wait(0.25)
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def make_clinics(h, n: int, scale: float) -> list[str]:  # noqa: ANN001 - bench/run.py Harness
    """bench_clinics_c01 generated once (gen_dental), c02..cNN copied from it on the server."""
    from verify import source_tables

    first = h._owned(f"{h.a.prefix}_clinics_{_name(1)}")
    have = h.my_exec(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{first}'")[0][0]
    if not have or not h.a.no_gen:
        h.my_drop(first)
        t0 = time.monotonic()
        import gen_dental

        gen_dental.generate(h.url_my(first), scale, jobs=2)
        log(f"generated {first} at scale {scale:g} in {time.monotonic() - t0:.1f}s")
    my = h.my()
    try:
        tables = source_tables(my, first)
    finally:
        my.close()
    for i in range(2, n + 1):
        db = h._owned(f"{h.a.prefix}_clinics_{_name(i)}")
        exists = h.my_exec(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}'")[0][0]
        if exists == len(tables) and h.a.no_gen:
            continue
        h.my_drop(db)
        stmts = [f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4"]
        for t in tables:
            stmts += [f"CREATE TABLE `{db}`.`{t}` LIKE `{first}`.`{t}`",
                      f"INSERT INTO `{db}`.`{t}` SELECT * FROM `{first}`.`{t}`"]
        h.my_exec(stmts)
    return tables


def write_sources(h, n: int, config: Path) -> Path:  # noqa: ANN001
    lines = ["version: 1", "sources:"]
    for i in range(1, n + 1):
        src = f"{h.a.prefix}_clinics_{_name(i)}"
        lines += [f"  - name: {_name(i)}", f"    source_url: {h.url_my(src)}",
                  f"    replica_url: {h.url_my(src + '_rep')}", f"    config: {config}"]
    path = h.work / f"clinics_{n}.sources.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Stack:
    """workers mode: the deployment tests' throwaway server + workers (stopped by PID), on bench_clinics_prefect."""

    def __init__(self, h, sources_path: Path) -> None:  # noqa: ANN001
        self.h, self.sources_path = h, sources_path
        self.db = h._owned(f"{h.a.prefix}_clinics_prefect")
        self.stack = None

    def __enter__(self):  # noqa: ANN204
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.deploy.prefect_server import PrefectStack

        h = self.h
        h.pg_recreate(self.db)
        db_url = h.url_pg(self.db).replace("+psycopg2", "+asyncpg", 1)
        t0 = time.monotonic()
        self.stack = s = PrefectStack.start(h.work / "clinics-prefect", db_url=db_url, pool="bench-clinics")
        s.prefect("block", "register", "-m", "prefect_sqlalchemy")
        s.prefect("work-pool", "create", s.pool, "--type", "process", "--overwrite")
        s.prefect("--no-prompt", "deploy", "--all", timeout=300, env={
            "ETL_WORK_POOL": s.pool, "ETL_IMAGE": "unused-by-process-pools", "ETL_CODE_DIR": str(ROOT)})
        for _ in range(2):
            s.start_worker(env={"ETL_SOURCES": str(self.sources_path)}, limit=h.a.clinics_worker_limit, wait=False)
        s.wait_for_workers(120)
        log(f"clinics: Prefect server, deployments and 2 workers ready in {time.monotonic() - t0:.1f}s")
        return self

    def register_blocks(self, source_db: str) -> None:
        """etl-source/-replica/-analytics: the deployments' default blocks; clinics read only analytics."""
        h = self.h
        self.stack.run([sys.executable, "-m", "flows.cli", "blocks", "register"], env={
            "ETL_SOURCE_URL": h.url_my(source_db), "ETL_REPLICA_URL": h.url_my(source_db + "_rep"),
            "ETL_ANALYTICS_URL": h.url_pg(h._owned(f"{h.a.prefix}_{WAREHOUSE}"))})

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        try:
            if self.stack is not None:
                self.stack.stop()
        finally:
            self.h.pg_exec("postgres", f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def stage_clinics(h, res, rep: int) -> None:  # noqa: ANN001 - bench/run.py Harness, Results
    from verify import clear_cache

    clear_cache()
    counts = sorted({int(x) for x in h.a.clinics_counts.split(",") if x.strip()})
    tables = make_clinics(h, max(counts), h.a.clinics_scale)
    first = f"{h.a.prefix}_clinics_{_name(1)}"
    rows = h.count_rows(first, tables)
    log(f"clinics: {max(counts)} copies of {first} ({len(tables)} tables, {rows:,} rows each); "
               f"mode {h.a.clinics_mode}")
    config = h.work / "clinics.tables.yml"
    h.discover(first, config)
    dst = h._owned(f"{h.a.prefix}_{WAREHOUSE}")
    sources_path = h.work / "clinics.sources.yml"  # the workers' ETL_SOURCES; rewritten for each N
    mode = h.a.clinics_mode
    if mode == "workers":
        with Stack(h, sources_path) as stack:
            h.pg_recreate(dst)
            stack.register_blocks(first)
            for n in counts:
                run_one(h, res, rep, n, tables, rows, config, sources_path, stack)
    else:
        for n in counts:
            run_one(h, res, rep, n, tables, rows, config, sources_path, None)


def run_one(h, res, rep: int, n: int, tables: list[str], rows: int, config: Path, sources_path: Path,  # noqa: ANN001
            stack) -> None:  # noqa: ANN001
    from verify import check_mysql, check_pg

    dst = f"{h.a.prefix}_{WAREHOUSE}"
    sources_path.write_text(write_sources(h, n, config).read_text(), encoding="utf-8")
    names = [_name(i) for i in range(1, n + 1)]
    srcs = [f"{h.a.prefix}_clinics_{c}" for c in names]
    for s in srcs:
        h.my_drop(s + "_rep")
    if stack is None:
        h.pg_recreate(dst)
    else:  # the blocks point at the warehouse: keep the database, empty it
        schemas = h.pg_exec(dst, "SELECT nspname FROM pg_namespace WHERE nspname = 'etl' OR nspname LIKE 'raw\\_%'")
        if schemas:
            h.pg_drop_schema(dst, *[r[0] for r in schemas])
    env = h.etl_env(srcs[0], srcs[0] + "_rep", dst, config)
    env["ETL_SOURCES"] = str(sources_path)
    env.pop("ETL_SOURCE_URL"), env.pop("ETL_REPLICA_URL")
    cmd = h.etl_cmd() + ["run", "--full-refresh", "--no-dbt"]
    if stack is None:
        h.prefect_warmup(env)
        cmd += ["--max-sources", "2"]
    else:
        env = {**stack.stack.env, "ETL_SOURCES": str(sources_path)}
        cmd += ["--blocks", "--dispatch", "deployment", "--max-sources", str(n)]

    def twice(fn, *args, **kw):  # noqa: ANN001, ANN202
        # Retries: on the shared box MariaDB has lost the temporary files of the checks' queries in /tmp
        # ("Error on delete of '/tmp/#sql-temptable-...'", errno 6), which says nothing about the copy.
        for attempt in range(4):
            try:
                return fn(*args, **kw)
            except Exception as e:  # noqa: BLE001
                if attempt == 3 or "sql-temptable" not in str(e):
                    raise
                log(f"clinics: check of {args[0]} hit {str(e).splitlines()[0][:100]}; again")
                time.sleep(2)

    def check() -> list:
        out = []
        for c, s in zip(names, srcs):
            out += [twice(check_mysql, s, s + "_rep", mysql_url=h.a.mysql_url, tables=tables),
                    twice(check_pg, s, dst, f"raw_{c}", mysql_url=h.a.mysql_url, pg_url=h.a.pg_url, tables=tables)]
        return out

    sampler = Sampler(h.my, srcs)
    sampler.start()
    try:
        it = h.run_item(res, f"clinics: etl-all {n} clinic{'s' if n > 1 else ''} ({h.a.clinics_mode})", "ours",
                        cmd, env=env, check=check, rep=rep)
    finally:
        sampler.stop()
    it.rows = rows * n
    runs = h.pg_exec(dst, "SELECT source, status, EXTRACT(EPOCH FROM ended_at - started_at), worker "
                          "FROM etl.pipeline_runs ORDER BY source")
    per_clinic = {r[0]: float(r[2] or 0) for r in runs}
    workers = sorted({(r[3] or "").split("@")[0] for r in runs})
    peaks = sampler.peak
    total = it.seconds[-1]
    detail = dict(clinics=n, seconds=total, per_clinic_wall=total / n, clinic_run_seconds=per_clinic,
                  statuses={r[0]: r[1] for r in runs}, workers=workers, peak_source_connections=peaks,
                  peak_threads_connected=sampler.threads_peak, samples=sampler.samples,
                  union_rows=_union_rows(h, dst, n))
    it.detail.setdefault("clinics", []).append(detail)
    med = statistics.median(per_clinic.values()) if per_clinic else 0.0
    it.notes.append(
        f"rep {rep}: {n} clinic(s) x {rows:,} rows: {total:.1f}s = {total / n:.1f}s per clinic; each clinic's run "
        f"median {med:.1f}s (min {min(per_clinic.values(), default=0):.1f}, max {max(per_clinic.values(), default=0):.1f}); "
        f"peak source connections per clinic {max(peaks.values(), default=0)} (all: {sorted(set(peaks.values()))}); "
        f"peak Threads_connected {sampler.threads_peak}; workers {', '.join(workers)}")
    log(it.notes[-1])


def _union_rows(h, dst: str, n: int) -> int | None:  # noqa: ANN001
    try:
        return int(h.pg_exec(dst, "SELECT count(*) FROM raw_all.procedurelog")[0][0])
    except Exception:  # noqa: BLE001 - reported as missing
        return None
