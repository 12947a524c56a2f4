"""Every value of the type-fidelity fixtures through binlog mode, compared value by value.

The tables are created and snapshotted empty; every row then arrives through the log (the keys it
names, re-read by key), so nothing here is carried by the first full copy."""
from __future__ import annotations

import pytest

from tests.binlog.test_binlog_scenario import binlog_config
from tests.conftest import FIXTURES
from tests.dbcompare import split_sql_script
from tests.test_end_to_end import assert_all_copies_equal


@pytest.mark.parametrize("fixture", ["all_types.sql", "all_types_more.sql"])
def test_every_type_survives_the_binlog_path(bl_env, fixture) -> None:
    statements = split_sql_script((FIXTURES / fixture).read_text(encoding="utf-8"))
    rows = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    bl_env.source_sql(";\n".join(s for s in statements if s not in rows))
    binlog_config(bl_env, batch_size=7)
    assert bl_env.run() == 0
    sets = [s for s in statements if s.lstrip().upper().startswith("SET ")]  # the session's sql_mode etc.
    bl_env.source_sql(";\n".join(sets + rows))
    assert bl_env.run() == 0
    tables = assert_all_copies_equal(bl_env)
    rep = bl_env.mysql(bl_env.replica_db)
    with rep.cursor() as cur:
        cur.execute("SELECT table_name, COUNT(*) FROM _etl_state WHERE column_name = '_binlog_seq' GROUP BY 1")
        in_binlog = {r[0] for r in cur.fetchall()}
    rep.close()
    assert len(in_binlog) >= len(tables) - 2  # every keyed table went through the log
