"""Two pipeline runs started at once on the same tables: one waits for the other per table, never
double-loads (without the per-table locks the second run would drop the first one's shadow table)."""
from __future__ import annotations

import threading

from tasks import faults
from tests.test_end_to_end import assert_all_copies_equal

TABLES = "".join(
    f"CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(20));"
    f"INSERT INTO {t} SELECT seq, CONCAT('{t}', seq) FROM seq_1_to_1000;"
    for t in ("alpha", "beta")
)


def test_two_runs_at_once_wait_for_each_other(etl_env, prefect_harness) -> None:
    etl_env.source_sql(TABLES)
    etl_env.write_config("defaults: {batch_size: 200}\ntables:\n  alpha: {primary_key: [id]}\n  beta: {primary_key: [id]}\n")
    for t in ("alpha", "beta"):
        faults.inject(faults.Fault("replica", t, after_chunks=2, action="sleep", seconds=1.5))
        faults.inject(faults.Fault("analytics", t, after_chunks=2, action="sleep", seconds=1.5))
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(etl_env.etl("run"))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert codes == [0, 0]
    assert_all_copies_equal(etl_env)
    pg = etl_env.pg()
    with pg.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT run_id) FROM etl.table_runs WHERE status = 'ok'")
        assert cur.fetchone() == (4, 2)
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_etl%%'")
        assert cur.fetchone()[0] == 0
    pg.close()
