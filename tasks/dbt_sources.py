"""A dbt `sources.yml` for the analytics schema, written from what is really in PostgreSQL.

Tables and columns come from PostgreSQL's information_schema (base tables of the schema, the ETL's
own `_etl_*` work tables left out), primary keys from pg_constraint, and each column's description
from its MySQL type in the replica's information_schema (the replica holds exactly the source's
definitions; the production source is not queried). Primary-key columns get `not_null`, and
`unique` when the key has one column (a composite key's uniqueness cannot be written as a column
test without dbt_utils; the table's description says so).

Freshness means "when did the ETL last sync this table successfully", not "when did a row last
change": an incremental merge leaves unchanged rows alone, so `max(_etl_loaded_at)` of a quiet
lookup table stays at its last change although every run checked it, and a table that keeps
failing would look just like a quiet one. So each table's `loaded_at_query` reads the ETL's own
history (`etl.table_runs`): the end of the table's latest finished sync if that sync succeeded,
and NULL if it failed (dbt reads NULL as "infinitely long ago": the table errors at once instead
of ageing quietly from its last success). The dbt profile's user therefore needs SELECT on
`etl.table_runs`.

Two spellings, for the dbt you run:
- `config` (default, dbt >= 1.10): `data_tests`, and `loaded_at_query` + `freshness` under `config:`
  (every table, with or without the load-time column);
- `legacy` (dbt 1.8/1.9, which has no `loaded_at_query`): `data_tests`, with `loaded_at_field` and
  `freshness` as table properties, for tables that have the load-time column
  (`analytics.loaded_at_column`, default `_etl_loaded_at`). That is the last *row change*, with the
  weaknesses above.

Names are written as they are in PostgreSQL. One that dbt could not write unquoted in SQL (anything
but lower-case letters, digits and `_`, or a reserved word) gets `quote: true` (a column) or
`quoting: {identifier: true}` (a table), so the tests dbt generates still name it exactly.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from tasks.metrics import SCHEMA as METRICS_SCHEMA

Style = Literal["config", "legacy"]


@dataclass
class PgColumn:
    name: str
    pg_type: str
    nullable: bool


@dataclass
class PgTable:
    name: str
    columns: list[PgColumn] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)


def _pg_type(data_type: str, char_len: int | None, precision: int | None, scale: int | None) -> str:
    if data_type in ("character varying", "character") and char_len:
        return f"{'varchar' if data_type == 'character varying' else 'char'}({char_len})"
    if data_type == "numeric" and precision is not None:
        return f"numeric({precision},{scale or 0})"
    return data_type


def read_pg_tables(cur: Any, schema: str, *, views: bool = False) -> list[PgTable]:
    """Base tables of `schema` (not the ETL's `_etl_*` shadow/work tables), columns in order, primary keys.
    `views`: views too (the union schema of many clinics holds only views, tasks/union.py)."""
    kinds = ("BASE TABLE", "VIEW") if views else ("BASE TABLE",)
    cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = ANY(%s) "
        "AND table_name NOT LIKE '\\_etl\\_%%' ORDER BY table_name", (schema, list(kinds)))
    tables = {r[0]: PgTable(r[0]) for r in cur.fetchall()}
    cur.execute(
        "SELECT table_name, column_name, data_type, character_maximum_length, numeric_precision, numeric_scale, "
        "is_nullable FROM information_schema.columns WHERE table_schema = %s ORDER BY table_name, ordinal_position",
        (schema,))
    for tname, cname, dtype, clen, prec, scale, nullable in cur.fetchall():
        if tname in tables:
            tables[tname].columns.append(PgColumn(cname, _pg_type(dtype, clen, prec, scale), nullable == "YES"))
    cur.execute(
        """
        SELECT c.relname, a.attname
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, pos) ON true
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE con.contype = 'p' AND n.nspname = %s
        ORDER BY c.relname, k.pos
        """,
        (schema,))
    for tname, cname in cur.fetchall():
        if tname in tables:
            tables[tname].primary_key.append(cname)
    return list(tables.values())


def read_reserved_words(cur: Any) -> frozenset[str]:
    """PostgreSQL keywords that cannot name a table or column unquoted."""
    cur.execute("SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')")
    return frozenset(r[0] for r in cur.fetchall())


def needs_quotes(name: str, reserved: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether SQL must quote `name` to mean exactly this PostgreSQL identifier."""
    return not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name in reserved


def read_mysql_types(cur: Any, database: str) -> dict[str, dict[str, tuple[str, str]]]:
    """lower(table) -> lower(column) -> (MySQL table name, COLUMN_TYPE) from the replica's information_schema."""
    cur.execute("SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s",
                (database,))
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for table, column, ctype in cur.fetchall():
        out.setdefault(str(table).lower(), {})[str(column).lower()] = (str(table), str(ctype))
    return out


def sync_freshness_query(table: str, *, metrics_schema: str = METRICS_SCHEMA) -> str:
    """A `loaded_at_query` (one value): when the table's latest finished sync ended, if it succeeded.

    `table` is the PostgreSQL name; etl.table_runs keeps the config's spelling, and the config
    refuses two names that are equal once lower-cased, so `lower(...)` finds exactly this table. A
    sync still running is not finished: the one before it counts until it ends. A table with no
    finished sync at all (never loaded, or history older than the metrics retention) gives NULL.
    """
    literal = table.replace("'", "''")
    sql = (f"select case when status = 'ok' then ended_at end from {metrics_schema}.table_runs "
           f"where lower(table_name) = '{literal}' and status <> 'running' and ended_at is not null "
           f"order by ended_at desc limit 1")
    # dbt renders the query with Jinja: a brace in a table name must stay text.
    return "{% raw %}" + sql + "{% endraw %}" if "{" in sql or "}" in sql else sql


def build_sources(tables: list[PgTable], *, schema: str, source_name: str | None = None,
                  loaded_at_column: str = "_etl_loaded_at",
                  mysql_types: dict[str, dict[str, tuple[str, str]]] | None = None,
                  warn_after_hours: int = 26, error_after_hours: int = 50, style: Style = "config",
                  origin: str = "", reserved: frozenset[str] = frozenset(), source_column: str | None = None) -> dict:
    """The sources.yml document (a dict ready for yaml.safe_dump); `reserved` as from `read_reserved_words`;
    `source_column`: the union views' clinic column (`_source`, tasks/union.py)."""
    freshness = {"warn_after": {"count": warn_after_hours, "period": "hour"},
                 "error_after": {"count": error_after_hours, "period": "hour"}}
    out_tables = []
    for t in tables:
        mysql = (mysql_types or {}).get(t.name.lower(), {})
        mysql_name = next(iter(mysql.values()))[0] if mysql else None
        desc = f"MySQL table `{mysql_name}`" if mysql_name else "Table"
        desc += f" copied by mysql-analytics-etl{f' from {origin}' if origin else ''}."
        if len(t.primary_key) > 1:
            desc += (f" Composite primary key ({', '.join(t.primary_key)}): each column is tested not_null; "
                     f"test the combination with dbt_utils.unique_combination_of_columns if you use dbt_utils.")
        entry: dict[str, Any] = {"name": t.name, "description": desc}
        if needs_quotes(t.name, reserved):
            entry["quoting"] = {"identifier": True}
        has_loaded_at = any(c.name == loaded_at_column for c in t.columns)
        if style == "config":
            entry["config"] = {"loaded_at_query": sync_freshness_query(t.name), "freshness": freshness}
        elif has_loaded_at:
            entry["loaded_at_field"] = loaded_at_column
            entry["freshness"] = freshness
        cols = []
        for c in t.columns:
            if source_column is not None and c.name == source_column:
                cdesc = "The clinic this row comes from: its `name` in the sources file (ETL_SOURCES)."
            elif c.name == loaded_at_column:
                cdesc = f"When the ETL last loaded this row ({c.pg_type}; set by the pipeline, not in MySQL)."
            elif c.name.lower() in mysql:
                cdesc = f"MySQL `{mysql[c.name.lower()][1]}` (PostgreSQL {c.pg_type})."
            elif source_column is not None:
                cdesc = f"PostgreSQL {c.pg_type}: the common type over the clinics (NULL where a clinic lacks the column)."
            else:
                cdesc = f"PostgreSQL {c.pg_type} (MySQL type not known: replica not read or column not there)."
            col: dict[str, Any] = {"name": c.name, "description": cdesc}
            if needs_quotes(c.name, reserved):
                col["quote"] = True
            if c.name in t.primary_key:
                col["data_tests"] = ["unique", "not_null"] if len(t.primary_key) == 1 else ["not_null"]
            cols.append(col)
        entry["columns"] = cols
        out_tables.append(entry)
    source = {"name": source_name or schema, "schema": schema,
              "description": f"Tables loaded by mysql-analytics-etl{f' from {origin}' if origin else ''}; "
                             f"run history in schema {METRICS_SCHEMA}."
                             + (" Freshness: the end of each table's last sync if it succeeded (a failed "
                                "last sync is stale at once)." if style == "config" else ""),
              "tables": out_tables}
    return {"version": 2, "sources": [source]}


def render_yaml(doc: dict, *, where: str = "") -> str:
    head = (f"# Generated by `etl dbt-sources`{f' from {where}' if where else ''} at "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.\n"
            f"# Regenerate it after schema changes instead of editing it by hand.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)
