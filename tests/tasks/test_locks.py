"""The per-table locks (tasks/locks.py): a second holder waits, then the table is refused with
TableBusy naming the lock; the lock connection goes back to the pool with its lock_timeout reset."""
from __future__ import annotations

import hashlib

import pytest


def test_the_analytics_lock_refuses_a_busy_table_and_resets_its_timeout(etl_env) -> None:
    from blocks.connectors import urls_from_settings
    from config.settings import Settings
    from tasks import locks
    from tasks.connections import open_engines

    key = int.from_bytes(hashlib.sha1(b"etl:raw.busy").digest()[:8], "big", signed=True)
    other = etl_env.pg()
    other.autocommit = True
    try:
        with open_engines(urls_from_settings(Settings()), workers=1) as engines:
            with other.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (key,))
            with pytest.raises(locks.TableBusy, match="another run is loading it into analytics"):
                with locks.analytics_lock(engines, "raw", "busy", wait_seconds=1):
                    pass
            with other.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
            with locks.analytics_lock(engines, "raw", "busy", wait_seconds=1):
                with other.cursor() as cur:  # held now: the other session cannot take it
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                    assert cur.fetchone()[0] is False
            with engines.analytics.connect() as c:  # the pooled lock connection, timeout back to the default
                assert c.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
                c.rollback()
    finally:
        other.close()
