"""The union schema (`raw_all`): one view per table over every clinic's copy of it.

    raw_all.procedurelog = SELECT 'north' AS _source, ... FROM raw_north.procedurelog
                           UNION ALL SELECT 'south' AS _source, ... FROM raw_south.procedurelog

The pattern of Fivetran's dbt packages (one schema per connector, unioned with a source column).
Columns are aligned by name in the order they first appear (clinics in the sources file's order); a
column a clinic lacks is `NULL` cast to the column's common type; a column whose types cannot share
one type (boolean in one clinic, smallint in another) fails that view with a message naming clinic,
table and column, and the other views are still built.

A view is rebuilt only when its definition changes (a clinic's columns changed, a clinic gained or
lost the table): the definition's digest is kept in the view's comment. Each view is built in its own
transaction. Only views this module made (comment `etl-union ...`) are ever replaced or dropped.

Example:
    ```python
    from tasks.union import Member, build_union

    with engine.connect() as c:
        results = build_union(c.connection.driver_connection, "raw_all",
                              [Member("north", "raw_north"), Member("south", "raw_south")])
    print([(r.table, r.status, r.error) for r in results])
    ```
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.identifiers import execute, pg_ident, pg_qualified

log = logging.getLogger("etl.union")

SOURCE_COLUMN = "_source"
MARKER = "etl-union"
UnionStatus = Literal["built", "unchanged", "failed", "dropped"]


@dataclass(frozen=True)
class Member:
    """One clinic in the union: its name (the `_source` value) and its analytics schema."""

    source: str
    schema: str


@dataclass(frozen=True)
class Column:
    name: str
    type: str   # format_type(): `character varying(40)`, `numeric(10,2)`, `timestamp(6) without time zone`
    base: str   # the type without modifiers: `character varying`, `numeric`, `timestamp without time zone`


@dataclass
class UnionView:
    """What happened to one view of the union schema."""

    table: str
    status: UnionStatus
    sources: list[str] = field(default_factory=list)
    error: str | None = None


class IncompatibleColumn(Exception):
    """Two clinics hold a column in types that share no common type."""


# Types that widen into one another (PostgreSQL casts each implicitly into the later ones).
_INTEGERS = ["smallint", "integer", "bigint"]
_FLOATS = ["real", "double precision"]
_TEXTS = {"character varying", "text", "character"}
_DATETIMES = ["date", "timestamp without time zone"]


def common_type(column: str, typed: list[tuple[str, Column]], *, table: str) -> str:
    """The type every clinic's values of `column` fit, or IncompatibleColumn naming clinic, table, column.

    `typed`: (clinic, column) of every clinic that has the column, in the sources file's order."""
    types = {c.type for _, c in typed}
    if len(types) == 1:
        return types.pop()
    bases = {c.base for _, c in typed}
    if len(bases) == 1:  # same type, other length/precision: the type without the limit holds them all
        base = bases.pop()
        return "timestamp(6) without time zone" if base == "timestamp without time zone" else base
    if bases <= set(_INTEGERS) | set(_FLOATS) | {"numeric"}:
        if bases & set(_FLOATS):
            return "double precision"
        if "numeric" in bases:
            return "numeric"
        return max(bases, key=_INTEGERS.index)
    if bases <= _TEXTS:
        return "text"
    if bases <= set(_DATETIMES):
        return "timestamp(6) without time zone"
    first_source, first = typed[0]
    other_source, other = next((s, c) for s, c in typed if c.base != first.base)
    raise IncompatibleColumn(
        f"{table}.{column} is {first.type} in clinic {first_source} but {other.type} in clinic {other_source}; "
        f"these have no common type: load the column the same way in both clinics (e.g. the same "
        f"boolean_columns in their table configs)")


def read_columns(cur: Any, schemas: list[str]) -> dict[str, dict[str, list[Column]]]:
    """schema -> table -> columns in order, for the base tables of `schemas` (not `_etl_*` work tables)."""
    execute(cur, """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::regtype::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname NOT LIKE '\\_etl\\_%%'
        ORDER BY n.nspname, c.relname, a.attnum""", (list(schemas),))
    out: dict[str, dict[str, list[Column]]] = {s: {} for s in schemas}
    for schema, table, name, typ, base in cur.fetchall():
        out[schema].setdefault(table, []).append(Column(name, typ, base))
    return out


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(union_schema: str, table: str, members: list[tuple[Member, list[Column]]]) -> str:
    """The CREATE VIEW of one table over the clinics that have it; IncompatibleColumn when it cannot be built."""
    order: list[str] = []
    typed: dict[str, list[tuple[str, Column]]] = {}
    for m, cols in members:
        for c in cols:
            if c.name == SOURCE_COLUMN:
                raise IncompatibleColumn(f"{table}.{SOURCE_COLUMN} exists in clinic {m.source}; the union adds a "
                                         f"column of that name, so this table cannot be unioned")
            if c.name not in typed:
                order.append(c.name)
                typed[c.name] = []
            typed[c.name].append((m.source, c))
    common = {name: common_type(name, typed[name], table=table) for name in order}
    selects = []
    for m, cols in members:
        have = {c.name: c for c in cols}
        items = [f"{_literal(m.source)}::text AS {pg_ident(SOURCE_COLUMN)}"]
        for name in order:
            c = have.get(name)
            if c is None:
                items.append(f"NULL::{common[name]} AS {pg_ident(name)}")
            elif c.type == common[name]:
                items.append(pg_ident(name))
            else:
                items.append(f"{pg_ident(name)}::{common[name]} AS {pg_ident(name)}")
        selects.append(f"SELECT {', '.join(items)} FROM {pg_qualified(m.schema, table)}")
    return f"CREATE VIEW {pg_qualified(union_schema, table)} AS\n" + "\nUNION ALL\n".join(selects)


def _digest(sql: str) -> str:
    return f"{MARKER} {hashlib.sha256(sql.encode()).hexdigest()[:32]}"


def _our_views(cur: Any, union_schema: str) -> dict[str, str | None]:
    """Views of the union schema -> their comment (ours start with MARKER)."""
    execute(cur, """
        SELECT c.relname, obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind = 'v'""", (union_schema,))
    return dict(cur.fetchall())


def _replace_view(cur: Any, union_schema: str, table: str, sql: str, digest: str, *, exists: bool) -> None:
    """Drop (when it exists) and create the view in the caller's transaction. A dbt view on top of it
    makes DROP fail (no CASCADE: we never drop what others built); CREATE OR REPLACE is tried first,
    which keeps such dependents when only columns were added at the end."""
    qualified = pg_qualified(union_schema, table)
    if exists:
        execute(cur, "SAVEPOINT union_replace")
        try:
            execute(cur, sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
        except Exception:  # noqa: BLE001 - columns changed or reordered: drop and create below
            execute(cur, "ROLLBACK TO SAVEPOINT union_replace")
            execute(cur, f"DROP VIEW {qualified}")
            execute(cur, sql)
    else:
        execute(cur, sql)
    execute(cur, f"COMMENT ON VIEW {qualified} IS {_literal(digest)}")


def build_union(conn: Any, union_schema: str, members: list[Member]) -> list[UnionView]:
    """Create or update the union views of `members` in `union_schema` (a psycopg2 connection, which this
    commits). One result per table any clinic has, plus one per dropped view; failed views first."""
    with conn.cursor() as cur:
        execute(cur, f"CREATE SCHEMA IF NOT EXISTS {pg_ident(union_schema)}")
        conn.commit()
        columns = read_columns(cur, [m.schema for m in members])
        conn.rollback()
        tables = sorted({t for m in members for t in columns[m.schema]})
        existing = _our_views(cur, union_schema)
        conn.rollback()
        results = []
        for table in tables:
            having = [(m, columns[m.schema][table]) for m in members if table in columns[m.schema]]
            names = [m.source for m, _ in having]
            try:
                sql = view_sql(union_schema, table, having)
            except IncompatibleColumn as e:
                results.append(UnionView(table, "failed", names, f"{union_schema}.{table} not built: {e}"))
                continue
            digest = _digest(sql)
            current = existing.get(table, "")
            if table in existing and not (current or "").startswith(MARKER):
                results.append(UnionView(table, "failed", names, f"{union_schema}.{table} is a view this ETL did "
                                         f"not create; drop or rename it to let the union build it"))
                continue
            if current == digest:
                results.append(UnionView(table, "unchanged", names))
                continue
            try:
                execute(cur, "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"etl.union.{union_schema}.{table}",))
                _replace_view(cur, union_schema, table, sql, digest, exists=table in existing)
                conn.commit()
                results.append(UnionView(table, "built", names))
            except Exception as e:  # noqa: BLE001 - this view fails alone; the others are still built
                conn.rollback()
                first = (str(getattr(e, "pgerror", None) or e).strip().splitlines() or [""])[0]
                results.append(UnionView(table, "failed", names, f"{union_schema}.{table} not built: {first}"))
        for table, comment in existing.items():
            if table not in tables and (comment or "").startswith(MARKER):
                try:
                    execute(cur, f"DROP VIEW {pg_qualified(union_schema, table)}")
                    conn.commit()
                    results.append(UnionView(table, "dropped"))
                except Exception as e:  # noqa: BLE001 - a dependent view keeps it; say so
                    conn.rollback()
                    results.append(UnionView(table, "failed", [], f"{union_schema}.{table} not dropped: {e}"))
    return sorted(results, key=lambda r: (r.status != "failed", r.table))


def render_union(results: list[UnionView], union_schema: str) -> str:
    """One line per view: built / unchanged / failed with the reason."""
    lines = [f"union schema {union_schema}: {sum(r.status == 'built' for r in results)} built, "
             f"{sum(r.status == 'unchanged' for r in results)} unchanged, "
             f"{sum(r.status == 'failed' for r in results)} failed"]
    for r in results:
        if r.status == "failed":
            lines.append(f"  FAILED {r.error}")
        elif r.status == "dropped":
            lines.append(f"  dropped {union_schema}.{r.table} (no clinic has the table any more)")
    return "\n".join(lines)
