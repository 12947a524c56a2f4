"""The Prefect server's own PostgreSQL database for `make server`: one per checkout, never someone else's.

    python -m tasks.server_db claim postgresql+asyncpg://postgres@127.0.0.1:5432/prefect_etl_1a2b3c4d5e /srv/etl

A fixed name (`prefect_server`) could already hold the state of another Prefect server on the same
PostgreSQL; a second server started on it would share (and migrate) that state. So the database is
created here with a comment naming the checkout it is for, and a database that exists without that
comment is refused, with a one-line message, before any server starts on it.
"""
from __future__ import annotations

import sys

from psycopg2 import sql
from sqlalchemy.engine import make_url

from tasks.connections import describe_url
from tasks.pg_admin import maintenance_connection

MARK = "created by mysql-analytics-etl make server for "


class NotOurs(Exception):
    """The database exists and was not created by `make server` for this checkout."""


def owner_comment(owner: str) -> str:
    return MARK + owner


def claim_database(url: str, owner: str) -> bool:
    """Create the database for `owner` (a checkout path) when missing; True if created, False if it
    is already ours. Raises NotOurs for a database with any other (or no) comment."""
    u = make_url(url)
    conn = maintenance_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                        (u.database,))
            row = cur.fetchone()
            if row is not None:
                if row[0] == owner_comment(owner):
                    return False
                raise NotOurs(
                    f"database {u.database!r} on {u.host}:{u.port or 5432} was not created by `make server` for "
                    f"{owner}" + (f" (its comment: {row[0]!r})" if row[0] else "")
                    + "; it may hold another Prefect server's state: set PREFECT_SERVER_DB_URL to a new database name")
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(u.database)))
            cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(u.database), sql.Literal(owner_comment(owner))))
            return True
    finally:
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "claim":
        sys.exit("usage: python -m tasks.server_db claim <postgresql url> <checkout path>")
    try:
        created = claim_database(sys.argv[2], sys.argv[3])
    except NotOurs as e:
        sys.exit(f"make server: refused: {e}")
    print(f"{'created' if created else 'reusing'} the Prefect server database {describe_url(sys.argv[2])}")
