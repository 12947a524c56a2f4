"""`etl dbt-sources` on a really loaded analytics schema: the YAML parses and says what is there."""
from __future__ import annotations

import re

import yaml

from tasks.dbt_sources import PgColumn, PgTable, build_sources, sync_freshness_query

SOURCE = """
CREATE TABLE patient (PatNum BIGINT UNSIGNED PRIMARY KEY, LName VARCHAR(100) NOT NULL, Balance DECIMAL(12,2),
                      Birthdate DATE, IsActive TINYINT(1));
INSERT INTO patient VALUES (1, 'Smith', 10.50, '1980-01-02', 1), (2, 'Jones', NULL, NULL, 0);
CREATE TABLE procnote (PatNum INT NOT NULL, ProcNum INT NOT NULL, Note TEXT, PRIMARY KEY (PatNum, ProcNum));
INSERT INTO procnote VALUES (1, 1, 'x'), (1, 2, 'y');
"""
CONFIG = """
priorities:
  - {name: critical, workers: 1}
tables:
  patient: {priority: critical, primary_key: [PatNum]}
  procnote: {priority: critical, primary_key: [PatNum, ProcNum]}
"""


def _tables(doc: dict) -> dict[str, dict]:
    [source] = doc["sources"]
    return {t["name"]: t for t in source["tables"]}


def test_dbt_sources_reflect_the_loaded_schema(etl_env, tmp_path) -> None:
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG)
    assert etl_env.run() == 0
    pg = etl_env.pg()
    with pg.cursor() as cur:
        # Whatever the loader does about the load-time column today, the file must follow the tables:
        # patient has it, procnote does not.
        cur.execute("ALTER TABLE raw.patient ADD COLUMN IF NOT EXISTS _etl_loaded_at timestamptz DEFAULT now()")
        cur.execute("ALTER TABLE raw.procnote DROP COLUMN IF EXISTS _etl_loaded_at")
        cur.execute("CREATE TABLE raw._etl_new_leftover (id int)")  # an ETL work table: not a source
    pg.close()

    out = tmp_path / "models" / "sources.yml"
    assert etl_env.etl("dbt-sources", "--output", str(out)) == 0
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert doc["version"] == 2
    [source] = doc["sources"]
    assert (source["name"], source["schema"]) == ("raw", "raw")
    tables = _tables(doc)
    assert sorted(tables) == ["patient", "procnote"]

    patient = tables["patient"]
    cols = {c["name"]: c for c in patient["columns"]}
    assert list(cols) == ["patnum", "lname", "balance", "birthdate", "isactive", "_etl_loaded_at"]
    assert cols["patnum"]["data_tests"] == ["unique", "not_null"]
    assert re.match(r"MySQL `bigint(\(20\))? unsigned` \(PostgreSQL numeric\(20,0\)\)", cols["patnum"]["description"])
    assert cols["lname"]["description"].startswith("MySQL `varchar(100)`")
    assert cols["balance"]["description"].startswith("MySQL `decimal(12,2)`")
    assert cols["isactive"]["description"].startswith("MySQL `tinyint(1)`")
    assert "data_tests" not in cols["lname"]
    assert "set by the pipeline" in cols["_etl_loaded_at"]["description"]
    # Freshness is the table's last successful sync, read from the ETL's own history.
    assert "loaded_at_field" not in patient["config"]
    assert patient["config"]["freshness"] == {"warn_after": {"count": 26, "period": "hour"},
                                              "error_after": {"count": 50, "period": "hour"}}
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute(patient["config"]["loaded_at_query"])
        [(loaded_at,)] = cur.fetchall()
        cur.execute("SELECT ended_at FROM etl.table_runs WHERE table_name = 'patient' AND status = 'ok'")
        [(ended_at,)] = cur.fetchall()
    pg.close()
    assert loaded_at is not None and loaded_at == ended_at

    procnote = tables["procnote"]
    pcols = {c["name"]: c for c in procnote["columns"]}
    assert list(pcols) == ["patnum", "procnum", "note"]
    # A composite key: each column not_null; uniqueness of the pair is not a column test.
    assert pcols["patnum"]["data_tests"] == ["not_null"] and pcols["procnum"]["data_tests"] == ["not_null"]
    assert "Composite primary key (patnum, procnum)" in procnote["description"]
    # No load-time column: the sync history still says how fresh it is (the legacy spelling could not).
    assert "procnote" in procnote["config"]["loaded_at_query"] and "loaded_at_field" not in procnote

    # The older spelling, to stdout.
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert etl_env.etl("dbt-sources", "--output", "-", "--style", "legacy", "--name", "opendental") == 0
    legacy = yaml.safe_load(buf.getvalue())
    assert legacy["sources"][0]["name"] == "opendental"
    lp = _tables(legacy)["patient"]
    assert lp["loaded_at_field"] == "_etl_loaded_at" and lp["freshness"]["error_after"]["count"] == 50
    assert "freshness" not in _tables(legacy)["procnote"]  # legacy: no column, no freshness check


def test_build_sources_without_mysql_types() -> None:
    t = PgTable("claim", [PgColumn("claimnum", "integer", False), PgColumn("_etl_loaded_at", "timestamp with time zone",
                                                                           False)], ["claimnum"])
    doc = build_sources([t], schema="raw", loaded_at_column="_etl_loaded_at", mysql_types=None)
    [table] = _tables(doc).values()
    assert table["columns"][0]["description"].startswith("PostgreSQL integer (MySQL type not known")
    assert table["config"]["loaded_at_query"] == sync_freshness_query("claim")


def test_freshness_query_names_the_table_as_data() -> None:
    """A quote ends no string literal; a brace is kept from dbt's Jinja."""
    assert "lower(table_name) = 'o''brien'" in sync_freshness_query("o'brien")
    q = sync_freshness_query("a{{b}}")
    assert q.startswith("{% raw %}") and q.endswith("{% endraw %}")
