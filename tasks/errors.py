"""Every error the pipeline raises, and the one place that decides what is worth retrying.

Retriable errors are transient database conditions (a dropped connection, a lock wait timeout,
a deadlock, a server restarting). Everything else (bad config, a missing table, a value that does
not fit its type, a programming error) is fatal: retrying would only repeat it.
"""
from __future__ import annotations

import re
from typing import Any

import pymysql
import psycopg2
import psycopg2.errorcodes
import psycopg2.errors
from sqlalchemy import exc as sa_exc

# The error classes live on the ground floor (config/ raises them too); they are re-exported here,
# where the retry policy that reads them is.
from config.errors import ConfigError, DataError, EtlError, LoadError, SchemaError, TablesFailed

__all__ = ["ConfigError", "DataError", "EtlError", "LoadError", "SchemaError", "TablesFailed", "is_retriable",
           "redact", "retry_condition"]


class DbtFailed(EtlError):
    """Raised by the parent flow when every table loaded but dbt failed (fatal: dbt is not retried)."""


# MySQL server error numbers that mean "try again".
_MYSQL_RETRIABLE = {
    1205,  # ER_LOCK_WAIT_TIMEOUT
    1213,  # ER_LOCK_DEADLOCK
    1040,  # ER_CON_COUNT_ERROR (too many connections)
    1053,  # ER_SERVER_SHUTDOWN
    1317,  # ER_QUERY_INTERRUPTED
    1927,  # ER_CONNECTION_KILLED (MariaDB)
    2003,  # CR_CONN_HOST_ERROR
    2006,  # CR_SERVER_GONE_ERROR
    2013,  # CR_SERVER_LOST
    2055,  # CR_SERVER_LOST_EXTENDED
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
}

# PostgreSQL SQLSTATE classes/codes that mean "try again".
_PG_RETRIABLE_CODES = {
    psycopg2.errorcodes.SERIALIZATION_FAILURE,
    psycopg2.errorcodes.DEADLOCK_DETECTED,
    psycopg2.errorcodes.LOCK_NOT_AVAILABLE,
    psycopg2.errorcodes.ADMIN_SHUTDOWN,
    psycopg2.errorcodes.CRASH_SHUTDOWN,
    psycopg2.errorcodes.CANNOT_CONNECT_NOW,
    psycopg2.errorcodes.TOO_MANY_CONNECTIONS,
    psycopg2.errorcodes.QUERY_CANCELED,
}
# Deliberately NOT retried, although they are "insufficient resources" (class 53) like
# TOO_MANY_CONNECTIONS: DISK_FULL (53100) and CONFIGURATION_LIMIT_EXCEEDED (53400, e.g. a quota or
# max_locks_per_transaction). Nothing the run does frees the space or raises the limit within the
# retry delays (seconds), and each retry would resume the load and fill the same disk again while
# the other tables wait for the worker. The table fails at once, its previous copy stays live, the
# other tables go on, and the error row in etl.errors says what an operator must fix.
_PG_FATAL_RESOURCE = (psycopg2.errors.DiskFull, psycopg2.errors.ConfigurationLimitExceeded)

# libpq reports a refused login without a SQLSTATE, like a dropped connection; these texts mean
# the login itself is wrong (credentials, database name, host name), which no retry repairs.
_PG_LOGIN_REFUSED = re.compile(
    r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
    r"|database \".*\" does not exist|could not translate host name|password supplied"
)


def _root(exc: BaseException) -> BaseException:
    """The DBAPI error under SQLAlchemy wrappers and our own `raise ... from`."""
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, sa_exc.DBAPIError) and cur.orig is not None:
            return _root(cur.orig)
        if isinstance(cur, (pymysql.Error, psycopg2.Error)):
            return cur
        cur = cur.__cause__ or cur.__context__
    return exc


def is_retriable(exc: BaseException) -> bool:
    """True when the error is a transient database condition worth retrying."""
    if isinstance(exc, LoadError):
        if exc.retriable:
            return True
    if isinstance(exc, (ConfigError, SchemaError, DataError)):
        return False
    root = _root(exc)
    if isinstance(root, pymysql.err.OperationalError | pymysql.err.InternalError | pymysql.err.InterfaceError):
        code = root.args[0] if root.args and isinstance(root.args[0], int) else None
        if isinstance(root, pymysql.err.InterfaceError):
            return True  # "(0, '')": the socket is gone
        return code in _MYSQL_RETRIABLE
    if isinstance(root, _PG_FATAL_RESOURCE):
        return False
    if isinstance(root, psycopg2.OperationalError):
        # Connection-level failures carry no SQLSTATE (server closed the connection unexpectedly),
        # nor does a refused login, which is told apart by its text.
        if root.pgcode is None:
            return not _PG_LOGIN_REFUSED.search(str(root))
        return root.pgcode in _PG_RETRIABLE_CODES
    if isinstance(root, psycopg2.InterfaceError):
        return True  # connection already closed
    if isinstance(root, psycopg2.Error):
        return root.pgcode in _PG_RETRIABLE_CODES
    if isinstance(root, (ConnectionError, TimeoutError)):
        return True
    return api_unavailable(root)


def api_unavailable(exc: BaseException) -> bool:
    """The Prefect API itself was briefly unavailable: the temporary local server runs on SQLite and
    answers 503 "database is locked" when many runs write at once (after the client's own retries)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return type(exc).__name__ in ("PrefectHTTPStatusError", "HTTPStatusError") and status in (502, 503, 504)


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry only transient database errors."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return is_retriable(exc)
    return False


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove passwords from a message: any `scheme://user:pw@` and every known secret value."""
    out = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for s in secrets:
        if s and len(s) >= 3:
            out = out.replace(s, "***")
    return out
