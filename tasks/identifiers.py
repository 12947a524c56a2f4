"""Quoting of identifiers. A name from YAML or from the catalog is data: it is always quoted.

Values never go through here; they are bound parameters.
"""
from __future__ import annotations


def mysql_ident(name: str) -> str:
    """`name` quoted for MySQL/MariaDB (backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def mysql_qualified(database: str, table: str) -> str:
    return f"{mysql_ident(database)}.{mysql_ident(table)}"


def pg_ident(name: str) -> str:
    """`name` quoted for PostgreSQL (double quotes doubled). NUL cannot appear in a PG name."""
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL character, which PostgreSQL cannot store")
    return '"' + name.replace('"', '""') + '"'


def pg_qualified(schema: str, table: str) -> str:
    return f"{pg_ident(schema)}.{pg_ident(table)}"


def pg_table_name(source_name: str) -> str:
    """PostgreSQL table names are the source names lower-cased."""
    return source_name.lower()


def pg_column_name(source_name: str, column_case: str) -> str:
    return source_name.lower() if column_case == "lower" else source_name


# PostgreSQL truncates identifiers at 63 bytes; shadow names must stay unique after that.
PG_MAX_IDENT = 63


def shadow_name(table: str, kind: str = "new") -> str:
    """Name of the table a full refresh loads before the swap (`_etl_new_<table>`)."""
    base = f"_etl_{kind}_{table}"
    if len(base.encode()) <= PG_MAX_IDENT:
        return base
    import hashlib

    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    cut = table.encode()[: PG_MAX_IDENT - len(f"_etl_{kind}__") - 8].decode(errors="ignore")
    return f"_etl_{kind}_{cut}_{digest}"
