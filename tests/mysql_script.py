"""Running a multi-statement SQL script on a MariaDB/MySQL connection: the one statement loop the
fixtures (tests/conftest.run_mysql_script, the machine's server) and tests/binlog_server (a private
server) share. A module of its own, without conftest's side effects, because bench/ imports
binlog_server too.
"""
from __future__ import annotations

import pymysql

MULTI_STATEMENTS = pymysql.constants.CLIENT.MULTI_STATEMENTS


def execute_script(conn: pymysql.connections.Connection, text: str) -> None:
    """Run `text` (statements separated by `;`, no DELIMITER blocks) on `conn`, opened with
    client_flag=MULTI_STATEMENTS, reading every result set so that an error in a later statement
    raises here, then close `conn`."""
    try:
        with conn.cursor() as cur:
            cur.execute(text)
            while cur.nextset():
                pass
    finally:
        conn.close()
