"""Many clinics, one warehouse (issue 14), on the real servers, value by value.

Three clinics on the local MariaDB (the demo schema at different scales, so different data; `patient.Nickname2`
only in north; `document` only in north and south), one PostgreSQL warehouse: discover each, run each
through the plain runner, compare every clinic's schema with its source, check the union views row for
row, make one clinic unreachable (it fails alone), run incrementally after changes in two clinics, and
one full Prefect run of etl-all.
"""
from __future__ import annotations

import importlib.util
import secrets
import sys
from pathlib import Path
from typing import Iterator

import pytest

from config.models import load_pipeline_config
from config.settings import Settings
from config.sources import load_sources
from tasks.clinics import render_clinics, run_clinics
from tests.conftest import MYSQL, PG, ROOT, _mysql_url, mysql_connect, pg_connect
from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql

_spec = importlib.util.spec_from_file_location("gen_dental", ROOT / "bench" / "gen_dental.py")
gen_dental = sys.modules.setdefault("gen_dental", importlib.util.module_from_spec(_spec))
if not hasattr(gen_dental, "generate"):
    _spec.loader.exec_module(gen_dental)

SCALES = {"north": 0.0003, "south": 0.0005, "east": 0.0002}


class Clinics:
    def __init__(self, tmp: Path) -> None:
        self.prefix = f"etlt_{secrets.token_hex(4)}"
        self.tmp = tmp
        self.pg_db = f"{self.prefix}_pg"
        self.names = list(SCALES)
        self.sources_path = tmp / "sources.yml"

    def src(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def rep(self, name: str) -> str:
        return f"{self.prefix}_{name}_rep"

    def config(self, name: str) -> Path:
        return self.tmp / f"{name}.yml"

    @property
    def analytics_url(self) -> str:
        return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.pg_db}"

    def block(self, name: str, role: str) -> str:
        return f"{self.prefix}-{name}-{role}".replace("_", "-")

    def write_sources(self, *, unreachable: str | None = None, blocks: tuple[str, ...] = ()) -> None:
        """The sources file; clinics named in `blocks` are given as connector blocks (see save_blocks)."""
        lines = ["version: 1", "sources:"]
        for n in self.names:
            url = _mysql_url(self.src(n))
            if n == unreachable:  # a port nobody listens on
                url = url.replace(f":{MYSQL['port']}/", ":1/")
            lines += [f"  - name: {n}"]
            if n in blocks:
                lines += [f"    blocks: {{source: {self.block(n, 'source')}, replica: {self.block(n, 'replica')}}}"]
            else:
                lines += [f"    source_url: {url}", f"    replica_url: {_mysql_url(self.rep(n))}"]
            lines += [f"    config: {self.config(n)}"]
        self.sources_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def pg_rows(self, sql: str) -> list[tuple]:
        conn = pg_connect(self.pg_db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture
def clinics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Clinics]:
    c = Clinics(tmp_path)
    admin = pg_connect("postgres")
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{c.pg_db}"')
    for n, scale in SCALES.items():
        gen_dental.generate(_mysql_url(c.src(n)), scale, jobs=1)
    my = mysql_connect(c.src("north"))
    with my.cursor() as cur:
        cur.execute("ALTER TABLE patient ADD COLUMN Nickname2 varchar(20) NULL")
        cur.execute("UPDATE patient SET Nickname2 = CONCAT('n', PatNum) WHERE PatNum % 3 = 0")
    my.close()
    my = mysql_connect(c.src("east"))
    with my.cursor() as cur:
        cur.execute("DROP TABLE document")
    my.close()
    c.write_sources()
    for k in ("ETL_SOURCE_URL", "ETL_REPLICA_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ETL_ANALYTICS_URL", c.analytics_url)
    monkeypatch.setenv("ETL_SOURCES", str(c.sources_path))
    monkeypatch.setenv("ETL_CONFIG", str(tmp_path / "unused.yml"))
    try:
        yield c
    finally:
        my = mysql_connect()
        with my.cursor() as cur:
            for n in SCALES:
                cur.execute(f"DROP DATABASE IF EXISTS `{c.src(n)}`")
                cur.execute(f"DROP DATABASE IF EXISTS `{c.rep(n)}`")
        my.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{c.pg_db}" WITH (FORCE)')
        admin.close()


def _discover(c: Clinics) -> None:
    from flows.cli import main

    for n in c.names:
        assert main(["discover", "--source", n]) == 0
        assert c.config(n).exists()


def _assert_clinic_equal(c: Clinics, name: str) -> None:
    """Every table of the clinic: replica == source, PostgreSQL raw_<name> == source, value by value."""
    cfg = load_pipeline_config(c.config(name))
    src, rep = mysql_connect(c.src(name)), mysql_connect(c.rep(name))
    pg = pg_connect(c.pg_db)
    try:
        tables = cfg.resolved_tables(None)
        assert tables
        for t in tables:
            assert_mysql_equal(src, c.src(name), rep, c.rep(name), t.name)
            assert_pg_matches_mysql(src, c.src(name), pg, f"raw_{name}", t.name,
                                    column_case=cfg.analytics.column_case, boolean_columns=t.boolean_columns)
    finally:
        src.close(), rep.close(), pg.close()


def _assert_union(c: Clinics) -> None:
    """raw_all.<table>: the sum of every clinic's rows, each with its clinic's `_source`, values unchanged."""
    for table, having in (("patient", c.names), ("procedurelog", c.names), ("document", ["north", "south"])):
        got = c.pg_rows(f'SELECT _source, count(*) FROM raw_all."{table}" GROUP BY 1 ORDER BY 1')
        want = []
        for n in sorted(having):
            my = mysql_connect(c.src(n))
            with my.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM `{table}`")
                want.append((n, cur.fetchone()[0]))
            my.close()
        assert got == want, table
    # The column only north has: NULL in the other clinics, north's values row for row.
    nick = c.pg_rows("SELECT _source, patnum, nickname2 FROM raw_all.patient ORDER BY 1, 2")
    my = mysql_connect(c.src("north"))
    with my.cursor() as cur:
        cur.execute("SELECT PatNum, Nickname2 FROM patient ORDER BY PatNum")
        north = [("north", p, v) for p, v in cur.fetchall()]
    my.close()
    assert [r for r in nick if r[0] == "north"] == north
    assert all(v is None for s, _, v in nick if s != "north")
    # Every value of south's procedurelog through the view equals its own table's.
    assert (c.pg_rows("SELECT * FROM raw_all.procedurelog WHERE _source = 'south' ORDER BY procnum")
            == [("south", *r) for r in c.pg_rows("SELECT * FROM raw_south.procedurelog ORDER BY procnum")])


def test_three_clinics_one_warehouse(clinics: Clinics) -> None:
    c = clinics
    _discover(c)
    assert "document" not in load_pipeline_config(c.config("east")).tables
    results, union = run_clinics(Settings(), load_sources(c.sources_path), max_sources=2)
    assert [(r.source, r.status) for r in results] == [("east", "ok"), ("north", "ok"), ("south", "ok")], \
        render_clinics(results)
    for n in c.names:
        _assert_clinic_equal(c, n)
    assert {u.table: u.status for u in union}.get("document") == "built"
    assert all(u.status == "built" for u in union), union
    _assert_union(c)
    # Metrics carry the clinic.
    by_source = dict(c.pg_rows("SELECT source, count(*) FROM etl.table_runs GROUP BY 1"))
    assert by_source == {"north": 10, "south": 10, "east": 9}
    assert sorted(r[0] for r in c.pg_rows("SELECT source FROM etl.pipeline_runs")) == ["east", "north", "south"]

    # Changes in two clinics, then an incremental run: only their data moves; no view is rebuilt.
    gen_dental.mutate(_mysql_url(c.src("north")), 1, pct=5)
    gen_dental.mutate(_mysql_url(c.src("east")), 1, pct=5)
    results, union = run_clinics(Settings(), load_sources(c.sources_path), max_sources=3)
    assert all(r.status == "ok" for r in results), render_clinics(results)
    assert all(u.status == "unchanged" for u in union), union
    modes = dict(c.pg_rows("SELECT source, string_agg(DISTINCT mode, ',') FROM etl.table_runs "
                           "WHERE table_name = 'procedurelog' AND run_id IN (SELECT run_id FROM etl.pipeline_runs "
                           "ORDER BY started_at DESC LIMIT 3) GROUP BY 1"))
    # south did not change: the per-table probe (tasks/probe.py) skips its procedurelog
    assert modes == {"north": "incremental", "south": "unchanged", "east": "incremental"}
    for n in c.names:
        _assert_clinic_equal(c, n)
    _assert_union(c)

    # A clinic made unreachable fails alone, with one line naming it; the others load.
    c.write_sources(unreachable="south")
    results, union = run_clinics(Settings(), load_sources(c.sources_path), max_sources=3)
    assert [(r.source, r.status) for r in results] == [("south", "failed"), ("east", "ok"), ("north", "ok")]
    err = results[0].error
    assert err.startswith("clinic south: cannot reach the source database") and "\n" not in err, err
    # Its last tables stay in the union (nothing of south was touched).
    _assert_union(c)


def test_cli_status_by_clinic_and_union_dbt_sources(clinics: Clinics, capsys: pytest.CaptureFixture) -> None:
    """`etl status` groups by clinic and fails naming the clinic whose latest run failed; `etl dbt-sources
    --union` writes the union schema with `_source`."""
    import yaml

    from flows.cli import main

    c = clinics
    c.names = ["north", "east"]
    c.write_sources()
    _discover(c)
    results, _ = run_clinics(Settings(), load_sources(c.sources_path))
    assert all(r.status == "ok" for r in results)
    capsys.readouterr()
    assert main(["status", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert out.index("== clinic north") < out.index("== clinic east")
    assert "clinic east  run" in out
    c.write_sources(unreachable="east")
    run_clinics(Settings(), load_sources(c.sources_path), names=["east"])
    assert main(["status", "--runs", "1", "--source", "east"]) == 1
    assert "latest run of clinic(s) east did not succeed" in capsys.readouterr().err
    assert main(["status", "--runs", "1", "--source", "north"]) == 0
    out_file = c.tmp / "union_sources.yml"
    assert main(["dbt-sources", "--union", "--output", str(out_file)]) == 0
    doc = yaml.safe_load(out_file.read_text())
    [src] = doc["sources"]
    assert src["schema"] == "raw_all"
    patient = next(t for t in src["tables"] if t["name"] == "patient")
    assert patient["columns"][0]["name"] == "_source"
    assert patient["columns"][0]["description"].startswith("The clinic this row comes from")
    assert "every clinic of" in src["description"] and "(north, east)" in src["description"]
    assert main(["status", "--source", "nosuch"]) == 2


def test_etl_all_flow_in_process(clinics: Clinics, prefect_harness, monkeypatch) -> None:  # noqa: ANN001
    """One full Prefect run of etl-all: one etl-pipeline run per clinic, named by it; an unreachable
    clinic fails alone and etl-all ends Failed naming it; the union holds the others."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows import wiring
    from flows.etl_all import ClinicsFailed, etl_all

    # Only time is shortened: the unreachable clinic's connection check is still retried 3 times
    # (tests/flows/test_faults.py tests those retries), but not for 2 + 10 + 30 s (42 of this test's 52 s).
    monkeypatch.setattr(wiring, "CONNECT_RETRY_DELAYS", [0.2, 0.2, 0.2])

    c = clinics
    _discover(c)
    c.write_sources(unreachable="east")
    state = etl_all(max_sources=2, dbt=False, return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, ClinicsFailed)
    assert str(err).startswith("1 of 3 clinics failed: east (clinic east: cannot reach the source database")
    assert [(r.source, r.status) for r in err.results] == [("east", "failed"), ("north", "ok"), ("south", "ok")]
    for n in ("north", "south"):
        _assert_clinic_equal(c, n)
    with get_client(sync_client=True) as client:
        # This run's children only: the session's Prefect harness holds every earlier test's runs too,
        # more than one page of read_flow_runs, and some of them are named by the same clinics.
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[state.state_details.flow_run_id])), limit=50)
        names = {r.name: r.state_type.value for r in runs if r.name in c.names}
    assert names == {"north": "COMPLETED", "south": "COMPLETED", "east": "FAILED"}
    assert c.pg_rows("SELECT _source, count(*) FROM raw_all.document GROUP BY 1 ORDER BY 1")[0][0] == "north"
    assert dict(c.pg_rows("SELECT source, status FROM etl.pipeline_runs")) == {
        "north": "ok", "south": "ok", "east": "failed"}
    # Each clinic's row names its own flow run (the one named by the clinic), not etl-all's.
    assert dict(c.pg_rows("SELECT source, prefect_run_name FROM etl.pipeline_runs")) == {
        "north": "north", "south": "south", "east": "east"}


def test_plan_and_verify_read_a_clinic_from_its_blocks(clinics: Clinics, prefect_harness,  # noqa: ANN001
                                                        capsys: pytest.CaptureFixture) -> None:
    """A clinic given as connector blocks (`blocks:` in the sources file): `etl discover`, `etl plan` and
    `etl verify --source` read its databases from the blocks, as its run does; verify finds a damaged
    analytics value and --repair puts the source's back."""
    from blocks.connectors import BlockNames, register_blocks
    from flows.cli import main

    c = clinics
    c.names = ["north", "east"]
    register_blocks(Settings(source_url=_mysql_url(c.src("north")), replica_url=_mysql_url(c.rep("north")),
                             analytics_url=c.analytics_url),
                    BlockNames(**{r: c.block("north", r) for r in ("source", "replica", "analytics")}))
    c.write_sources(blocks=("north",))
    assert load_sources(c.sources_path).get("north").source_url is None
    _discover(c)
    capsys.readouterr()
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    north, east = out[out.index("== clinic north"):out.index("== clinic east")], out[out.index("== clinic east"):]
    for part in (north, east):
        assert "patient" in part and "procedurelog" in part and "have problems" not in part
    assert "document" in north and "document" not in east
    results, _ = run_clinics(Settings(), load_sources(c.sources_path))
    assert all(r.status == "ok" for r in results), render_clinics(results)
    _assert_clinic_equal(c, "north")
    assert main(["verify", "--source", "north", "--tables", "patient,procedurelog"]) == 0
    pg = pg_connect(c.pg_db)
    with pg.cursor() as cur:
        cur.execute("UPDATE raw_north.patient SET lname = 'damaged' WHERE patnum = (SELECT min(patnum) "
                    "FROM raw_north.patient)")
    pg.close()
    capsys.readouterr()
    assert main(["verify", "--source", "north", "--tables", "patient"]) == 1
    assert "1 table(s) differ: patient" in capsys.readouterr().err
    assert main(["verify", "--source", "north", "--tables", "patient", "--repair"]) == 0
    _assert_clinic_equal(c, "north")
    assert c.pg_rows("SELECT ok FROM etl.verify_results WHERE run_id LIKE 'verify-north-%' AND table_name = 'patient' "
                     "ORDER BY checked_at DESC LIMIT 1") == [(True,)]
