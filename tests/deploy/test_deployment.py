"""prefect.yaml on a real server and worker: the deployments as declared, and a repair run end to end.

The server, the `process` worker and `prefect deploy --all` are set up once for tests/deploy
(conftest.py); these tests register the connector blocks for their own databases, write the
worker's table config, and start runs the way an operator would, with `prefect deployment run`.
"""
from __future__ import annotations

import time

import pytest

from tests.dbcompare import assert_pg_matches_mysql
from tests.deploy.prefect_server import ROOT, flow_run_id_from

pytestmark = pytest.mark.slow

TABLES = "".join(
    f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(30), amount DECIMAL(10,2), d DATETIME);"
    f"INSERT INTO {t} SELECT seq, CONCAT('{t}-', seq), seq / 7, '2024-01-01' + INTERVAL seq MINUTE "
    f"FROM seq_1_to_{n};"
    for t, n in (("patient", 250), ("claim", 120))
)

CONFIG = """
priorities:
  - {name: critical, workers: 2}
  - {name: normal, workers: 2}
  - {name: bulk, workers: 1}
defaults: {batch_size: 100}
tables:
  patient: {priority: critical, primary_key: [id]}
  claim: {priority: bulk, primary_key: [id]}
"""

BLOCKS = {"source": "etl-source", "replica": "etl-replica", "analytics": "etl-analytics"}


def test_prefect_yaml_deploys_every_deployment_with_block_names(prefect_stack) -> None:
    nightly = prefect_stack.deployment("etl-pipeline", "nightly")
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "America/New_York"
    assert schedule["active"] is True
    assert nightly["parameters"] == {"full_refresh": False, "blocks": BLOCKS}
    for group in ("critical", "normal", "bulk"):
        dep = prefect_stack.deployment("etl-pipeline", group)
        assert dep["parameters"] == {"groups": [group], "full_refresh": False, "blocks": BLOCKS}
        assert dep["schedules"] == []
    repair = prefect_stack.deployment("etl-repair", "repair")
    assert repair["parameters"] == {"full_refresh": True, "blocks": BLOCKS}
    assert repair["parameter_openapi_schema"]["required"] == ["tables"]
    for dep in (nightly, repair):
        assert dep["work_pool_name"] == prefect_stack.pool
        assert dep["enforce_parameter_schema"] is True
        assert dep["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        assert dep["job_variables"]["env"] == {"PREFECT_LOGGING_EXTRA_LOGGERS": "etl"}

    # A repair run without tables is refused before anything starts (it would otherwise mean "all").
    refused = prefect_stack.prefect("deployment", "run", "etl-repair/repair", check=False)
    assert refused.returncode != 0
    assert "tables" in refused.stdout + refused.stderr


def test_repair_deployment_runs_on_the_worker_and_loads_only_that_table(deployed_env, prefect_stack) -> None:
    env = deployed_env
    env.source_sql(TABLES)
    env.write_config(CONFIG)

    t0 = time.monotonic()
    out = prefect_stack.prefect("deployment", "run", "etl-repair/repair",
                                "--param", 'tables=["patient"]', "--param", "full_refresh=true")
    run_id = flow_run_id_from(out.stdout)
    run = prefect_stack.wait_for_flow_run(run_id, timeout=180)
    assert run["state"]["type"] == "COMPLETED", prefect_stack.diagnose(run_id)
    seconds = time.monotonic() - t0

    assert run["parameters"]["tables"] == ["patient"]
    assert run["work_pool_name"] == prefect_stack.pool
    assert run["name"] == "repair-patient"

    src, pg = env.mysql(), env.pg()
    try:
        assert_pg_matches_mysql(src, env.source_db, pg, env.pg_schema, "patient")
        with pg.cursor() as cur:
            # `claim` is in the config but was not asked for: not loaded.
            cur.execute("SELECT to_regclass('raw.claim') IS NULL")
            assert cur.fetchone()[0] is True
            cur.execute("SELECT status, tables_ok, tables_total FROM etl.pipeline_runs")
            assert cur.fetchall() == [("ok", 1, 1)]
    finally:
        src.close(), pg.close()
    print(f"repair run: {seconds:.1f}s from `prefect deployment run` to Completed; stack setup {prefect_stack.timings}")
