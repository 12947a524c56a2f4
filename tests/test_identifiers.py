"""Names are data: tables and columns named with quotes, backticks, spaces, semicolons, `%`, `%s`,
`%(x)s`, `:x`, backslashes, braces, unicode and mixed case go through every command unchanged.

The source holds four tables whose table AND column names carry those characters: a keyed
incremental table whose name is long enough that `_etl_new_<name>` passes PostgreSQL's 63 bytes
(integer key, several chunks, parallel COPY, a JSON, a binary, a BIT and an ENUM column, a
secondary index), a table without a primary key, and `café` and `cafe` (a string key and a
composite key; the two names are equal under MySQL's default collation, so they also check that
the state of one is never taken for the other's). Each replica path runs `etl discover`,
`etl plan`, `etl run --full-refresh`, then updates, inserts, deletes, a widened and an added column
in the source, `etl plan` and `etl run` (incremental + deletes + drift), `etl verify`, a corrupted
analytics row found and fixed by `etl verify --repair`, and `etl dbt-sources`. After each run the
three copies are compared table by table, row by row and value by value.

MariaDB stores identifiers in utf8mb3, so an emoji cannot be part of a MySQL name (the test checks
the server refuses it); emoji travel in the values instead. Smaller tests pin the one rule of
tasks/identifiers.py on each path to the servers (raw cursors, SQLAlchemy, COPY, to_regclass), the
conversion of older bookkeeping tables to exact name comparison, and dbt quoting.
"""
from __future__ import annotations

import io

import pymysql
import pytest
import sqlalchemy as sa
import yaml

from tests.test_end_to_end import assert_all_copies_equal

MAIN = "Ord'er \"Q\" `b`; 100% %s %(x)s :x \\ é日本語 Mixed {表}"
NOPK = "no key; \"free\" 100%% \\ :y 'q'"
CAFE_ACCENT = "café"
CAFE = "cafe"
TABLES = (MAIN, NOPK, CAFE_ACCENT, CAFE)

PK = "Pk 'id' \"n\" %s"
CHG = "Changed: at %(x)s"
WIDENED = 'dq"col'
ADDED = 'new "col" %s :z; 日本'
CAFE_CHG = 'upd "at"'


def q(name: str) -> str:
    """MySQL quoting for the test's own SQL (independent of tasks/identifiers.py)."""
    return "`" + name.replace("`", "``") + "`"


def qp(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


SCHEMA = f"""
CREATE TABLE {q(MAIN)} (
  {q(PK)} INT NOT NULL PRIMARY KEY,
  {q(CHG)} TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  `back\\slash` VARCHAR(60),
  `semi;colon --x` INT,
  `tick``s` TEXT,
  {q(WIDENED)} VARCHAR(30),
  `100%` DECIMAL(10,2),
  `%s` SMALLINT,
  `%(x)s` VARCHAR(20),
  `:x` VARCHAR(20),
  `a:b` INT,
  `é日本語` VARCHAR(40),
  `MiXeD Case` DATETIME,
  `{{brace}}` INT,
  `js``on %s` JSON,
  `bl'ob` VARBINARY(20),
  `bit "b"` BIT(3),
  `en:um` ENUM('a','b''c'),
  KEY `ix %s "q"` (`semi;colon --x`)
) ENGINE=InnoDB;
INSERT INTO {q(MAIN)} ({q(PK)}, `back\\slash`, `semi;colon --x`, `tick``s`, {q(WIDENED)}, `100%`, `%s`, `%(x)s`,
  `:x`, `a:b`, `é日本語`, `MiXeD Case`, `{{brace}}`, `js``on %s`, `bl'ob`, `bit "b"`, `en:um`)
SELECT seq, CONCAT('p\\\\q ', seq, ' %s :x ''"`;'), seq % 7, CONCAT('tab\\there\\nnewline 😀 ', seq),
  IF(seq % 5 = 0, NULL, CONCAT('"', seq, '"')), seq * 1.25, seq % 100, CONCAT('%(x)s', seq), CONCAT(':x', seq),
  -seq, CONCAT('日本語 é 🎉 ', seq), '2024-01-01' + INTERVAL seq MINUTE, seq,
  JSON_OBJECT('k%s', seq, 'q"', 'v'''), UNHEX(LPAD(HEX(seq), 8, '0')), seq % 8, IF(seq % 2, 'a', 'b''c')
FROM seq_1_to_1500;

CREATE TABLE {q(NOPK)} (`'` INT, `"` VARCHAR(10), {q('`')} TEXT, `\\` VARCHAR(10), `;` INT, `%(x)s :y` VARCHAR(20));
INSERT INTO {q(NOPK)} SELECT seq, CONCAT('"', seq), CONCAT('`', seq, '\\\\'), '\\\\', seq % 3, CONCAT('%s', seq)
FROM seq_1_to_30;

CREATE TABLE {q(CAFE_ACCENT)} (
  `clé "k"` VARCHAR(20) NOT NULL PRIMARY KEY,
  {q(CAFE_CHG)} TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  `v` TEXT
);
INSERT INTO {q(CAFE_ACCENT)} (`clé "k"`, `v`) SELECT CONCAT('k''%s:', LPAD(seq, 3, '0')), CONCAT('é ', seq)
FROM seq_1_to_60;

CREATE TABLE {q(CAFE)} (
  `a%s` INT NOT NULL, `b:b` VARCHAR(10) NOT NULL,
  {q(CAFE_CHG)} TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  `w` INT,
  PRIMARY KEY (`a%s`, `b:b`)
);
INSERT INTO {q(CAFE)} SELECT seq DIV 2, IF(seq % 2, 'x:y', '%s'), '2020-01-01 00:00:00', seq FROM seq_1_to_60;
"""

CHANGES = f"""
UPDATE {q(MAIN)} SET `100%` = `100%` + 1, `tick``s` = CONCAT(`tick``s`, ' ✓') WHERE {q(PK)} % 50 = 0;
INSERT INTO {q(MAIN)} ({q(PK)}, `back\\slash`, `%s`, `é日本語`, `js``on %s`, `en:um`)
SELECT 1500 + seq, '\\\\%s', seq, '🎉', JSON_ARRAY(':x', '%(x)s'), 'b''c' FROM seq_1_to_20;
DELETE FROM {q(MAIN)} WHERE {q(PK)} IN (3, 7, 11);
ALTER TABLE {q(MAIN)} MODIFY {q(WIDENED)} VARCHAR(60);
UPDATE {q(MAIN)} SET {q(WIDENED)} = REPEAT('"w%s', 12) WHERE {q(PK)} = 1;
UPDATE {q(NOPK)} SET `"` = 'upd%s' WHERE `'` = 1;
INSERT INTO {q(NOPK)} VALUES (99, ':z', '`', '\\\\', 1, '%(x)s');
ALTER TABLE {q(CAFE_ACCENT)} ADD COLUMN {q(ADDED)} VARCHAR(20) NOT NULL DEFAULT 'd%s:z' AFTER `clé "k"`;
UPDATE {q(CAFE_ACCENT)} SET `v` = 'changed' WHERE `clé "k"` = 'k''%s:001';
UPDATE {q(CAFE)} SET `w` = `w` + 100, {q(CAFE_CHG)} = '2021-06-01 00:00:00' WHERE `a%s` <= 5;
DELETE FROM {q(CAFE)} WHERE `a%s` = 20;
"""


def _table_runs(env) -> dict[str, dict]:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT DISTINCT ON (table_name) table_name, mode, status, notes, error FROM etl.table_runs "
                    "ORDER BY table_name, started_at DESC")
        out = {r[0]: dict(zip(["mode", "status", "notes", "error"], r[1:])) for r in cur.fetchall()}
    pg.close()
    return out


def _state_names(env) -> tuple[set[str], set[str]]:
    """Table names with saved state, compared byte for byte, in the replica and in analytics."""
    rep = env.mysql(env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT DISTINCT CAST(table_name AS BINARY) FROM `_etl_state`")
        replica = {bytes(r[0]).decode() for r in cur.fetchall()}
    rep.close()
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT DISTINCT table_name FROM etl.table_state")
        analytics = {r[0] for r in cur.fetchall()}
    pg.close()
    return replica, analytics


def _pg_tables(env) -> set[str]:
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'raw'")
        out = {r[0] for r in cur.fetchall()}
    pg.close()
    return out


def test_the_names_are_as_nasty_as_promised(etl_env) -> None:
    assert 63 < len(f"_etl_new_{MAIN.lower()}".encode()) and len(MAIN.lower().encode()) <= 63
    for ch in ("'", '"', "`", " ", ";", "%", "%s", "%(x)s", ":x", "\\", "é", "日本語", "{"):
        assert ch in MAIN, ch
    conn = etl_env.mysql()
    with pytest.raises(pymysql.MySQLError, match="Invalid utf8mb4 character string"):
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE `t😀` (id INT)")
    conn.close()


NAMES = (MAIN, NOPK, PK, CHG, ADDED, "%", "%%", "%s", "%(x)s", ":x", "a:b", "'", '"', "`", "\\", ";", "{x}", "é日本語")


def test_every_path_to_the_server_formats_a_quoted_name_exactly_once(etl_env) -> None:
    """Raw cursors (`execute`), SQLAlchemy (`exec_driver_sql`) and COPY all see the name unchanged."""
    from tasks.identifiers import copy_expert, execute, mysql_ident, pg_ident, pg_regclass, readable

    my, pg = etl_env.mysql(), etl_env.pg()
    with my.cursor() as mc, pg.cursor() as pc:
        for n in NAMES:
            assert [d[0] for d in execute(mc, f"SELECT %s AS {mysql_ident(n)}", (1,)).description] == [n]
            assert [d[0] for d in execute(mc, f"SELECT 1 AS {mysql_ident(n)}").description] == [n]
            assert [d[0] for d in execute(pc, f"SELECT 1 AS {pg_ident(n)}").description] == [n]
            assert readable(mysql_ident(n)) == q(n)
        execute(pc, f"CREATE TABLE {pg_ident(MAIN)} ({pg_ident(PK)} int, {pg_ident('%(x)s')} text)")
        copy_expert(pc, f"COPY {pg_ident(MAIN)} ({pg_ident(PK)}, {pg_ident('%(x)s')}) FROM STDIN",
                    io.BytesIO("7\t%s:x\n".encode()), size=1024)
        pc.execute("SELECT * FROM " + qp(MAIN))
        assert pc.fetchall() == [(7, "%s:x")]
        pc.execute("SELECT to_regclass(%s) IS NOT NULL", (pg_regclass("public", MAIN),))
        assert pc.fetchone() == (True,)
    my.close()
    pg.close()
    engine = sa.create_engine(etl_env.source_url)
    with engine.connect() as conn:
        for n in NAMES:
            assert list(conn.exec_driver_sql(f"SELECT 1 AS {mysql_ident(n)}").keys()) == [n]
    engine.dispose()


def test_old_state_tables_are_converted_to_exact_name_comparison(etl_env) -> None:
    """A replica written before names compared byte for byte keeps its rows and stops mixing `café` with `cafe`."""
    from tasks import checkpoints, state

    etl_env.source_sql(
        "CREATE TABLE _etl_state (table_name VARCHAR(64) NOT NULL, column_name VARCHAR(64) NOT NULL, "
        "wm_datetime DATETIME(6) NULL, wm_int BIGINT NULL, generation BIGINT NOT NULL, "
        "run_count BIGINT NOT NULL DEFAULT 0, source_time_zone VARCHAR(64) NULL, updated_at DATETIME(6) NOT NULL, "
        "PRIMARY KEY (table_name, column_name)) DEFAULT CHARSET=utf8mb4 COLLATE utf8mb4_general_ci;"
        "INSERT INTO _etl_state VALUES ('café', '', NULL, NULL, 4, 2, NULL, NOW());"
        "CREATE TABLE _etl_checkpoints (table_name VARCHAR(64) NOT NULL PRIMARY KEY, shadow VARCHAR(64) NOT NULL, "
        "last_key TEXT NULL, rows_done BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL) "
        "DEFAULT CHARSET=utf8mb4 COLLATE utf8mb4_general_ci;"
    )
    conn = etl_env.mysql()
    with conn.cursor() as cur:
        state.mysql_ensure(cur)
        checkpoints.mysql_ensure(cur)
        assert state.mysql_load(cur, "cafe") is None
        assert state.mysql_load(cur, "café").generation == 4
        state.mysql_save(cur, "cafe", state.TableState(generation=1))
        assert state.mysql_load(cur, "café").generation == 4
        checkpoints.mysql_save(cur, "café", "_etl_new_café", (1,), 10)
        checkpoints.mysql_save(cur, "cafe", "_etl_new_cafe", (2,), 20)
        assert checkpoints.mysql_load(cur, "café") == ("_etl_new_café", (1,), 10)
        cur.execute("SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME IN ('table_name', 'column_name')")
        assert {r[2] for r in cur.fetchall()} == {"utf8mb4_bin"}
    conn.close()


@pytest.mark.parametrize("method", ["server", "stream"])
def test_nasty_names_survive_every_command(etl_env, prefect_harness, monkeypatch, capsys, tmp_path, method) -> None:
    etl_env.source_sql(SCHEMA)
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    # Several chunks everywhere, two parallel COPY streams for the 1,500-row table, small GROUP_CONCAT blocks.
    from tasks import analytics_full, streaming

    monkeypatch.setattr(analytics_full, "PARALLEL_MIN_ROWS", 1000)
    monkeypatch.setattr(streaming, "GROUP_BYTES", 16 * 1024)

    # discover writes YAML that reads back to the same names, keys and change columns.
    assert etl_env.etl("discover") == 0
    cfg = yaml.safe_load(etl_env.config_path.read_text(encoding="utf-8"))
    assert set(cfg["tables"]) == set(TABLES)
    main = cfg["tables"][MAIN]
    assert main["primary_key"] == [PK] and main["incremental_columns"] == [CHG] and main["mode"] == "incremental"
    assert cfg["tables"][CAFE]["primary_key"] == ["a%s", "b:b"]
    assert cfg["tables"][CAFE]["incremental_columns"] == [CAFE_CHG]
    assert cfg["tables"][NOPK]["primary_key"] == []
    cfg["defaults"]["batch_size"] = 200
    cfg["tables"][CAFE]["batch_size"] = cfg["tables"][CAFE_ACCENT]["batch_size"] = 16
    etl_env.write_config(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))

    capsys.readouterr()
    assert etl_env.etl("plan") == 0
    plan = capsys.readouterr().out
    assert MAIN in plan and "first run" in plan

    assert etl_env.etl("run", "--full-refresh") == 0
    assert set(assert_all_copies_equal(etl_env)) == set(TABLES)
    assert _pg_tables(etl_env) == {t.lower() for t in TABLES}  # no shadow table left, no name truncated
    assert _state_names(etl_env) == (set(TABLES), set(t.lower() for t in TABLES))
    runs = _table_runs(etl_env)
    assert "2 parallel COPY streams" in runs[MAIN]["notes"]
    # Prefect's task run names carry the table names unchanged: a task run per phase for a table of
    # its own flow run, one `sync-` task run for a table of a batch (flows/wiring.sync_table).
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    phases = {t: {f"{phase}-{t}" for phase in ("replicate", "load", "verify")} for t in TABLES}
    wanted = set().union(*phases.values()) | {f"sync-{t}" for t in TABLES}
    with get_client(sync_client=True) as client:
        found = {r.name for r in client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=sorted(wanted))))}
    for t in TABLES:
        assert phases[t] <= found or f"sync-{t}" in found, (t, sorted(found))
    assert phases[MAIN] <= found  # the big table runs in a flow run of its own

    etl_env.source_sql(CHANGES)
    capsys.readouterr()
    assert etl_env.etl("plan") == 0
    plan = capsys.readouterr().out
    assert f"ADD COLUMN {q(ADDED)} varchar(20) NOT NULL DEFAULT 'd%s:z' AFTER `clé \"k\"`" in plan
    assert f"MODIFY COLUMN {q(WIDENED)} varchar(60)" in plan

    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)
    runs = _table_runs(etl_env)
    assert {r["status"] for r in runs.values()} == {"ok"}
    assert runs[MAIN]["mode"] == "incremental"
    assert "deletes checked: 3 removed" in runs[MAIN]["notes"] and "widened" in runs[MAIN]["notes"]
    assert runs[CAFE]["mode"] == "incremental" and "deletes checked: 2 removed" in runs[CAFE]["notes"]
    assert runs[CAFE_ACCENT]["mode"] == "full" and ADDED in runs[CAFE_ACCENT]["notes"]
    assert runs[NOPK]["mode"] == "full"
    assert _state_names(etl_env) == (set(TABLES), set(t.lower() for t in TABLES))

    assert etl_env.etl("verify") == 0
    # Corrupt analytics where verify looks (key and change columns): one changed row, one lost row.
    pg_main, pg_pk, pg_chg = qp(MAIN.lower()), qp(PK.lower()), qp(CHG.lower())
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute(f"UPDATE raw.{pg_main} SET {pg_chg} = '2001-01-01' WHERE {pg_pk} = 10")
        cur.execute(f"DELETE FROM raw.{pg_main} WHERE {pg_pk} = 1200")
        assert cur.rowcount == 1
    pg.close()
    capsys.readouterr()
    assert etl_env.etl("verify") == 1
    assert MAIN in capsys.readouterr().err
    assert etl_env.etl("verify", "--repair") == 0
    assert_all_copies_equal(etl_env)

    out = tmp_path / "dbt" / "sources.yml"
    assert etl_env.etl("dbt-sources", "--output", str(out)) == 0
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    tables = {t["name"]: t for t in doc["sources"][0]["tables"]}
    assert set(tables) == {t.lower() for t in TABLES}
    main_cols = {c["name"]: c for c in tables[MAIN.lower()]["columns"]}
    assert {PK.lower(), CHG.lower(), "js`on %s", "{brace}", ":x", "%(x)s", "é日本語"} <= set(main_cols)
    # dbt must quote these names in the tests it generates, or its SQL would not parse.
    assert main_cols[PK.lower()]["quote"] is True and main_cols[PK.lower()]["data_tests"] == ["unique", "not_null"]
    assert tables[MAIN.lower()]["quoting"] == {"identifier": True}


def test_dbt_sources_quote_every_name_sql_cannot_write_bare(etl_env) -> None:
    from tasks.dbt_sources import PgColumn, PgTable, build_sources, read_reserved_words

    pg = etl_env.pg()
    with pg.cursor() as cur:
        reserved = read_reserved_words(cur)
    pg.close()
    cols = [PgColumn(n, "text", True) for n in ("id", "user", "order", "a b", "Mixed", "x:y", "%s", "time_2")]
    doc = build_sources([PgTable("order", cols, ["id"]), PgTable("plain_1", cols[:1], ["id"])], schema="raw",
                        reserved=reserved)
    order, plain = doc["sources"][0]["tables"]
    assert order["quoting"] == {"identifier": True} and "quoting" not in plain
    quoted = {c["name"] for c in order["columns"] if c.get("quote")}
    assert quoted == {"user", "order", "a b", "Mixed", "x:y", "%s"}
