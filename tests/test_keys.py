"""Keys compared the way the server compares them (issue 10, items 1 and 7).

Each test runs the incremental scenario against the real servers: a full run, changes in the
source, incremental runs (with delete detection every run), and then compares all three databases
value by value. The runs call tasks/sync.py's replicate and load directly (no Prefect), on both
replica paths where the path matters, with batches small enough that paging crosses chunk
boundaries.

- a VARCHAR key respelled under a case-insensitive / PAD SPACE collation ('abc' -> 'ABC',
  'zz' -> 'zz ', 'cafe' -> 'café') is the same row: kept, with the new spelling, in the replica and
  in PostgreSQL (where the old spelling is another key and must go);
- an ENUM (and SET) primary key sorts by position, so keyset paging compares positions;
- a key column made case-sensitive is drift, refused with a message (no 'X1' merged onto 'x1');
- a secondary UNIQUE index does not take part in the merge: an account re-created with the same
  user name, and a name moved between two rows with the same change stamp, converge;
- a FLOAT key is refused with a message naming the table and column.
"""
from __future__ import annotations

import pytest
import yaml

from tests.test_end_to_end import assert_all_copies_equal

METHODS = ["server", "stream"]


def _config(env, tables: dict[str, dict], *, batch_size: int = 3) -> None:
    cfg = {
        "defaults": {"batch_size": batch_size, "deletes": "detect", "deletes_every": 1,
                     "deletes_max_fraction": 1.0, "deletes_min_rows": 1000},
        "tables": {name: {"mode": "incremental", "incremental_columns": ["changed"], **extra}
                   for name, extra in tables.items()},
    }
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))


def _run(env, method: str) -> list:
    """One run of every configured table, as `etl run` does it minus the orchestration."""
    from sqlalchemy.engine import make_url

    from blocks.connectors import urls_from_settings
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks import sync
    from tasks.connections import open_engines

    settings = Settings()
    cfg = load_pipeline_config(settings.config)
    urls = urls_from_settings(settings)
    source_db, replica_db = (make_url(u).database for u in (urls.source, urls.replica))
    out = []
    with open_engines(urls, workers=1, max_source_connections=settings.max_source_queries) as engines:
        for table in cfg.resolved_tables(None):
            rep = sync.replicate(engines, table, source_db=source_db, replica_db=replica_db, method=method,
                                 full_refresh=False, resume=False)
            ana = sync.load(engines, table, replica_db=replica_db, pg_schema=settings.analytics_schema,
                            column_case=cfg.analytics.column_case, full_refresh=False, resume=False,
                            loaded_at_column=cfg.analytics.loaded_at_column)
            out.append((table.name, rep, ana))
    return out


def _src(env, *statements: str) -> None:
    conn = env.mysql()
    try:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
    finally:
        conn.close()


def _rows(conn, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def _pg_keys(env, sql: str) -> list[tuple]:
    pg = env.pg()
    try:
        return _rows(pg, sql)
    finally:
        pg.close()


@pytest.mark.parametrize("method", METHODS)
def test_respelled_text_keys_stay_one_row_everywhere(etl_env, monkeypatch, method) -> None:
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    # The replica database's own default must not decide any column's collation.
    _src(etl_env, f"CREATE DATABASE `{etl_env.replica_db}` CHARACTER SET latin1 COLLATE latin1_german1_ci")
    etl_env.source_sql("""
        CREATE TABLE account (
          code VARCHAR(20) NOT NULL PRIMARY KEY,
          name VARCHAR(30) NOT NULL,
          legacy VARCHAR(10) CHARACTER SET latin1 NULL,
          changed DATETIME NOT NULL
        ) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
        INSERT INTO account VALUES ('abc', 'one', 'l1', '2024-01-01'), ('zz', 'two', NULL, '2024-01-01'),
          ('cafe', 'three', 'l3', '2024-01-01'), ('m1', 'four', NULL, '2024-01-01'), ('m2', 'five', NULL, '2024-01-01'),
          ('m3', 'six', NULL, '2024-01-01'), ('m4', 'seven', NULL, '2024-01-01');
        -- a composite key mixing an integer and a case-insensitive string
        CREATE TABLE tag (
          owner INT NOT NULL, label VARCHAR(20) NOT NULL, note VARCHAR(10) NULL, changed DATETIME NOT NULL,
          PRIMARY KEY (owner, label)
        );
        INSERT INTO tag VALUES (1, 'red', 'a', '2024-01-01'), (1, 'Blue', 'b', '2024-01-01'),
          (2, 'red', 'c', '2024-01-01'), (2, 'green', 'd', '2024-01-01'), (3, 'x', 'e', '2024-01-01');
    """)
    _config(etl_env, {"account": {}, "tag": {}})
    _run(etl_env, method)
    assert_all_copies_equal(etl_env)

    # The same keys to MySQL (general_ci: case, accents, PAD SPACE), other bytes.
    _src(etl_env,
         "UPDATE account SET code = 'ABC', changed = '2024-02-01' WHERE code = 'abc'",
         "UPDATE account SET code = 'zz ', changed = '2024-02-01' WHERE code = 'zz'",
         "UPDATE account SET code = 'café', name = 'trois', changed = '2024-02-01' WHERE code = 'cafe'",
         "UPDATE tag SET label = 'RED', changed = '2024-02-01' WHERE owner = 2 AND label = 'red'",
         "UPDATE tag SET label = 'blue', changed = '2024-02-01' WHERE owner = 1 AND label = 'Blue'")
    _run(etl_env, method)
    _run(etl_env, method)  # a second run must neither delete nor duplicate anything
    assert_all_copies_equal(etl_env)
    assert _pg_keys(etl_env, "SELECT code FROM raw.account ORDER BY code COLLATE \"C\"") == [
        ("ABC",), ("café",), ("m1",), ("m2",), ("m3",), ("m4",), ("zz ",)]
    assert _pg_keys(etl_env, "SELECT owner, label FROM raw.tag ORDER BY owner, label COLLATE \"C\"") == [
        (1, "blue"), (1, "red"), (2, "RED"), (2, "green"), (3, "x")]

    # And back, plus a real delete next to a respelling: only the deleted row goes.
    _src(etl_env,
         "UPDATE account SET code = 'abc', changed = '2024-03-01' WHERE code = 'ABC'",
         "DELETE FROM account WHERE code = 'm2'")
    _run(etl_env, method)
    assert_all_copies_equal(etl_env)
    assert _pg_keys(etl_env, "SELECT count(*) FROM raw.account") == [(6,)]


@pytest.mark.parametrize("method", METHODS)
def test_enum_and_set_keys_page_in_server_order(etl_env, monkeypatch, method) -> None:
    """ENUM members in an order unlike their text, so string comparison would skip rows at every
    chunk boundary (batch_size 2)."""
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    etl_env.source_sql("""
        CREATE TABLE stage_item (
          stage ENUM('zeta', 'beta', 'alpha', 'omega', 'delta') NOT NULL,
          n INT NOT NULL,
          v VARCHAR(10) NOT NULL,
          changed DATETIME NOT NULL,
          PRIMARY KEY (stage, n)
        );
        INSERT INTO stage_item SELECT ELT(1 + seq % 5, 'zeta', 'beta', 'alpha', 'omega', 'delta'), seq DIV 5,
          CONCAT('v', seq), '2024-01-01' FROM seq_0_to_24;
        CREATE TABLE single_enum (
          k ENUM('c', 'b', 'a', 'e', 'd') NOT NULL PRIMARY KEY, v INT NOT NULL, changed DATETIME NOT NULL
        );
        INSERT INTO single_enum VALUES ('c', 1, '2024-01-01'), ('b', 2, '2024-01-01'), ('a', 3, '2024-01-01'),
          ('e', 4, '2024-01-01'), ('d', 5, '2024-01-01');
        CREATE TABLE flags (
          f SET('x', 'w', 'v') NOT NULL PRIMARY KEY, v INT NOT NULL, changed DATETIME NOT NULL
        );
        INSERT INTO flags VALUES ('x', 1, '2024-01-01'), ('w', 2, '2024-01-01'), ('x,w', 3, '2024-01-01'),
          ('v', 4, '2024-01-01'), ('x,v', 5, '2024-01-01'), ('w,v', 6, '2024-01-01'), ('', 7, '2024-01-01');
    """)
    _config(etl_env, {"stage_item": {}, "single_enum": {}, "flags": {}}, batch_size=2)
    _run(etl_env, method)
    assert_all_copies_equal(etl_env)

    # Every row changes at once (one stamp): the window is paged by (changed, key) across chunks.
    _src(etl_env, "UPDATE stage_item SET v = CONCAT(v, '+'), changed = '2024-02-01'",
         "UPDATE single_enum SET v = v + 10, changed = '2024-02-01'",
         "UPDATE flags SET v = v + 10, changed = '2024-02-01'",
         "DELETE FROM stage_item WHERE stage = 'omega' AND n = 2",
         "DELETE FROM single_enum WHERE k = 'a'",
         "DELETE FROM flags WHERE f = 'x,w'")
    _run(etl_env, method)
    assert_all_copies_equal(etl_env)
    assert _pg_keys(etl_env, "SELECT count(*), count(*) FILTER (WHERE v LIKE '%+') FROM raw.stage_item") == [(24, 24)]


def test_key_column_made_case_sensitive_is_refused(etl_env, monkeypatch) -> None:
    monkeypatch.setenv("ETL_REPLICA_METHOD", "server")
    etl_env.source_sql("""
        CREATE TABLE code (
          k VARCHAR(10) NOT NULL PRIMARY KEY, v INT NOT NULL, note VARCHAR(10) NULL, changed DATETIME NOT NULL
        );
        INSERT INTO code VALUES ('x1', 1, 'n', '2024-01-01'), ('y1', 2, 'n', '2024-01-01');
    """)
    _config(etl_env, {"code": {}})
    _run(etl_env, method="server")

    # A non-key column's collation is applied in place.
    _src(etl_env, "ALTER TABLE code MODIFY note VARCHAR(10) COLLATE utf8mb4_bin NULL",
         "UPDATE code SET v = 5, changed = '2024-02-01' WHERE k = 'y1'")
    _run(etl_env, method="server")
    assert_all_copies_equal(etl_env)

    # The key made case-sensitive: 'X1' is a new row now, and must never be merged onto 'x1'.
    _src(etl_env, "ALTER TABLE code MODIFY k VARCHAR(10) COLLATE utf8mb4_bin NOT NULL",
         "INSERT INTO code VALUES ('X1', 3, 'n', '2024-02-02')")
    from tasks.errors import SchemaError

    with pytest.raises(SchemaError, match=r"table 'code'.*collation of key column 'k' changed from "
                                          r"utf8mb4_general_ci to utf8mb4_bin.*--full-refresh --tables code"):
        _run(etl_env, method="server")
    rep = etl_env.mysql(etl_env.replica_db)
    try:
        assert _rows(rep, "SELECT CAST(k AS BINARY), v FROM code ORDER BY 1") == [(b"x1", 1), (b"y1", 5)]
    finally:
        rep.close()


@pytest.mark.parametrize("method", METHODS)
def test_secondary_unique_keys_do_not_take_part_in_the_merge(etl_env, monkeypatch, method) -> None:
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    etl_env.source_sql("""
        CREATE TABLE userod (
          UserNum BIGINT AUTO_INCREMENT PRIMARY KEY,
          UserName VARCHAR(30) NOT NULL,
          Email VARCHAR(40) NULL,
          changed DATETIME NOT NULL,
          UNIQUE KEY uk_name (UserName),
          UNIQUE KEY uk_email (Email)
        );
        INSERT INTO userod (UserName, Email, changed) VALUES ('alice', 'a@x', '2024-01-01'),
          ('bob', 'b@x', '2024-01-01'), ('carol', 'c@x', '2024-01-01'), ('dave', NULL, '2024-01-01');
    """)
    _config(etl_env, {"userod": {}})
    _run(etl_env, method)
    assert_all_copies_equal(etl_env)

    # An account deleted and re-created with the same user name (a new UserNum), and a name moved
    # from one row to another in one transaction (both rows get the same stamp; merged in
    # (changed, UserNum) order the first row would take 'carol' while row 3 still holds it).
    _src(etl_env,
         "DELETE FROM userod WHERE UserName = 'alice'",
         "INSERT INTO userod (UserName, Email, changed) VALUES ('alice', 'a2@x', '2024-02-01')",
         "START TRANSACTION",
         "UPDATE userod SET UserName = 'carol-old', changed = '2024-02-02' WHERE UserName = 'carol'",
         "UPDATE userod SET UserName = 'carol', changed = '2024-02-02' WHERE UserName = 'bob'",
         "UPDATE userod SET UserName = 'bob', changed = '2024-02-02' WHERE UserName = 'carol-old'",
         "COMMIT")
    _run(etl_env, method)
    _run(etl_env, method)
    assert_all_copies_equal(etl_env)
    assert _pg_keys(etl_env, "SELECT username FROM raw.userod ORDER BY usernum") == [
        ("carol",), ("bob",), ("dave",), ("alice",)]

    # The replica's secondary indexes are there, non-unique; the source's unique keys still count.
    rep = etl_env.mysql(etl_env.replica_db)
    try:
        assert _rows(rep, "SELECT INDEX_NAME, NON_UNIQUE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
                          f"'{etl_env.replica_db}' AND TABLE_NAME = 'userod' ORDER BY 1") == [
            ("PRIMARY", 0), ("uk_email", 1), ("uk_name", 1)]
    finally:
        rep.close()


def test_replica_created_with_unique_indexes_is_relaxed(etl_env, monkeypatch) -> None:
    """A replica table built before this change (UNIQUE indexes copied) is fixed on its next merge."""
    monkeypatch.setenv("ETL_REPLICA_METHOD", "server")
    etl_env.source_sql("""
        CREATE TABLE login (
          id INT PRIMARY KEY, name VARCHAR(20) NOT NULL, changed DATETIME NOT NULL, UNIQUE KEY (name)
        );
        INSERT INTO login VALUES (1, 'ann', '2024-01-01'), (2, 'ben', '2024-01-01');
    """)
    _config(etl_env, {"login": {}})
    _run(etl_env, method="server")
    rep = etl_env.mysql(etl_env.replica_db)
    try:
        with rep.cursor() as cur:
            cur.execute("ALTER TABLE login DROP INDEX name, ADD UNIQUE KEY name (name)")
        _src(etl_env, "UPDATE login SET name = 'tmp', changed = '2024-02-01' WHERE id = 1",
             "UPDATE login SET name = 'ann', changed = '2024-02-01' WHERE id = 2",
             "UPDATE login SET name = 'ben', changed = '2024-02-01' WHERE id = 1")
        _run(etl_env, method="server")
        assert_all_copies_equal(etl_env)
        assert _rows(rep, "SELECT NON_UNIQUE FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
                          f"'{etl_env.replica_db}' AND TABLE_NAME = 'login' AND INDEX_NAME = 'name'") == [(1,)]
    finally:
        rep.close()


def test_floating_point_key_is_refused(etl_env, monkeypatch) -> None:
    monkeypatch.setenv("ETL_REPLICA_METHOD", "server")
    etl_env.source_sql("""
        CREATE TABLE reading (x FLOAT NOT NULL PRIMARY KEY, v INT NOT NULL, changed DATETIME NOT NULL);
        INSERT INTO reading VALUES (0.1, 1, '2024-01-01'), (0.2, 2, '2024-01-01'), (0.3, 3, '2024-01-01');
    """)
    _config(etl_env, {"reading": {}}, batch_size=1)
    from tasks.errors import SchemaError

    with pytest.raises(SchemaError, match=r"table 'reading': key column 'x' is float; .*DECIMAL"):
        _run(etl_env, method="server")
    rep = etl_env.mysql(etl_env.replica_db)
    try:
        assert _rows(rep, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                          f"'{etl_env.replica_db}' AND TABLE_NAME LIKE '%%reading'") == [(0,)]
    finally:
        rep.close()


def test_delete_detection_takes_a_respelled_key_for_the_same_key(etl_env, monkeypatch) -> None:
    """A key respelled without its change column moving (so no merge sees it yet) is not deleted:
    delete detection compares keys by the column's collation, in SQL."""
    monkeypatch.setenv("ETL_REPLICA_METHOD", "stream")
    etl_env.source_sql("""
        CREATE TABLE account (code VARCHAR(20) NOT NULL PRIMARY KEY, v INT NOT NULL, changed DATETIME NOT NULL);
        INSERT INTO account VALUES ('abc', 1, '2024-01-01'), ('zz', 2, '2024-01-01'), ('q', 3, '2024-01-01'),
          ('r', 4, '2024-01-05');
    """)
    _config(etl_env, {"account": {}}, batch_size=2)
    _run(etl_env, method="stream")
    _src(etl_env, "UPDATE account SET code = 'ABC' WHERE code = 'abc'",
         "UPDATE account SET code = 'zz  ' WHERE code = 'zz'",
         "DELETE FROM account WHERE code = 'q'")
    _run(etl_env, method="stream")
    # Only the real delete went; the respelled rows are still there (in their old spelling: their
    # change column is behind the watermark, so no merge has read them yet).
    rep = etl_env.mysql(etl_env.replica_db)
    try:
        assert _rows(rep, "SELECT CAST(code AS BINARY) FROM account ORDER BY 1") == [(b"abc",), (b"r",), (b"zz",)]
    finally:
        rep.close()
    assert _pg_keys(etl_env, "SELECT code FROM raw.account ORDER BY code COLLATE \"C\"") == [("abc",), ("r",), ("zz",)]
    # Once they are stamped, the merge carries the new spelling everywhere.
    _src(etl_env, "UPDATE account SET changed = '2024-02-01' WHERE code IN ('abc', 'zz')")
    _run(etl_env, method="stream")
    assert_all_copies_equal(etl_env)
