"""dbt after the load, through the real pipeline, dbt and PostgreSQL.

One database, four `etl run`s (each through Prefect, each checked in PostgreSQL and in the run's
report artifact):
1. `--no-dbt`: the tables load, dbt does not run (etl.dbt_runs says why); `etl dbt-sources` then
   writes the fixture project's sources.yml from what is really there.
2. every table loads: `dbt build` runs in the same Prefect run (a task run per dbt node), builds
   the staging models with the source's rows, and the unique tests pass.
3. a table fails (on_table_failure: skip, the default): dbt does not run, the report says so, and
   the failed table is stale at once while the others (a quiet lookup table whose rows were last
   written days ago among them) are fresh: freshness is the last successful sync.
4. the same failure with on_table_failure: run_rest: dbt builds everything but the failed table's
   downstream, which it leaves out with `--exclude source:raw.appointment+`.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, PG
from tests.test_end_to_end import assert_all_copies_equal

SOURCE = """
CREATE TABLE patient (PatNum INT PRIMARY KEY, LName VARCHAR(40) NOT NULL, Balance DECIMAL(10,2),
                      DateTStamp DATETIME NOT NULL);
INSERT INTO patient VALUES (1, 'Smith', 10.50, '2026-01-01 08:00:00'), (2, 'Jones', NULL, '2026-01-01 08:00:00'),
                           (3, 'O''Hara', 0.00, '2026-01-02 09:30:00');
CREATE TABLE appointment (AptNum INT PRIMARY KEY, PatNum INT NOT NULL, AptDate DATE);
INSERT INTO appointment VALUES (10, 1, '2026-02-01'), (11, 2, NULL);
CREATE TABLE definition (DefNum INT PRIMARY KEY, ItemName VARCHAR(40) NOT NULL, DateTStamp DATETIME NOT NULL);
INSERT INTO definition VALUES (1, 'Recall', '2025-06-01 00:00:00'), (2, 'Broken', '2025-06-01 00:00:00');
"""

CONFIG = """
priorities:
  - {{name: critical, workers: 2}}
defaults: {{priority: critical}}
tables:
  patient: {{primary_key: [PatNum], mode: incremental, incremental_columns: [DateTStamp]}}
  appointment: {{primary_key: [AptNum]}}
  definition: {{primary_key: [DefNum], mode: incremental, incremental_columns: [DateTStamp]}}
dbt:
  project_dir: {project}
  profiles_dir: {profiles}
  on_table_failure: {on_failure}
"""


def _pg_all(env, sql: str, params: tuple = ()) -> list[tuple]:
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        pg.close()


def _dbt_run(env) -> dict:
    """The latest etl.dbt_runs row, as a dict."""
    pg = env.pg()
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT * FROM etl.dbt_runs ORDER BY at DESC LIMIT 1")
            names = [d[0] for d in cur.description]
            return dict(zip(names, cur.fetchone()))
    finally:
        pg.close()


def _report(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["etl-run-report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return artifact.data


def _task_run_names(run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=200)
    return [t.name for t in runs]


def _freshness(project: Path, profiles: Path) -> dict[str, dict]:
    """`dbt source freshness` on the project; table -> its sources.json result."""
    from dbt.cli.main import dbtRunner

    res = dbtRunner().invoke(["source", "freshness", "--project-dir", str(project), "--profiles-dir", str(profiles),
                              "--log-level", "none"])
    assert res.exception is None, res.exception
    doc = json.loads((project / "target" / "sources.json").read_text(encoding="utf-8"))
    return {r["unique_id"].rsplit(".", 1)[1]: r for r in doc["results"]}


@pytest.fixture
def dbt_project(etl_env, tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "dbt_project"
    shutil.copytree(FIXTURES / "dbt_project", project, ignore=shutil.ignore_patterns("target", "logs"))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(
        "etl_fixture:\n  target: test\n  outputs:\n    test:\n      type: postgres\n"
        f"      host: {PG['host']}\n      port: {PG['port']}\n      user: {PG['user']}\n      password: ''\n"
        f"      dbname: {etl_env.pg_db}\n      schema: analytics\n      threads: 2\n", encoding="utf-8")
    return project, profiles


def _config(env, project: Path, profiles: Path, on_failure: str) -> None:
    env.write_config(CONFIG.format(project=project, profiles=profiles, on_failure=on_failure))


def test_dbt_runs_after_a_successful_load_and_freshness_is_the_last_sync(etl_env, prefect_harness, dbt_project,
                                                                        capsys) -> None:
    from tasks import faults

    project, profiles = dbt_project
    etl_env.source_sql(SOURCE)
    _config(etl_env, project, profiles, "skip")

    # 1. --no-dbt: loaded, dbt not run; then the sources come from what was loaded.
    assert etl_env.etl("run", "--no-dbt") == 0
    row = _dbt_run(etl_env)
    assert row["status"] == "skipped" and "--no-dbt" in row["reason"]
    assert "dbt skipped" in _report(row["run_id"])
    assert etl_env.etl("dbt-sources", "--output", str(project / "models" / "sources.yml")) == 0
    capsys.readouterr()
    assert etl_env.etl("plan") == 0
    assert (f"dbt: will run `dbt build` in {project} after the load, only when every table loads "
            f"(on_table_failure: skip)") in capsys.readouterr().out

    # 2. Every table loads: dbt build in the same Prefect run.
    assert etl_env.etl("run") == 0
    assert_all_copies_equal(etl_env)
    row = _dbt_run(etl_env)
    assert row["status"] == "ok", row
    assert row["command"] == "dbt build"
    assert (row["models_ok"], row["models_failed"]) == (2, 0)
    nodes = {n["unique_id"]: n["status"] for n in row["nodes"]}
    assert nodes["model.etl_fixture.stg_patient"] == "success"
    [unique] = [k for k in nodes if k.startswith("test.etl_fixture.unique_stg_patient_patnum")]
    assert nodes[unique] == "pass"
    assert row["tests_failed"] == 0 and row["tests_passed"] >= 2
    # The staging model holds exactly the source's rows.
    assert _pg_all(etl_env, "SELECT patnum, lname, balance::text FROM analytics.stg_patient ORDER BY 1") == [
        (1, "Smith", "10.50"), (2, "Jones", None), (3, "O'Hara", "0.00")]
    assert _pg_all(etl_env, "SELECT count(*) FROM analytics.stg_appointment") == [(2,)]
    # Each dbt node is a task run of the pipeline's flow run; the report has the dbt section.
    names = _task_run_names(row["run_id"])
    assert "model stg_patient" in names and any(n.startswith("test unique_stg_patient_patnum") for n in names), names
    md = _report(row["run_id"])
    assert "## dbt" in md and "**dbt OK**: `dbt build`" in md
    assert "| 2 | 0 | 0 |" in md  # models ok, failed, skipped

    # 3. A table fails; by default dbt does not run over half-loaded sources.
    etl_env.source_sql("INSERT INTO patient VALUES (4, 'Lee', 1.00, '2026-03-01 10:00:00');"
                       "INSERT INTO appointment VALUES (12, 4, '2026-03-02');")
    faults.inject(faults.Fault("analytics", "appointment", 1))
    assert etl_env.etl("run") == 1
    row = _dbt_run(etl_env)
    assert row["status"] == "skipped" and "appointment" in row["reason"] and "on_table_failure: skip" in row["reason"]
    assert row["nodes"] == []
    assert _pg_all(etl_env, "SELECT count(*) FROM raw.patient") == [(4,)]  # loaded ...
    assert _pg_all(etl_env, "SELECT count(*) FROM analytics.stg_patient") == [(3,)]  # ... but not built on
    md = _report(row["run_id"])
    assert "**dbt skipped**: 1 table(s) failed: appointment" in md
    # Freshness: the failed table is stale at once (its last sync failed). The quiet lookup table is
    # fresh: this incremental run rewrote none of its rows, and (as time passes) they were written
    # days ago, so freshness by rows would call it stale; it was synced seconds ago.
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("UPDATE raw.definition SET _etl_loaded_at = now() - interval '3 days'")
    pg.commit()
    pg.close()
    fresh = _freshness(project, profiles)
    assert {t: fresh[t]["status"] for t in fresh} == {"patient": "pass", "definition": "pass", "appointment": "error"}
    [(synced,)] = _pg_all(etl_env, "SELECT ended_at FROM etl.table_runs WHERE table_name = 'definition' "
                                   "AND run_id = %s", (row["run_id"],))
    assert abs((dt.datetime.fromisoformat(fresh["definition"]["max_loaded_at"]) - synced).total_seconds()) < 1

    # 4. run_rest: everything but the failed table's downstream.
    _config(etl_env, project, profiles, "run_rest")
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("DROP TABLE analytics.stg_appointment")  # not rebuilt, so it stays away
    pg.commit()
    pg.close()
    assert etl_env.etl("run") == 1
    row = _dbt_run(etl_env)
    assert row["status"] == "ok", row
    assert row["command"] == "dbt build --exclude source:raw.appointment+"
    assert row["excluded_tables"] == ["appointment"]
    assert not [n for n in row["nodes"] if "appointment" in n["unique_id"]]
    assert _pg_all(etl_env, "SELECT patnum FROM analytics.stg_patient ORDER BY 1") == [(1,), (2,), (3,), (4,)]
    assert _pg_all(etl_env, "SELECT to_regclass('analytics.stg_appointment') IS NULL") == [(True,)]
    md = _report(row["run_id"])
    assert "Not run, downstream of failed tables: appointment" in md and "**dbt OK**" in md


def test_a_failing_dbt_test_is_a_failed_result_naming_the_node(etl_env, prefect_harness, dbt_project) -> None:
    """dbt itself fails (a duplicate key under a unique test): failed, counted, named, recorded, reported."""
    from config.models import DbtOptions
    from tasks.artifacts import render_dbt_section
    from tasks.connections import create_engine
    from tasks.dbt_run import decide, record, run_dbt
    from tasks.dbt_sources import build_sources, read_pg_tables, render_yaml

    project, profiles = dbt_project
    pg = etl_env.pg()
    with pg.cursor() as cur:
        # Tables made by hand: what is under test is dbt's result, not the load.
        cur.execute("CREATE SCHEMA raw; CREATE TABLE raw.patient (patnum int, lname text, balance numeric);"
                    "INSERT INTO raw.patient VALUES (1, 'Smith', 1), (1, 'Jones', 2);"
                    "CREATE TABLE raw.appointment (aptnum int, patnum int, aptdate date)")
        doc = build_sources(read_pg_tables(cur, "raw"), schema="raw")
    pg.commit()
    pg.close()
    (project / "models" / "sources.yml").write_text(render_yaml(doc), encoding="utf-8")
    opts = DbtOptions(project_dir=str(project), profiles_dir=str(profiles), select=["stg_patient"])

    result = run_dbt(opts, decide(opts, enabled=True, failed_tables=[]), config_path=None, source="raw")
    assert result.status == "failed" and result.error is None, result
    assert (result.models_ok, result.tests_passed, result.tests_failed) == (1, 0, 1)
    [bad] = [n for n in result.nodes if n.status != "success"]
    assert bad.unique_id.startswith("test.etl_fixture.unique_stg_patient_patnum") and bad.status == "fail"
    assert "Got 1 result" in bad.message
    engine = create_engine("analytics", etl_env.analytics_url, pool_size=1)
    try:
        record(engine, "run-1", result)
    finally:
        engine.dispose()
    assert _pg_all(etl_env, "SELECT status, models_ok, tests_failed, command FROM etl.dbt_runs") == [
        ("failed", 1, 1, "dbt build --select stg_patient")]
    md = render_dbt_section(result)
    assert "**dbt FAILED**: `dbt build --select stg_patient`" in md
    assert "| test.etl\\_fixture.unique\\_stg\\_patient\\_patnum" in md and "| fail | Got 1 result" in md

# --- the plain functions (no database) -------------------------------------------------------------

def _opts(text: str):
    from config.models import parse_pipeline_config

    return parse_pipeline_config(text, "tables.yml").dbt


def test_dbt_section_is_validated_like_every_key() -> None:
    from tasks.errors import ConfigError

    assert _opts("tables: {}") is None
    o = _opts("dbt: {project_dir: dbt, select: stg_patient}")
    assert (o.command, o.on_table_failure, o.select) == ("build", "skip", ["stg_patient"])
    for text, message in (
            ("dbt: {project_dir: dbt, on_table_failur: skip}",
             "tables.yml: dbt.on_table_failur: unknown key 'on_table_failur' (did you mean 'on_table_failure'?)"),
            ("dbt: {projct_dir: dbt}", "tables.yml: dbt.projct_dir: unknown key 'projct_dir' (did you mean 'project_dir'?)"),
            ("dbt: {project_dir: dbt, on_table_failure: continue}",
             "tables.yml: dbt.on_table_failure: Input should be 'skip' or 'run_rest'"),
            ("dbt: {project_dir: dbt, command: seed}", "tables.yml: dbt.command: Input should be 'build', 'run' or 'test'")):
        with pytest.raises(ConfigError) as e:
            _opts(text)
        assert str(e.value) == message


def test_decide_and_arguments() -> None:
    from tasks.dbt_run import dbt_args, decide

    skip = _opts("dbt: {project_dir: dbt}")
    rest = _opts("dbt: {project_dir: dbt, on_table_failure: run_rest, select: [tag:nightly], target: prod}")
    assert decide(skip, enabled=True, failed_tables=[]).run
    assert not decide(skip, enabled=False, failed_tables=[]).run
    d = decide(skip, enabled=True, failed_tables=["Appointment"])
    assert not d.run and "Appointment" in d.reason
    d = decide(rest, enabled=True, failed_tables=["Appointment", "claim"])
    assert d.run and d.exclude_tables == ["Appointment", "claim"]
    # The PostgreSQL (lower-case) name, as `etl dbt-sources` wrote it; the source name is configurable.
    assert dbt_args(rest, source="raw", exclude_tables=d.exclude_tables) == [
        "build", "--select", "tag:nightly", "--exclude", "source:raw.appointment+", "source:raw.claim+",
        "--target", "prod"]


def test_plan_line_says_whether_dbt_runs(tmp_path: Path) -> None:
    from tasks.dbt_run import describe

    (tmp_path / "dbt").mkdir()
    cfg = tmp_path / "tables.yml"
    assert describe(None, config_path=cfg, source="raw") == "dbt: not configured (no `dbt:` section in the table config)"
    line = describe(_opts("dbt: {project_dir: dbt}"), config_path=cfg, source="raw")
    assert line.startswith(f"dbt: will run `dbt build` in {tmp_path / 'dbt'} after the load, only when every table")
    assert "PROBLEM: dbt.project_dir:" in line and "has no dbt_project.yml" in line  # said before the run
    (tmp_path / "dbt" / "dbt_project.yml").write_text("name: x\n", encoding="utf-8")
    (tmp_path / "dbt" / "profiles.yml").write_text("x: {}\n", encoding="utf-8")
    line = describe(_opts("dbt: {project_dir: dbt, on_table_failure: run_rest}"), config_path=cfg, source="raw")
    assert "PROBLEM" not in line and "without their downstream (on_table_failure: run_rest)" in line
