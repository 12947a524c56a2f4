"""A config that does not fit the source fails the tables it names, each with one line naming the
table, the column and the key to fix, before any row of that table moves; the other tables load."""
from __future__ import annotations

from tests.test_end_to_end import assert_all_copies_equal

SOURCE = """
CREATE TABLE visit (id INT PRIMARY KEY, v VARCHAR(10), changed TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
  ON UPDATE CURRENT_TIMESTAMP);
INSERT INTO visit (id, v) SELECT seq, 'v' FROM seq_1_to_50;
CREATE TABLE claim LIKE visit; INSERT INTO claim SELECT * FROM visit;
CREATE TABLE note (id INT NOT NULL, kind INT NOT NULL, body VARCHAR(10)); INSERT INTO note VALUES (1, 1, 'a'), (2, 1, 'b');
CREATE TABLE fine LIKE visit; INSERT INTO fine SELECT * FROM visit;
"""

CONFIG = """
tables:
  visit: {primary_key: [idd]}
  claim: {primary_key: [id], mode: incremental, incremental_columns: [chnaged]}
  note: {primary_key: [kind]}
  fine: {primary_key: [id], mode: incremental, incremental_columns: [changed]}
"""

EXPECTED = {
    "visit": "table 'visit': primary_key column 'idd' does not exist (did you mean 'id'?); fix tables.visit.primary_key",
    "claim": "table 'claim': incremental column 'chnaged' does not exist (did you mean 'changed'?); "
             "fix tables.claim.incremental_columns",
    "note": "tables.note.primary_key",
}


def test_config_that_does_not_fit_the_source_fails_those_tables_by_name(etl_env, capsys) -> None:
    etl_env.source_sql(SOURCE)
    etl_env.write_config(CONFIG)
    assert etl_env.etl("plan") == 1  # a table would fail
    plan = capsys.readouterr().out
    for table, message in EXPECTED.items():
        assert message in plan, (table, plan)
    assert "3 table(s) have problems that would fail them" in plan

    result = etl_env.run_plain(check=False)
    assert sorted(result.failed) == sorted(EXPECTED)
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, status, error FROM etl.table_runs ORDER BY table_name")
        runs = {t: (status, error) for t, status, error in cur.fetchall()}
        # Nothing of the failed tables reached analytics, not even an empty table.
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'raw'")
        assert {r[0] for r in cur.fetchall()} == {"fine"}
    pg.close()
    assert runs["fine"][0] == "ok"
    for table, message in EXPECTED.items():
        status, error = runs[table]
        assert status == "failed" and message in error and "\n" not in error, (table, error)
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert {r[0] for r in cur.fetchall() if not r[0].startswith("_etl_")} == {"fine"}
    rep.close()
    assert_all_copies_equal(etl_env, skip=("visit", "claim", "note"))
