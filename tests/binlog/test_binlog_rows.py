"""tasks/binlog_rows.event_keys against mysql-replication's own decoding, on every type fixture.

The log of the type fixtures (inserts, updates that change every value, deletes) is read twice from
the same position: once through the library's `event.rows` (every column decoded), once through
`event_keys` with every column it can decode as the "key". The two must agree value by value, and
the walk over the other columns must land on every row image's start (a wrong size would misread
every row after it)."""
from __future__ import annotations

import pytest

from tasks import binlog_rows
from tests.conftest import FIXTURES
from tests.dbcompare import split_sql_script

pytest.importorskip("pymysqlreplication")


def _stream(server, db: str, file: str, pos: int):  # noqa: ANN202
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    return BinLogStreamReader(connection_settings={"host": "127.0.0.1", "port": server.port, "user": "root",
                                                   "passwd": ""}, server_id=4_100_000_077, log_file=file,
                              log_pos=pos, resume_stream=True, blocking=False, ignore_decode_errors=True,
                              only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent], only_schemas=[db])


def _decodable(ev) -> tuple[str, ...]:  # noqa: ANN001
    return tuple(c.name for c in ev.columns if binlog_rows._decoder(c, "ignore") is not None)


@pytest.mark.parametrize("fixture", ["all_types.sql", "all_types_more.sql"])
def test_event_keys_match_the_library(bl_env, fixture) -> None:
    statements = split_sql_script((FIXTURES / fixture).read_text(encoding="utf-8"))
    rows = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    bl_env.source_sql(";\n".join(s for s in statements if s not in rows))
    conn = bl_env.server.connect()
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    conn.close()
    sets = [s for s in statements if s.lstrip().upper().startswith("SET ")]
    bl_env.source_sql(";\n".join(sets + rows))
    # An update of every row (a nullable column set to NULL: before and after images differ in their
    # null bitmaps) and a delete of every row.
    conn = bl_env.server.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, MIN(COLUMN_NAME) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                    "AND IS_NULLABLE = 'YES' AND COLUMN_KEY = '' AND GENERATION_EXPRESSION IS NULL GROUP BY 1",
                    (bl_env.source_db,))
        nullable = cur.fetchall()
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = "
                    "'BASE TABLE'", (bl_env.source_db,))
        tables = sorted(r[0] for r in cur.fetchall())
    conn.close()
    assert len(nullable) > 5
    bl_env.source_sql(";\n".join(sets + [f"UPDATE `{t}` SET `{c}` = NULL" for t, c in nullable]
                                 + [f"DELETE FROM `{t}`" for t in tables]))

    expected: list[tuple] = []
    s = _stream(bl_env.server, bl_env.source_db, file, pos)
    try:
        for ev in s:
            names = _decodable(ev)
            for row in ev.rows:
                for values in ([row["before_values"], row["after_values"]] if "after_values" in row
                               else [row["values"]]):
                    expected.append((ev.table, tuple(values[n] for n in names)))
    finally:
        s.close()
    got: list[tuple] = []
    s = _stream(bl_env.server, bl_env.source_db, file, pos)
    try:
        for ev in s:
            keys = binlog_rows.event_keys(ev, _decodable(ev))
            assert keys is not None, f"{ev.table}: event_keys does not walk this layout"
            got.extend((ev.table, k) for k in keys)
    finally:
        s.close()
    assert len(expected) > 20
    assert {t for t, _ in got} >= set(tables) - {"no_pk"}
    assert got == expected
