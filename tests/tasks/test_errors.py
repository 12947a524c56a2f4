"""Retriable vs fatal is decided in one place; check the split on real exception types."""
from __future__ import annotations

import httpx
import psycopg2
import pymysql
import pytest
from prefect.exceptions import PrefectHTTPStatusError

from tasks.errors import ConfigError, DataError, LoadError, SchemaError, is_retriable, redact


def _http(status: int) -> PrefectHTTPStatusError:
    return PrefectHTTPStatusError("x", request=httpx.Request("POST", "http://127.0.0.1/api/task_runs/"),
                                  response=httpx.Response(status))


@pytest.mark.parametrize(("exc", "retriable"), [
    (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), True),
    (pymysql.err.OperationalError(1213, "Deadlock found"), True),
    (pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"), True),
    (pymysql.err.InterfaceError(0, ""), True),
    (pymysql.err.OperationalError(1045, "Access denied"), False),
    (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), False),
    (psycopg2.OperationalError("server closed the connection unexpectedly"), True),
    (psycopg2.errors.DeadlockDetected("deadlock detected"), True),
    (psycopg2.errors.InvalidTextRepresentation("invalid input syntax for type boolean"), False),
    # No retry frees a disk within seconds; the table fails and the others go on.
    (psycopg2.errors.DiskFull("could not extend file"), False),
    (psycopg2.errors.ConfigurationLimitExceeded("too many"), False),
    # Login refusals carry no SQLSTATE; they are recognised by their text and are fatal.
    (psycopg2.OperationalError('FATAL:  password authentication failed for user "etl"'), False),
    (psycopg2.OperationalError('FATAL:  database "x" does not exist'), False),
    (psycopg2.OperationalError("FATAL:  the database system is starting up"), True),
    (ConfigError("bad key"), False),
    (SchemaError("column dropped"), False),
    (DataError("value"), False),
    (LoadError("x", table="t", phase="connect", retriable=True), True),
    (_http(503), True),
    (_http(400), False),
    (ValueError("bug"), False),
])
def test_is_retriable(exc: BaseException, retriable: bool) -> None:
    assert is_retriable(exc) is retriable


def test_wrapped_errors_are_classified_by_their_root() -> None:
    try:
        try:
            raise pymysql.err.OperationalError(2006, "MySQL server has gone away")
        except pymysql.Error as e:
            raise RuntimeError("copy failed") from e
    except RuntimeError as outer:
        assert is_retriable(outer)


def test_redact_removes_passwords() -> None:
    text = "cannot connect mysql+pymysql://etl:s3cr%40t@db:3306/od (password s3cr@t)"
    out = redact(text, ("s3cr@t",))
    assert "s3cr" not in out and "etl:***@db" in out
