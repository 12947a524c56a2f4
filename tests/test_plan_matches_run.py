"""`etl plan` tells the truth about `etl run`: both take a table's path from tasks/decide.py, and this
checks it on real schemas (the demo clinic and sakila): for a first run and for the incremental run
after it, every table's mode in the plan equals the mode the run recorded in etl.table_runs."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import SHARED, load_sakila
from tests.test_incremental import gen_dental


def _plan_modes() -> dict[str, str]:
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks.planning import build_plan

    settings = Settings()
    plan = build_plan(settings, load_pipeline_config(settings.config), tables=None, full_refresh=False)
    assert not [p for p in plan.tables if p.problems], [p.problems for p in plan.tables if p.problems]
    return {p.table: p.mode for p in plan.tables}


def _run_modes(env) -> dict[str, str]:
    assert env.run() == 0
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT table_name, mode FROM etl.table_runs WHERE run_id = (SELECT run_id FROM "
                        "etl.pipeline_runs ORDER BY started_at DESC LIMIT 1)")
            return dict(cur.fetchall())
    finally:
        pg.close()


def _check(env) -> None:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    assert any(t.get("mode") == "incremental" for t in cfg["tables"].values())
    for _ in range(2):  # the first run (all full), then the incremental one
        planned = _plan_modes()
        assert _run_modes(env) == planned


def test_plan_and_run_agree_on_the_demo_schema(etl_env) -> None:
    gen_dental.generate(etl_env.source_url, 0.001)
    _check(etl_env)


@pytest.mark.skipif(not (SHARED / "corpus" / "sakila").exists(), reason="../shared/corpus/sakila not present")
def test_plan_and_run_agree_on_sakila(etl_env) -> None:
    load_sakila(etl_env.source_db)
    _check(etl_env)
