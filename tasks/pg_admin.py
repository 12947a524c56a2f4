"""Creating the analytics PostgreSQL database itself (used by `make demo`; a DBA usually does this).

    python -m tasks.pg_admin create-database postgresql+psycopg2://postgres@127.0.0.1:5432/analytics
"""
from __future__ import annotations

import sys

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from tasks.connections import describe_url


def maintenance_connection(url: str) -> psycopg2.extensions.connection:
    """An autocommit connection to the `postgres` maintenance database of the server `url` names
    (CREATE DATABASE cannot run inside a transaction or in the database it creates)."""
    u = make_url(url)
    conn = psycopg2.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                            dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    return conn


def create_database(url: str) -> bool:
    """CREATE DATABASE when missing (connecting to the `postgres` maintenance database). True if created."""
    u = make_url(url)
    conn = maintenance_connection(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (u.database,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(u.database)))
            return True
    finally:
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "create-database":
        sys.exit("usage: python -m tasks.pg_admin create-database <postgresql url>")
    created = create_database(sys.argv[2])
    print(f"{'created' if created else 'exists'}: {describe_url(sys.argv[2])}")
