"""A database nobody here wrote: ../shared/corpus/sakila through `etl discover` + `etl run`.

Skipped when ../shared is not present (the project must not need it).
"""
from __future__ import annotations

import pytest

from tests.conftest import SHARED, load_sakila
from tests.test_end_to_end import assert_all_copies_equal

pytestmark = pytest.mark.skipif(not (SHARED / "corpus" / "sakila").exists(), reason="../shared/corpus/sakila not present")


def test_sakila_reproduced_exactly(etl_env) -> None:
    load_sakila(etl_env.source_db)
    assert etl_env.etl("discover") == 0
    assert etl_env.run() == 0
    tables = assert_all_copies_equal(etl_env)
    assert len(tables) == 16
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'raw'")
        assert cur.fetchone()[0] == 16
        cur.execute("SELECT count(*) FROM raw.rental")
        assert cur.fetchone()[0] == 16044
    pg.close()
