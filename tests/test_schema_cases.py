"""Tables that must not stop on ordinary schemas and ordinary drift (issue 10, items 9, 10, 11, 14).

Each test runs the incremental scenario with the plain table functions (tasks.sync.replicate and
tasks.sync.load, as tests/test_soak.py::_plain_run does, without Prefect): a full run, an ALTER in
the source, rows changed, a second run; then every table of the three databases is compared value
by value, and PostgreSQL's column types and nullability are read from information_schema.
"""
from __future__ import annotations

import pytest

from tasks.errors import SchemaError
from tests.test_end_to_end import assert_all_copies_equal


def _run(env, *, method: str = "server", loaded_at_column: str = "_etl_loaded_at") -> dict[str, list[str]]:
    """One run of every table in the config: replicate, then load. Returns each table's notes."""
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
    notes: dict[str, list[str]] = {}
    with open_engines(urls, workers=1) as engines:
        for table in cfg.resolved_tables(None):
            rep = sync.replicate(engines, table, source_db=source_db, replica_db=replica_db, method=method,
                                 full_refresh=False, resume=False)
            ana = sync.load(engines, table, replica_db=replica_db, pg_schema=env.pg_schema,
                            column_case=cfg.analytics.column_case, full_refresh=False, resume=False,
                            loaded_at_column=loaded_at_column)
            notes[table.name] = rep.notes + ana.notes
    return notes


def _incremental(env, table: str, key: str = "id", changed: str = "changed") -> None:
    env.write_config(f"tables:\n  {table}: {{primary_key: [{key}], mode: incremental, "
                     f"incremental_columns: [{changed}], batch_size: 7}}\n")


def _pg_columns(env, table: str) -> dict[str, tuple[str, str]]:
    """PostgreSQL column -> (data type with length/precision, 'YES'/'NO' nullable)."""
    pg = env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale, "
                    "is_nullable FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (env.pg_schema, table))
        out = {}
        for name, typ, length, prec, scale, nullable in cur.fetchall():
            if length is not None:
                typ += f"({length})"
            elif typ == "numeric":
                typ += f"({prec},{scale})"
            out[name] = (typ, nullable)
    pg.close()
    return out


# Source rows with a server-maintained change column; `changed` moves when a row is updated.
_CHANGED = "changed TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"


@pytest.mark.parametrize("method", ["server", "stream"])
def test_partitioned_table_loads_and_stays_incremental(etl_env, method) -> None:
    # Item 9: the PARTITION BY lines of SHOW CREATE TABLE ended up inside the shadow table's column
    # list (1064). Partitioning is dropped in the replica (tasks/mysql_schema._table_options): a
    # RANGE copy would refuse the rows of a partition the source adds later.
    etl_env.source_sql(f"""
        CREATE TABLE visit (id INT NOT NULL, day DATE NOT NULL, note VARCHAR(20), {_CHANGED},
          PRIMARY KEY (id, day), KEY by_day (day))
          COMMENT 'PARTITION BY is not here (AUTO_INCREMENT=5)'
          PARTITION BY RANGE (YEAR(day)) (PARTITION p2020 VALUES LESS THAN (2021),
                                         PARTITION p2021 VALUES LESS THAN (2022));
        INSERT INTO visit (id, day, note) SELECT seq, '2020-01-01' + INTERVAL seq DAY, CONCAT('n', seq)
          FROM seq_1_to_40;
        CREATE TABLE hashed (id INT PRIMARY KEY, v INT, {_CHANGED}) PARTITION BY HASH (id) PARTITIONS 3;
        INSERT INTO hashed (id, v) SELECT seq, seq FROM seq_1_to_20;
    """)
    etl_env.write_config("tables:\n"
                         "  visit: {primary_key: [id, day], mode: incremental, incremental_columns: [changed], "
                         "batch_size: 7}\n"
                         "  hashed: {primary_key: [id], mode: incremental, incremental_columns: [changed]}\n")
    _run(etl_env, method=method)
    assert_all_copies_equal(etl_env)

    # The source grows a partition and rows land in it; others change; the next run merges them.
    etl_env.source_sql("""
        ALTER TABLE visit ADD PARTITION (PARTITION p2022 VALUES LESS THAN (2023));
        INSERT INTO visit (id, day, note) VALUES (100, '2022-06-01', 'new partition');
        UPDATE visit SET note = 'changed' WHERE id % 5 = 0;
        UPDATE hashed SET v = -v WHERE id < 4;
    """)
    notes = _run(etl_env, method=method)
    assert_all_copies_equal(etl_env)
    assert not any("full" in n for n in notes["visit"]), notes  # merged, not reloaded
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, CREATE_OPTIONS, TABLE_COMMENT FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ('visit', 'hashed') ORDER BY 1",
                    (etl_env.replica_db,))
        rows = cur.fetchall()
        cur.execute("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = 'visit' AND INDEX_NAME = 'by_day'", (etl_env.replica_db,))
        assert cur.fetchone()[0] == 1
    rep.close()
    assert [(t, "partitioned" in o) for t, o, _ in rows] == [("hashed", False), ("visit", False)]
    assert rows[1][2] == "PARTITION BY is not here (AUTO_INCREMENT=5)"  # quoted text untouched


def test_not_null_relaxed_in_the_source_reaches_analytics(etl_env) -> None:
    # Item 10: the replica was altered, analytics kept NOT NULL, and merging the first NULL failed
    # (NotNullViolation) on every run. DROP NOT NULL now follows the replica, in place.
    etl_env.source_sql(f"""
        CREATE TABLE claim (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL, qty INT NOT NULL,
          kind ENUM('a', 'b') NOT NULL, paid DOUBLE NOT NULL, {_CHANGED});
        INSERT INTO claim (id, code, qty, kind, paid) SELECT seq, CONCAT('c', seq), seq, 'a', seq / 4 FROM seq_1_to_30;
    """)
    _incremental(etl_env, "claim")
    _run(etl_env)
    assert _pg_columns(etl_env, "claim")["code"] == ("character varying(10)", "NO")
    pg = etl_env.pg()
    with pg.cursor() as cur:  # a dbt view on the table: DROP NOT NULL leaves it in place
        cur.execute("CREATE VIEW raw.claim_codes AS SELECT id, code FROM raw.claim")
    pg.close()
    etl_env.source_sql("""
        ALTER TABLE claim MODIFY code VARCHAR(10) NULL, MODIFY qty INT NULL, MODIFY kind ENUM('a', 'b') NULL,
          MODIFY paid DOUBLE NULL;
        UPDATE claim SET code = NULL, qty = NULL, kind = NULL, paid = NULL WHERE id % 3 = 0;
        UPDATE claim SET code = 'x' WHERE id = 1;
    """)
    notes = _run(etl_env)["claim"]
    assert_all_copies_equal(etl_env)
    assert not any("reload" in n for n in notes), notes
    cols = _pg_columns(etl_env, "claim")
    assert {c: cols[c] for c in ("code", "qty", "kind", "paid")} == {
        "code": ("character varying(10)", "YES"), "qty": ("integer", "YES"), "kind": ("text", "YES"),
        "paid": ("double precision", "YES")}
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*), count(code) FROM raw.claim_codes")
        assert cur.fetchone() == (30, 20)
    pg.close()


def test_not_null_tightened_in_the_source_follows_once_no_null_is_left(etl_env) -> None:
    # NULL -> NOT NULL: the replica and analytics follow, but only where no NULL is left. The rows
    # the source filled in are merged by the same run, so the column follows one run later.
    etl_env.source_sql(f"""
        CREATE TABLE patient (id INT PRIMARY KEY, name VARCHAR(20), {_CHANGED});
        INSERT INTO patient (id, name) SELECT seq, IF(seq % 4 = 0, NULL, CONCAT('p', seq)) FROM seq_1_to_20;
    """)
    _incremental(etl_env, "patient")
    _run(etl_env)
    etl_env.source_sql("""
        UPDATE patient SET name = '' WHERE name IS NULL;
        ALTER TABLE patient MODIFY name VARCHAR(20) NOT NULL;
        UPDATE patient SET name = 'again' WHERE id = 2;
    """)
    notes = _run(etl_env)["patient"]
    assert any("keeps it NULL-able until its 5 row(s) holding NULL are merged" in n for n in notes), notes
    notes = _run(etl_env)["patient"]
    assert any("name became NOT NULL" in n for n in notes), notes
    assert any("analytics column name is NOT NULL now" in n for n in notes), notes
    assert_all_copies_equal(etl_env)  # replica definitions included
    assert _pg_columns(etl_env, "patient")["name"] == ("character varying(20)", "NO")


def test_everyday_widenings_are_applied_in_place(etl_env) -> None:
    # Item 11: an ENUM/SET value appended and VARCHAR(255) -> TEXT stopped the table until a full
    # refresh; so did CHAR -> VARCHAR, TINYTEXT -> TEXT, VARBINARY -> BLOB and INT -> DECIMAL. A
    # DEFAULT or COMMENT change is no type change at all.
    etl_env.source_sql(f"""
        CREATE TABLE appt (id INT PRIMARY KEY, status ENUM('new', 'done') NOT NULL DEFAULT 'new',
          tags SET('x', 'y'), title VARCHAR(255), code CHAR(4), memo TINYTEXT, raw VARBINARY(16),
          n INT, note VARCHAR(10) DEFAULT 'a', {_CHANGED});
        INSERT INTO appt (id, status, tags, title, code, memo, raw, n)
          SELECT seq, IF(seq % 2, 'new', 'done'), IF(seq % 3, 'x', 'x,y'), CONCAT('t', seq), 'ab', 'm',
                 UNHEX('00FF'), seq * 1000 FROM seq_1_to_25;
    """)
    _incremental(etl_env, "appt")
    _run(etl_env)
    etl_env.source_sql("""
        ALTER TABLE appt MODIFY status ENUM('new', 'done', 'cancelled') NOT NULL DEFAULT 'new',
          MODIFY tags SET('x', 'y', 'z'), MODIFY title TEXT, MODIFY code VARCHAR(8), MODIFY memo TEXT,
          MODIFY raw BLOB, MODIFY n DECIMAL(14,2), MODIFY note VARCHAR(10) DEFAULT 'b' COMMENT 'who wrote it';
        UPDATE appt SET status = 'cancelled', tags = 'y,z', title = REPEAT('long title ', 40),
          code = 'abcdefgh', memo = REPEAT('m', 300), raw = UNHEX(REPEAT('AB', 100)), n = 12345678.25
          WHERE id % 4 = 0;
        INSERT INTO appt (id, status, tags) VALUES (100, 'cancelled', 'z');
    """)
    notes = _run(etl_env)["appt"]
    assert_all_copies_equal(etl_env)
    applied = " ".join(notes)
    assert "reload" not in applied, notes
    for c in ("status", "tags", "title", "code", "memo", "raw", "n"):
        assert f"widened {c} " in applied, (c, notes)
    assert "note" not in applied.replace("notes", ""), notes  # DEFAULT/COMMENT: nothing to apply
    cols = _pg_columns(etl_env, "appt")
    assert {c: cols[c][0] for c in ("status", "tags", "title", "code", "memo", "raw", "n")} == {
        "status": "text", "tags": "text", "title": "text", "code": "character varying(8)", "memo": "text",
        "raw": "bytea", "n": "numeric(14,2)"}


@pytest.mark.parametrize("change, why", [
    ("MODIFY status ENUM('done', 'new')", "its ENUM values were reordered"),
    ("MODIFY status ENUM('new')", "values ['done'] were removed from the ENUM"),
])
def test_enum_reordered_or_shrunk_is_refused_by_name(etl_env, change, why) -> None:
    etl_env.source_sql(f"""
        CREATE TABLE appt (id INT PRIMARY KEY, status ENUM('new', 'done'), {_CHANGED});
        INSERT INTO appt (id, status) VALUES (1, 'new'), (2, 'new');
    """)
    _incremental(etl_env, "appt")
    _run(etl_env)
    etl_env.source_sql(f"ALTER TABLE appt {change}")
    with pytest.raises(SchemaError) as e:
        _run(etl_env)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"table 'appt'" in msg and f"column 'status': {why}" in msg, msg
    assert "etl run --full-refresh --tables appt" in msg, msg
    rep = etl_env.mysql(etl_env.replica_db)
    with rep.cursor() as cur:  # nothing was changed
        cur.execute("SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_NAME = 'appt' AND COLUMN_NAME = 'status'", (etl_env.replica_db,))
        assert cur.fetchone()[0] == "enum('new','done')"
    rep.close()


def test_source_column_named_like_the_load_time_column(etl_env) -> None:
    # Item 14: CREATE TABLE failed with a raw DuplicateColumn. Now one line says what to set.
    etl_env.source_sql(f"""
        CREATE TABLE visit (id INT PRIMARY KEY, v INT, {_CHANGED});
        INSERT INTO visit (id, v) SELECT seq, seq FROM seq_1_to_10;
    """)
    _incremental(etl_env, "visit")
    _run(etl_env)
    etl_env.source_sql("ALTER TABLE visit ADD COLUMN _ETL_LOADED_AT DATETIME; "
                       "UPDATE visit SET _ETL_LOADED_AT = '2020-01-02 03:04:05', v = -v WHERE id < 4;")
    with pytest.raises(SchemaError) as e:
        _run(etl_env)
    msg = str(e.value)
    assert msg == ("table 'visit': column '_ETL_LOADED_AT' becomes '_etl_loaded_at' in PostgreSQL, the name of "
                   "the column the ETL adds for the load time; set analytics.loaded_at_column to another name")
    _run(etl_env, loaded_at_column="_etl_row_loaded_at")
    assert_all_copies_equal(etl_env)
    cols = _pg_columns(etl_env, "visit")
    assert cols["_etl_loaded_at"] == ("timestamp without time zone", "YES")  # the source's column
    assert cols["_etl_row_loaded_at"] == ("timestamp with time zone", "NO")


def test_widening_a_column_a_view_reads_says_what_to_do_then_converges(etl_env) -> None:
    # PostgreSQL cannot retype a column a view reads (varchar(20) -> text included): one line naming
    # the table and column and what to do, not a raw driver error; without the view the run converges.
    etl_env.source_sql(f"""
        CREATE TABLE note (id INT PRIMARY KEY, body VARCHAR(20), {_CHANGED});
        INSERT INTO note (id, body) SELECT seq, CONCAT('b', seq) FROM seq_1_to_10;
    """)
    _incremental(etl_env, "note")
    _run(etl_env)
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("CREATE VIEW raw.note_bodies AS SELECT body FROM raw.note")
    etl_env.source_sql("ALTER TABLE note MODIFY body TEXT; UPDATE note SET body = REPEAT('x', 500) WHERE id = 3;")
    with pytest.raises(SchemaError) as e:
        _run(etl_env)
    assert str(e.value).startswith("table raw.note: cannot change column 'body' to text NULL in place (cannot alter "
                                   "type of a column used by a view or rule); drop the views that use it"), str(e.value)
    with pg.cursor() as cur:
        cur.execute("DROP VIEW raw.note_bodies")
    pg.close()
    _run(etl_env)
    assert_all_copies_equal(etl_env)
    assert _pg_columns(etl_env, "note")["body"] == ("text", "YES")


def test_not_null_relaxed_under_a_dependent_view_on_a_full_refresh_table(etl_env) -> None:
    """A full-refresh table read by a view keeps its PostgreSQL table (rows replaced in place); a column
    the source relaxed to NULL must be relaxed there too before the NULLs go in (the INSERT failed with
    NotNullViolation on every run)."""
    etl_env.source_sql("CREATE TABLE codes (id INT PRIMARY KEY, descr VARCHAR(20) NOT NULL);"
                       "INSERT INTO codes VALUES (1, 'one'), (2, 'two');")
    etl_env.write_config("tables:\n  codes: {primary_key: [id]}\n")
    _run(etl_env)
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute(f"CREATE VIEW {etl_env.pg_schema}.codes_v AS SELECT id, descr FROM {etl_env.pg_schema}.codes")
    etl_env.source_sql("ALTER TABLE codes MODIFY descr VARCHAR(20) NULL; INSERT INTO codes VALUES (3, NULL);")
    notes = _run(etl_env)
    assert any("descr" in n and "NULL" in n for n in notes["codes"]), notes
    assert_all_copies_equal(etl_env)
    with pg.cursor() as cur:
        cur.execute(f"SELECT id, descr FROM {etl_env.pg_schema}.codes_v ORDER BY id")
        assert cur.fetchall() == [(1, "one"), (2, "two"), (3, None)]
    pg.close()
