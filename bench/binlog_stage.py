"""The bench's binlog stage (issue 13): 1% churn, a binlog run against the timestamp-incremental run.

    python bench/run.py --scale 1 --stages binlog          # or part of `make bench` (every stage)

The machine's MariaDB has no binary log, so the stage starts a server of its own with binary
logging on (tests/binlog_server.py, the binlog tests' starter; 256 MB buffer pool) and generates the
dental dataset there (`<prefix>_bl_src`, bench/gen_dental.py; the log of the generation is reset,
nobody reads it). The replica and analytics copies are on the machine's servers, as production's
would be on other hosts than the source. Then, per rep:

1. two full refreshes of the same source: the config `etl discover` writes for a source without a
   binary log (incremental where a server-maintained timestamp exists, else checksum mode: what the
   incremental stage uses) into `<prefix>_bl_ts_repl` / PG `<prefix>_bl_ts_dst`, and the config it
   writes here (binlog mode for every keyed table) into `<prefix>_bl_repl` / `<prefix>_bl_dst`;
2. `gen_dental.mutate` (1% of procedurelog updated, 1% inserted; uniform spread);
3. `etl run` in binlog mode, then `etl run` with the timestamp config, each timed (Prefect start-up
   included, as every `etl run` row of the harness) and checked against the source (counts and
   CHECKSUM TABLE for the replica, count + column aggregates for PostgreSQL);
4. the same churn again, then both runs through the plain runner (tasks/run.run_pipeline, what the
   flows wrap; no Prefect), timed and checked the same way.

Ratio: each `etl run`'s seconds / the same rep's full refresh with the timestamp config (goal for
binlog mode: <= 0.03); each plain run's seconds / that full refresh's flow seconds (its time without
Prefect's start-up). Production's work per run is read from the source server's own counters (SHOW
GLOBAL STATUS before and after, on one monitoring connection held across the run; nothing else uses
that server): connections opened, SELECT statements, rows read from its tables (Rows_read), rows and
bytes sent, rows of its temporary tables (information_schema queries).
"""
from __future__ import annotations

import atexit
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = "binlog: etl run --full-refresh (timestamp config)"
FULL_BL = "binlog: etl run --full-refresh (binlog config)"
GEN = "binlog: generate (gen_dental) on the binlog server"
MUTATE = "binlog: mutate 1% uniform"
RUN_BL = "binlog: etl run, binlog mode (1% uniform)"
RUN_TS = "binlog: etl run, timestamp incremental (1% uniform)"
MUTATE2 = "binlog: mutate 1% uniform again"
PLAIN_BL = "binlog: plain run, binlog mode (1% uniform)"
PLAIN_TS = "binlog: plain run, timestamp incremental (1% uniform)"
MUTATE3 = "binlog: mutate 1% uniform, third"
SRV_BL = "binlog: etl run on a Prefect server, binlog mode (1% uniform)"
SRV_TS = "binlog: etl run on a Prefect server, timestamp (1% uniform)"
GOAL = 0.03  # binlog run seconds / the same rep's full refresh seconds
RUNS = (RUN_BL, RUN_TS)
PLAIN = (PLAIN_BL, PLAIN_TS)
SERVER = (SRV_BL, SRV_TS)  # --binlog-prefect-api-url: the same runs against a running Prefect server
# Server counters read around each run: what production served. Rows_read: rows read from base
# tables (MariaDB's own counter; Rows_tmp_read are the server's temporary tables, e.g. for
# information_schema), Rows_sent: rows returned to clients.
COUNTERS = ("Connections", "Com_select", "Rows_read", "Rows_sent", "Rows_tmp_read", "Bytes_sent",
            "Com_show_status")
# The pipeline without Prefect (tasks/run.run_pipeline, what the flows wrap): the run's own work.
PLAIN_CODE = ("import sys\nfrom config.models import load_pipeline_config\nfrom config.settings import Settings\n"
              "from tasks.run import run_pipeline\ns = Settings()\nr = run_pipeline(s, load_pipeline_config(s.config))\n"
              "sys.exit(1 if r.failed else 0)\n")

_servers: dict[int, Any] = {}  # id(harness) -> BinlogServer, kept across reps


def _server(h: Any) -> Any:
    from tests import binlog_server

    s = _servers.get(id(h))
    if s is None:
        if not binlog_server.available():
            raise SystemExit("binlog stage: mariadbd is not installed")
        s = _servers[id(h)] = binlog_server.start(buffer_pool="256M", log_file_size="256M", prefix="bench-binlog-")
        atexit.register(s.stop)
    return s


def _names(h: Any) -> dict[str, str]:
    p = h.a.prefix
    return dict(src=f"{p}_bl_src", ts_repl=f"{p}_bl_ts_repl", ts_dst=f"{p}_bl_ts_dst", repl=f"{p}_bl_repl",
                dst=f"{p}_bl_dst")


def status(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS")
        rows = cur.fetchall()
    out = {}
    for k, v in rows:
        try:
            out[str(k)] = int(v)
        except (TypeError, ValueError):
            pass
    return out


def work_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counter deltas of a run, less the monitoring connection's own SHOW GLOBAL STATUS."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    d["Com_show_status"] -= 1
    return d


def _env(h: Any, server: Any, src: str, repl: str, dst: str, config: Path) -> dict:
    env = h.etl_env(src, repl, dst, config)
    env["ETL_SOURCE_URL"] = f"{server.url}/{src}"
    return env


def _discover(h: Any, env: dict, config: Path, *, binlog: bool) -> None:
    """`etl discover`; without `binlog`, what it writes for a source that has no binary log (the
    blockers check is answered 'off', everything else is discover's own choice)."""
    code = ("import sys\nfrom tasks import discovery\n"
            + ("" if binlog else "discovery.binlog_blockers = lambda conn: ['bench: as if the log were off']\n")
            + f"from flows.cli import main\nsys.exit(main(['discover', '--output', {str(config)!r}]))\n")
    p = subprocess.run([h.py, "-c", code], env=env, cwd=str(ROOT), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"binlog stage: etl discover failed: {p.stderr.strip()[-500:]}")


def _check(h: Any, server: Any, src: str, repl: str, dst: str, tables: list[str]):  # noqa: ANN202
    """Source (binlog server) vs replica (machine's server): counts and CHECKSUM TABLE; vs PostgreSQL:
    count + column aggregates (bench/verify.py)."""
    from verify import CheckResult, TableCheck, check_pg, mysql_connect, mysql_counts_checksums

    def run() -> list:
        s, r = mysql_connect(server.url), h.my()
        try:
            a = mysql_counts_checksums(s, src, tables, cache=True, connect=lambda: mysql_connect(server.url))
            b = mysql_counts_checksums(r, repl, tables, connect=h.my)
        finally:
            s.close()
            r.close()
        checks = []
        for t in tables:
            (sn, ss), (dn, ds) = a[t], b[t]
            c = TableCheck(t, sn, dn if dn >= 0 else None, str(ss), str(ds))
            if dn < 0:
                c.problems.append("table missing")
            elif sn != dn:
                c.problems.append(f"rows {sn} != {dn}")
            elif ss != ds:
                c.problems.append(f"CHECKSUM TABLE {ss} != {ds}")
            checks.append(c)
        return [CheckResult("mysql", repl, checks),
                check_pg(src, dst, "raw", mysql_url=server.url, pg_url=h.a.pg_url, tables=tables)]
    return run


def _timed_run(h: Any, res: Any, name: str, server: Any, args: list[str], env: dict, check, dst: str,  # noqa: ANN001
               rep: int) -> Any:
    """`etl <args>` (or with args None the plain runner), timed, checked, with the source's counters."""
    cmd = h.etl_cmd() + args if args is not None else [h.py, "-c", PLAIN_CODE]
    mon = server.connect()
    after: list[dict[str, int]] = []

    def counted_then_checked() -> list:  # the counters end with the run, before the check reads the source
        after.append(status(mon))
        return check()
    try:
        before = status(mon)
        it = h.run_item(res, name, "ours", cmd, env=env, check=counted_then_checked, rep=rep)
        if not after:  # the run failed: no check
            after.append(status(mon))
    finally:
        mon.close()
    it.detail.setdefault("work", []).append(work_between(before, after[0]))
    it.detail["etl"] = etl = h.etl_tables(dst, it.detail["wall"], it.detail["log"])
    it.detail.setdefault("flow_s", []).append(etl.get("flow_seconds"))
    return it


def stage_binlog(h: Any, res: Any, rep: int) -> None:
    from verify import clear_cache, mysql_connect, source_tables

    server = _server(h)
    n = _names(h)
    scale = float(h.tag.removeprefix("scale") or 1)
    try:
        if rep == 1:
            clear_cache()
            it = h.run_item(res, GEN, "gen", [h.py, str(ROOT / "bench" / "gen_dental.py"), "--url",
                                                f"{server.url}/{n['src']}", "--scale", f"{scale:g}"])
            if not it.ok:
                raise SystemExit(f"binlog stage: gen_dental failed: {it.notes}")
            server.sql(None, "RESET MASTER")  # nobody reads the generation's log; the runs start after it
        my = mysql_connect(server.url)
        try:
            tables = source_tables(my, n["src"])
        finally:
            my.close()
        rows = _count(server, n["src"], tables)
        cfg_ts, cfg_bl = h.work / f"{h.tag}.binlog.ts.tables.yml", h.work / f"{h.tag}.binlog.bl.tables.yml"
        env_ts = _env(h, server, n["src"], n["ts_repl"], n["ts_dst"], cfg_ts)
        env_bl = _env(h, server, n["src"], n["repl"], n["dst"], cfg_bl)
        _discover(h, env_ts, cfg_ts, binlog=False)
        _discover(h, env_bl, cfg_bl, binlog=True)
        h.prefect_warmup(env_ts)
        for repl, dst in ((n["ts_repl"], n["ts_dst"]), (n["repl"], n["dst"])):
            h.my_drop(repl)
            h.pg_recreate(dst)
        full = _timed_run(h, res, FULL, server, ["run", "--full-refresh", "--config", str(cfg_ts)], env_ts,
                          _check(h, server, n["src"], n["ts_repl"], n["ts_dst"], tables), n["ts_dst"], rep)
        first = _timed_run(h, res, FULL_BL, server, ["run", "--full-refresh", "--config", str(cfg_bl)], env_bl,
                           _check(h, server, n["src"], n["repl"], n["dst"], tables), n["dst"], rep)
        full.rows = first.rows = rows
        if not (full.oks[-1] and first.oks[-1]):
            print(f"# binlog rep {rep}: the runs after the churn are skipped, a full refresh failed", file=sys.stderr)
            return
        mut = h.run_item(res, MUTATE, "gen", [h.py, str(ROOT / "bench" / "gen_dental.py"), "--url",
                                              f"{server.url}/{n['src']}", "--mutate", "--round", str(100 + rep),
                                              "--spread", "uniform"], rep=rep)
        if not mut.oks[-1]:
            raise SystemExit(f"binlog stage: gen_dental --mutate failed: {mut.notes}")
        clear_cache()  # the source changed: its checksums and aggregates are read again
        for name, cfg, env, repl, dst in ((RUN_BL, cfg_bl, env_bl, n["repl"], n["dst"]),
                                          (RUN_TS, cfg_ts, env_ts, n["ts_repl"], n["ts_dst"])):
            it = _timed_run(h, res, name, server, ["run", "--config", str(cfg)], env,
                            _check(h, server, n["src"], repl, dst, tables), dst, rep)
            it.rows = sum(t["analytics_rows"] or 0 for t in it.detail["etl"].get("tables", [])) or it.rows
            it.detail.setdefault("full_refresh_s", []).append(full.seconds[-1])
            it.detail.setdefault("full_refresh_flow_s", []).append(full.detail["flow_s"][-1])
        # The same again without Prefect: what the runs themselves cost (against the full refresh's flow).
        mut = h.run_item(res, MUTATE2, "gen", [h.py, str(ROOT / "bench" / "gen_dental.py"), "--url",
                                               f"{server.url}/{n['src']}", "--mutate", "--round", str(200 + rep),
                                               "--spread", "uniform"], rep=rep)
        if not mut.oks[-1]:
            raise SystemExit(f"binlog stage: gen_dental --mutate failed: {mut.notes}")
        clear_cache()
        for name, env, repl, dst in ((PLAIN_BL, env_bl, n["repl"], n["dst"]),
                                     (PLAIN_TS, env_ts, n["ts_repl"], n["ts_dst"])):
            it = _timed_run(h, res, name, server, None, env, _check(h, server, n["src"], repl, dst, tables), dst, rep)
            it.rows = sum(t["analytics_rows"] or 0 for t in it.detail["etl"].get("tables", [])) or it.rows
            it.detail.setdefault("full_refresh_s", []).append(full.detail["flow_s"][-1])
        api = getattr(h.a, "binlog_prefect_api_url", None)
        if api:  # the nightly/daytime job runs against a server: the same runs on one (no temporary API)
            mut = h.run_item(res, MUTATE3, "gen", [h.py, str(ROOT / "bench" / "gen_dental.py"), "--url",
                                                   f"{server.url}/{n['src']}", "--mutate", "--round",
                                                   str(300 + rep), "--spread", "uniform"], rep=rep)
            if not mut.oks[-1]:
                raise SystemExit(f"binlog stage: gen_dental --mutate failed: {mut.notes}")
            clear_cache()
            for name, cfg, env, repl, dst in ((SRV_BL, cfg_bl, env_bl, n["repl"], n["dst"]),
                                              (SRV_TS, cfg_ts, env_ts, n["ts_repl"], n["ts_dst"])):
                it = _timed_run(h, res, name, server, ["run", "--config", str(cfg)], dict(env, PREFECT_API_URL=api),
                                _check(h, server, n["src"], repl, dst, tables), dst, rep)
                it.rows = sum(t["analytics_rows"] or 0 for t in it.detail["etl"].get("tables", [])) or it.rows
                it.detail.setdefault("full_refresh_s", []).append(full.seconds[-1])
                it.detail.setdefault("full_refresh_flow_s", []).append(full.detail["flow_s"][-1])
    finally:
        if rep == h.a.reps:
            s = _servers.pop(id(h), None)
            if s is not None:
                s.stop()


def _count(server: Any, db: str, tables: list[str]) -> int:
    conn = server.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(" UNION ALL ".join(f"SELECT COUNT(*) FROM `{t}`" for t in tables))
            return sum(int(r[0]) for r in cur.fetchall())
    finally:
        conn.close()


# ----------------------------------------------------------------------------- report (bench/run.py render)
def _ratio(it: Any, key: str = "full_refresh_s", secs: str = "seconds") -> float | None:
    full = it.detail.get(key) or []
    mine = getattr(it, secs) if secs == "seconds" else it.detail.get(secs) or []
    pairs = [(s, f) for s, f in zip(mine, full) if s and f]
    if not pairs:
        return None
    import statistics
    return statistics.median(s / f for s, f in pairs)


def ratio_parts(res: Any, name: str) -> list[str]:
    it = res.get(name) if name in RUNS + PLAIN + SERVER else None
    r = _ratio(it) if it else None
    if r is None:
        return []
    goal = f" (goal <= {GOAL:g})" if name in (RUN_BL, SRV_BL) else ""
    return [f"{r:.3f} of full refresh{' flow' if name in PLAIN else ''}{goal}"]


def report_lines(res: Any) -> list[str]:
    """The binlog goal and production's work per run, for the harness's summary."""
    full = res.get(FULL)
    if not full:
        return []
    lines = ["", "binlog stage: same source server (binary log on), same 1% churn, same run; "
                 "process = `etl run` wall (Prefect start-up included), flow = etl.pipeline_runs"]
    for name in RUNS + SERVER:
        it = res.get(name)
        if not it:
            continue
        r, rf = _ratio(it), _ratio(it, "full_refresh_flow_s", "flow_s")
        flow = it.detail.get("flow_s", [None])[-1]
        fflow = it.detail.get("full_refresh_flow_s", [None])[-1]
        met = "" if name not in (RUN_BL, SRV_BL) else (" MET" if r is not None and r <= GOAL else " MISSED")
        lines.append(f"  {name}: process {it.median:.1f}s / full refresh {full.median:.1f}s = {r:.3f}"
                     + (f" (goal <= {GOAL:g}){met}" if name in (RUN_BL, SRV_BL) else "")
                     + (f"; flow {flow:.1f}s / {fflow:.1f}s = {rf:.3f}" if rf is not None else ""))
    for name in PLAIN:
        it = res.get(name)
        r = _ratio(it) if it else None
        if r is not None:
            lines.append(f"  {name}: {it.median:.1f}s (no Prefect) / full refresh flow "
                         f"{it.detail['full_refresh_s'][-1]:.1f}s = {r:.3f}")
    lines.append("  production's work per run (source server counters, deltas over the run):")
    head = ("run", "connections", "SELECTs", "rows read", "rows sent", "tmp rows read", "MB sent")
    table = [head]
    for name in (FULL, FULL_BL, *RUNS, *PLAIN, *SERVER):
        it = res.get(name)
        if not it or not it.detail.get("work"):
            continue
        w = it.detail["work"][-1]
        table.append((name.removeprefix("binlog: "), f"{w['Connections']:,}", f"{w['Com_select']:,}",
                      f"{w['Rows_read']:,}", f"{w['Rows_sent']:,}", f"{w['Rows_tmp_read']:,}",
                      f"{w['Bytes_sent'] / 1e6:,.1f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for row in table:
        lines.append("    " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                        enumerate(zip(row, widths))))
    return lines
