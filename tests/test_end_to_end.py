"""End to end through `etl discover` + `etl run`: every MySQL type arrives unchanged, value by value.

The fixture schema (tests/fixtures/all_types.sql) holds every type and edge value the pipeline
promises to carry. After the run, each replica table must equal its source table exactly and
each PostgreSQL table must hold what the type mapping says, compared row by row and value by value.
Both replica paths (server-side INSERT..SELECT and the LOAD DATA stream) and small batches (so
every keyset path runs several chunks) are exercised.
"""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import FIXTURES
from tests.dbcompare import assert_mysql_equal, assert_pg_matches_mysql


def base_tables(conn, db: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME NOT LIKE '\\_etl%%' ORDER BY 1", (db,))
        return [r[0] for r in cur.fetchall()]


def assert_all_copies_equal(env, *, boolean_columns: dict[str, tuple[str, ...]] | None = None,
                            skip: tuple[str, ...] = ()) -> list[str]:
    src, rep, pg = env.mysql(env.source_db), env.mysql(env.replica_db), env.pg()
    try:
        tables = [t for t in base_tables(src, env.source_db) if t not in skip]
        assert tables
        assert set(base_tables(rep, env.replica_db)) >= set(tables)
        for t in tables:
            assert_mysql_equal(src, env.source_db, rep, env.replica_db, t)
            assert_pg_matches_mysql(src, env.source_db, pg, env.pg_schema, t,
                                    boolean_columns=(boolean_columns or {}).get(t, ()))
        return tables
    finally:
        src.close()
        rep.close()
        pg.close()


def discover_with(env, **defaults) -> dict:
    assert env.etl("discover") == 0
    cfg = yaml.safe_load(env.config_path.read_text())
    cfg["defaults"].update(defaults)
    env.write_config(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


@pytest.mark.parametrize("method", ["server", "stream"])
def test_every_type_arrives_unchanged(etl_env, monkeypatch, method) -> None:
    etl_env.source_sql((FIXTURES / "all_types.sql").read_text(encoding="utf-8"))
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    # Exercise every fast path on small data: parallel COPY streams for the 3,000-row table and
    # GROUP_CONCAT blocks small enough that each chunk takes several of them.
    from tasks import analytics_full, streaming

    monkeypatch.setattr(analytics_full, "PARALLEL_MIN_ROWS", 1000)
    monkeypatch.setattr(streaming, "GROUP_BYTES", 64 * 1024)
    discover_with(etl_env, batch_size=700)

    assert etl_env.run() == 0
    tables = assert_all_copies_equal(etl_env)
    assert {"wide_rows", "no_pk", "composite_pk", "MixedCase", "nul_text"} <= set(tables)

    pg = etl_env.pg()
    with pg.cursor() as cur:
        # Table names are lower-cased; mixed-case columns too; the primary key is carried over.
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'raw' "
                    "AND table_name = 'mixedcase' ORDER BY ordinal_position")
        assert all(c == c.lower() for (c,) in cur.fetchall())
        cur.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = 'raw.composite_pk'::regclass")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = 'raw.no_pk'::regclass")
        assert cur.fetchone()[0] == 0
        # NUL characters were removed, counted and reported in the run's metrics.
        cur.execute("SELECT notes, status, analytics_rows FROM etl.table_runs WHERE table_name = 'nul_text'")
        notes, status, rows = cur.fetchone()
        assert status == "ok" and rows > 0
        assert "NUL characters removed" in notes and "columns holding them: t (" in notes
        # Several chunks and two parallel COPY streams were really used for the big table.
        cur.execute("SELECT count(*) FROM raw.wide_rows")
        assert cur.fetchone()[0] > 700 * 2
        cur.execute("SELECT notes FROM etl.table_runs WHERE table_name = 'wide_rows'")
        assert "2 parallel COPY streams" in cur.fetchone()[0]
        # No shadow table is left behind.
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'raw' AND tablename LIKE '\\_etl%%'")
        assert cur.fetchone()[0] == 0
    pg.close()

    # A second run over existing tables swaps again and stays identical.
    assert etl_env.run("--tables", "wide_rows,composite_pk") == 0
    assert_all_copies_equal(etl_env)


def test_boolean_mapping_is_exact_or_loud(etl_env) -> None:
    etl_env.source_sql(
        "CREATE TABLE flags (id INT PRIMARY KEY, IsActive TINYINT(1), IsHidden TINYINT(1) NOT NULL);"
        "INSERT INTO flags VALUES (1, 1, 0), (2, 0, 1), (3, NULL, 1), (4, 7, 0);"
        "CREATE TABLE fine (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO fine VALUES (1, 'x');"
    )
    etl_env.write_config(
        "tables:\n"
        "  flags: {primary_key: [id], boolean_columns: [IsHidden]}\n"
        "  fine: {primary_key: [id]}\n"
    )
    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env, boolean_columns={"flags": ("IsHidden",)})
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT id, isactive, ishidden FROM raw.flags ORDER BY id")
        assert cur.fetchall() == [(1, 1, False), (2, 0, True), (3, None, True), (4, 7, False)]
    pg.close()

    # Asking for a boolean where a row holds 7 fails that table loudly, never a silent `true`.
    etl_env.write_config(
        "tables:\n"
        "  flags: {primary_key: [id], boolean_columns: [IsActive, IsHidden]}\n"
        "  fine: {primary_key: [id]}\n"
    )
    assert etl_env.run() == 1
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT status, error FROM etl.table_runs WHERE table_name = 'flags' ORDER BY started_at DESC LIMIT 1")
        status, error = cur.fetchone()
        assert status == "failed"
        assert "'IsActive' holds a value other than 0/1" in error
        # Yesterday's table is intact.
        cur.execute("SELECT count(*) FROM raw.flags")
        assert cur.fetchone()[0] == 4
    pg.close()


@pytest.mark.parametrize("method", ["server", "stream"])
def test_latin1_column_holding_bytes_that_are_not_utf8(etl_env, monkeypatch, method) -> None:
    """Legacy latin1 columns hold any byte: lone UTF-8 lead bytes, 0xFF, the five bytes cp1252 leaves
    undefined (0x81 0x8D 0x8F 0x90 0x9D), UTF-8 stored twice-encoded, control bytes. The replica keeps
    the bytes exactly; PostgreSQL (UTF-8) gets the characters MySQL says they are."""
    etl_env.source_sql(
        "CREATE TABLE legacy (id INT PRIMARY KEY, name VARCHAR(40) CHARACTER SET latin1 NOT NULL, "
        "memo TEXT CHARACTER SET latin1 NULL, changed TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP "
        "ON UPDATE CURRENT_TIMESTAMP) DEFAULT CHARSET=latin1;"
        "INSERT INTO legacy (id, name, memo) VALUES "
        "(1, X'C3', X'C328'),"                    # a UTF-8 lead byte with nothing after it
        "(2, X'FF', X'FFFE00FF'),"                 # bytes never valid in UTF-8, with a NUL
        "(3, X'818D8F909D', X'80'),"               # undefined in cp1252; the euro sign
        "(4, X'C383C2A9', X'E282AC'),"             # 'é' encoded twice; a UTF-8 euro read as latin1
        "(5, X'0102031F7F', X'5C4E'),"             # control bytes; a backslash-N that is not NULL
        "(6, 'plain', NULL);"
        "INSERT INTO legacy (id, name, memo) SELECT 100 + seq, CHAR(128 + seq % 128), "
        "CONCAT(CHAR(seq % 256), X'C3') FROM seq_0_to_499;"
    )
    monkeypatch.setenv("ETL_REPLICA_METHOD", method)
    discover_with(etl_env, batch_size=100)
    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)
    src, rep, pg = etl_env.mysql(), etl_env.mysql(etl_env.replica_db), etl_env.pg()
    try:
        q = "SELECT id, HEX(name), HEX(memo) FROM legacy ORDER BY id"
        with src.cursor() as a, rep.cursor() as b:
            a.execute(q)
            b.execute(q)
            assert a.fetchall() == b.fetchall()  # byte for byte
        with src.cursor() as a, pg.cursor() as b:
            a.execute("SELECT id, CONVERT(name USING utf8mb4) FROM legacy WHERE id <= 6 ORDER BY id")
            b.execute("SELECT id, name FROM raw.legacy WHERE id <= 6 ORDER BY id")
            assert b.fetchall() == list(a.fetchall())
            b.execute("SELECT name FROM raw.legacy WHERE id = 3")
            assert b.fetchone()[0] == "\x81\x8d\x8f\x90\x9d"
            b.execute("SELECT name, memo FROM raw.legacy WHERE id = 4")
            assert b.fetchone() == ("ÃƒÂ©", "â‚¬")  # the bytes as latin1 characters, nothing "repaired"
    finally:
        src.close()
        rep.close()
        pg.close()
    # An incremental run over the same table (merge path) keeps the bytes too. Row 2's memo holds a
    # NUL, which PostgreSQL cannot store: removed, and the run's notes name the column.
    etl_env.source_sql("UPDATE legacy SET memo = CONCAT(memo, X'FF81') WHERE id % 3 = 0 OR id = 2")
    assert etl_env.run() == 0
    assert_all_copies_equal(etl_env)
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT mode, notes FROM etl.table_runs WHERE table_name = 'legacy' ORDER BY started_at")
        (first_mode, first), (mode, notes) = cur.fetchall()
    pg.close()
    assert first_mode == "full" and "columns holding them: memo (" in first
    assert mode == "incremental" and "NUL characters removed" in notes and "memo (" in notes
