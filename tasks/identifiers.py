"""Quoting of identifiers. A name from YAML or from the catalog is data: it is always quoted.

Values never go through here; they are bound parameters.

A name may hold anything the server accepts: quotes, backticks, spaces, semicolons, backslashes,
`:x`, unicode, and `%`, `%s` or `%(x)s`. Quoting alone does not make that safe, because the
drivers treat `%` specially: PyMySQL and psycopg2 %-format a statement when (and only when) they
are given parameters, SQLAlchemy's `exec_driver_sql` always passes parameters, `text()` doubles
`%` itself and reads `:name` as a bind parameter, and psycopg2's `copy_expert` never formats. So
there is one rule, and it lives here:

**Every statement is formatted exactly once.** SQL built in this project is in *format form*:
`mysql_ident`/`pg_ident` (and the qualified forms) double every `%` of the name, a `%` written in
our own SQL text is spelled `%%` (DATE_FORMAT patterns, LIKE patterns), SQL text read back from
the server (SHOW CREATE TABLE) is put in format form with `sql_text`, and values are `%s`
placeholders. Then:

- a raw DBAPI cursor runs it through `execute(cur, sql, params)`, which always hands the driver a
  parameter sequence (`()` when there are no values), so the driver always formats;
- a SQLAlchemy connection runs it with `conn.exec_driver_sql(sql, params)` (always formats);
- a COPY statement goes through `copy_expert(cur, sql, file)`, which formats it the same way
  before psycopg2 sends it unformatted;
- SQL that names a table or column never goes through `sqlalchemy.text()`;
- a quoted name used as a *value* (the argument of `to_regclass(%s)`) is built with `pg_regclass`,
  never doubled; SQL shown to a person (`etl plan`, messages) passes through `readable`.

A statement with no name and no `%` in it (`SET SESSION ...`) means the same either way.
"""
from __future__ import annotations

import hashlib
from typing import Any, BinaryIO, Mapping, Sequence


def _format_form(text: str) -> str:
    return text.replace("%", "%%")


def sql_text(sql: str) -> str:
    """SQL text from the server (SHOW CREATE TABLE output) put in format form (`%` doubled)."""
    return _format_form(sql)


def readable(sql: str) -> str:
    """SQL in format form as the server will see it, for showing to a person."""
    return sql.replace("%%", "%")


def mysql_quote(name: str) -> str:
    """`name` quoted for MySQL as the server prints it (SHOW CREATE TABLE): backticks doubled, `%` not."""
    return "`" + name.replace("`", "``") + "`"


def mysql_ident(name: str) -> str:
    """`name` quoted for MySQL/MariaDB SQL in format form (backticks and `%` doubled)."""
    return _format_form(mysql_quote(name))


def mysql_qualified(database: str, table: str) -> str:
    return f"{mysql_ident(database)}.{mysql_ident(table)}"


def _pg_quote(name: str) -> str:
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL character, which PostgreSQL cannot store")
    return '"' + name.replace('"', '""') + '"'


def pg_ident(name: str) -> str:
    """`name` quoted for PostgreSQL SQL in format form (double quotes and `%` doubled)."""
    return _format_form(_pg_quote(name))


def pg_qualified(schema: str, table: str) -> str:
    return f"{pg_ident(schema)}.{pg_ident(table)}"


def pg_regclass(schema: str, table: str) -> str:
    """`"schema"."table"` as a value, e.g. for `to_regclass(%s)`: quoted, `%` left alone."""
    return f"{_pg_quote(schema)}.{_pg_quote(table)}"


def execute(cur: Any, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
    """Run `sql` (format form) on a raw PyMySQL or psycopg2 cursor; the driver always formats it."""
    cur.execute(sql, () if params is None else params)
    return cur


def copy_expert(cur: Any, sql: str, file: BinaryIO, *, size: int) -> None:
    """psycopg2 `copy_expert` for a COPY statement in format form (psycopg2 would not format it)."""
    cur.copy_expert(sql % (), file, size=size)


def pg_table_name(source_name: str) -> str:
    """PostgreSQL table names are the source names lower-cased."""
    return source_name.lower()


def pg_column_name(source_name: str, column_case: str) -> str:
    return source_name.lower() if column_case == "lower" else source_name


# PostgreSQL truncates identifiers at 63 bytes; shadow names must stay unique after that.
PG_MAX_IDENT = 63


def shadow_name(table: str, kind: str = "new") -> str:
    """Name of the table a full refresh loads before the swap (`_etl_new_<table>`).

    Longer than 63 bytes in UTF-8 (PostgreSQL's limit; MySQL's is 64 characters), the name is cut
    on a character boundary and a digest of the whole name keeps it unique.
    """
    base = f"_etl_{kind}_{table}"
    if len(base.encode()) <= PG_MAX_IDENT:
        return base
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    cut = table.encode()[: PG_MAX_IDENT - len(f"_etl_{kind}__") - 8].decode(errors="ignore")
    return f"_etl_{kind}_{cut}_{digest}"
