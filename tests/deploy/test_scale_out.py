"""Scale-out: one pipeline run hands its tables to the pool's workers (dispatch=deployment), and one
etl-all run hands its clinics to them.

`etl run --blocks --dispatch deployment` runs the parent flow in a shell against the test server;
each table becomes a run of the `etl-table/table` deployment. The package's two workers each run one
flow run at a time, and the two tables of the 2-worker group are dispatched together, so each worker
takes one: etl.table_runs.worker names the worker (PREFECT__WORKER_NAME of the flow-run process).
With ETL_SOURCES the same command runs etl-all, and each clinic becomes a run of `etl-pipeline/clinic`
(two clinics, two at once: each worker takes one; etl.pipeline_runs.worker names it).
"""
from __future__ import annotations

import secrets
import sys
import time

import pytest

from tests.conftest import _mysql_url, mysql_connect, run_mysql_script
from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql
from tests.deploy.prefect_server import TERMINAL

pytestmark = pytest.mark.slow



def tables_sql(counts: dict[str, int], tag: str = "") -> str:
    return "".join(
        f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(30), amount DECIMAL(10,2), d DATETIME);"
        f"INSERT INTO {t} SELECT seq, CONCAT('{tag}{t}-', seq), seq / 7, '2024-01-01' + INTERVAL seq MINUTE "
        f"FROM seq_1_to_{n};"
        for t, n in counts.items())


TABLES = tables_sql({"patient": 400, "claim": 300, "document": 50})

CONFIG = """
priorities:
  - {name: critical, workers: 2}
  - {name: bulk, workers: 1}
defaults: {batch_size: 100}
tables:
  patient: {priority: critical, primary_key: [id]}
  claim: {priority: critical, primary_key: [id]}
  document: {priority: bulk, primary_key: [id]}
"""


def test_one_run_spreads_its_tables_over_both_workers(deployed_env, prefect_stack) -> None:
    env = deployed_env
    env.source_sql(TABLES)
    env.write_config(CONFIG)

    t0 = time.monotonic()
    out = prefect_stack.run([sys.executable, "-m", "flows.cli", "run", "--blocks", "--dispatch", "deployment"],
                            env={"ETL_CONFIG": str(env.config_path)}, timeout=240, check=False)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n" + "\n".join(p.tail(40) for p in prefect_stack.workers)

    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT run_id, status, tables_ok, tables_total FROM etl.pipeline_runs")
            [(run_id, status, ok, total)] = cur.fetchall()
            assert (status, ok, total) == ("ok", 3, 3)
            cur.execute("SELECT table_name, status, worker, connection_usage FROM etl.table_runs WHERE run_id = %s",
                        (run_id,))
            rows = {r[0]: r[1:] for r in cur.fetchall()}
        assert sorted(rows) == ["claim", "document", "patient"]
        assert all(status == "ok" for status, _, _ in rows.values())
        names = {t: worker.split("@")[0] for t, (_, worker, _) in rows.items()}
        pids = {t: worker.rsplit(":", 1)[1] for t, (_, worker, _) in rows.items()}
        # Both workers took a table of the critical group, each in a flow-run process of its own.
        assert {names["patient"], names["claim"]} == {prefect_stack.worker_name(0), prefect_stack.worker_name(1)}
        assert len(set(pids.values())) == 3
        # Each table run opened its own engines and closed every connection.
        for _, _, usage in rows.values():
            assert {role: u["still_open"] for role, u in usage.items()} == {"source": 0, "replica": 0, "analytics": 0}
        src = env.mysql()
        try:
            for t in rows:
                assert_pg_matches_mysql(src, env.source_db, pg, env.pg_schema, t)
        finally:
            src.close()
    finally:
        pg.close()

    # The table runs are runs of etl-table/table on the pool, subflows of the pipeline run.
    runs = prefect_stack.api("POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [
        "etl-table-patient", "etl-table-claim", "etl-table-document"]}}})
    assert len(runs) == 3
    dep = prefect_stack.deployment("etl-table", "table")
    for r in runs:
        assert r["deployment_id"] == dep["id"] and r["work_pool_name"] == prefect_stack.pool
        assert r["state"]["type"] == "COMPLETED" and r["parent_task_run_id"]
        assert r["parameters"]["run_id"] == run_id
    parent = prefect_stack.flow_run(run_id)
    assert parent["state"]["type"] in TERMINAL and parent["state"]["type"] == "COMPLETED"
    # The source limit exists and every slot was given back.
    limit = prefect_stack.api("GET", "/v2/concurrency_limits/etl-source")
    assert limit["limit"] == 2 and limit["active_slots"] == 0
    print(f"scale-out run: {seconds:.1f}s for 3 tables on 2 workers; tables by worker {names}")


# Two clinics, different data and one schema difference (document only in south).
CLINICS = {"north": {"patient": 60, "claim": 40}, "south": {"patient": 30, "claim": 50, "document": 7}}


def test_one_etl_all_run_spreads_its_clinics_over_both_workers(deployed_env, prefect_stack, tmp_path) -> None:
    """etl-all with dispatch=deployment: each clinic is a run of etl-pipeline/clinic named by it, the two
    workers take one each, every clinic's analytics schema equals its source value by value, and the union
    holds both."""
    env = deployed_env  # its analytics database (the etl-analytics block) is the warehouse
    prefix = f"etlt_{secrets.token_hex(4)}"
    my = mysql_connect()
    try:
        lines = ["version: 1", "sources:"]
        for name, counts in CLINICS.items():
            src = f"{prefix}_{name}"
            with my.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{src}`")
            run_mysql_script(src, tables_sql(counts, tag=f"{name}-"))
            config = tmp_path / f"{name}.yml"
            config.write_text("priorities:\n  - {name: normal, workers: 1}\ntables:\n"
                              + "".join(f"  {t}: {{primary_key: [id]}}\n" for t in counts), encoding="utf-8")
            lines += [f"  - name: {name}", f"    source_url: {_mysql_url(src)}",
                      f"    replica_url: {_mysql_url(src + '_rep')}", f"    config: {config}"]
        prefect_stack.sources_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

        t0 = time.monotonic()
        out = prefect_stack.run([sys.executable, "-m", "flows.cli", "run", "--blocks", "--dispatch", "deployment",
                                 "--max-sources", "2"], env={"ETL_SOURCES": str(prefect_stack.sources_path)},
                                timeout=300, check=False)
        seconds = time.monotonic() - t0
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n" + "\n".join(p.tail(40) for p in prefect_stack.workers)
        assert "2 clinics, 0 failed" in out.stdout

        pg = env.pg()
        try:
            with pg.cursor() as cur:
                cur.execute("SELECT source, status, tables_ok, worker, prefect_run_name FROM etl.pipeline_runs")
                runs = {r[0]: r[1:] for r in cur.fetchall()}
                assert {n: r[:2] for n, r in runs.items()} == {"north": ("ok", 2), "south": ("ok", 3)}
                # Each worker ran one clinic, each clinic's row names its own flow run.
                assert {r[2].split("@")[0] for r in runs.values()} == {prefect_stack.worker_name(0),
                                                                        prefect_stack.worker_name(1)}
                assert {n: r[3] for n, r in runs.items()} == {"north": "north", "south": "south"}
                cur.execute('SELECT _source, count(*) FROM raw_all.claim GROUP BY 1 ORDER BY 1')
                assert cur.fetchall() == [("north", 40), ("south", 50)]
                cur.execute('SELECT _source, v FROM raw_all.document ORDER BY id')
                assert cur.fetchall() == [("south", f"south-document-{i}") for i in range(1, 8)]
            for name, counts in CLINICS.items():
                src = mysql_connect(f"{prefix}_{name}")
                rep = mysql_connect(f"{prefix}_{name}_rep")
                try:
                    for t in counts:
                        assert_mysql_equal(src, f"{prefix}_{name}", rep, f"{prefix}_{name}_rep", t)
                        assert_pg_matches_mysql(src, f"{prefix}_{name}", pg, f"raw_{name}", t)
                finally:
                    src.close(), rep.close()
        finally:
            pg.close()

        # The clinic runs are runs of etl-pipeline/clinic on the pool, below the etl-all run.
        flow_runs = prefect_stack.api("POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": list(CLINICS)}}})
        dep = prefect_stack.deployment("etl-pipeline", "clinic")
        assert sorted(r["name"] for r in flow_runs) == sorted(CLINICS)
        for r in flow_runs:
            assert r["deployment_id"] == dep["id"] and r["work_pool_name"] == prefect_stack.pool
            assert r["state"]["type"] == "COMPLETED" and r["parent_task_run_id"]
            assert r["parameters"]["source"] == r["name"]
        print(f"etl-all run: {seconds:.1f}s for 2 clinics on 2 workers; clinics by worker "
              f"{ {n: r[2].split('@')[0] for n, r in runs.items()} }")
    finally:
        with my.cursor() as cur:
            for name in CLINICS:
                cur.execute(f"DROP DATABASE IF EXISTS `{prefix}_{name}`")
                cur.execute(f"DROP DATABASE IF EXISTS `{prefix}_{name}_rep`")
        my.close()
