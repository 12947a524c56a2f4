"""Schema drift between the source and the replica, and what is safe to apply in place.

- a column added in the source: ADD COLUMN in the replica (in its source position) and, through a
  reload, in analytics; the table is reloaded so the new column is back-filled;
- a widened type (int -> bigint, varchar(20) -> varchar(100), decimal(10,2) -> decimal(12,2), a
  bigger text/blob, more fractional seconds): MODIFY in place, no reload needed;
- anything else (a dropped column, a narrowed or different type): the table stops with a message
  that says what to do. Nothing is dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tasks.errors import SchemaError
from tasks.identifiers import mysql_ident, mysql_quote, sql_text
from tasks.mysql_schema import Column, TableSchema

_INT_ORDER = ["tinyint", "smallint", "mediumint", "int", "bigint"]
_TEXT_ORDER = ["tinytext", "text", "mediumtext", "longtext"]
_BLOB_ORDER = ["tinyblob", "blob", "mediumblob", "longblob"]


@dataclass
class Drift:
    added: list[Column] = field(default_factory=list)
    widened: list[tuple[Column, Column]] = field(default_factory=list)  # (replica, source)
    problems: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.added or self.widened or self.problems)

    def describe(self) -> str:
        parts = [f"added {c.name} {c.column_type}" for c in self.added]
        parts += [f"widened {old.name} {old.column_type} -> {new.column_type}" if old.column_type != new.column_type
                  else f"collation of {old.name} {old.collation} -> {new.collation}" for old, new in self.widened]
        return "; ".join(parts + self.problems)


def is_widening(old: Column, new: Column) -> bool:
    if old.nullable and not new.nullable:
        return False
    a, b = old.data_type, new.data_type
    if a in _INT_ORDER and b in _INT_ORDER:
        if old.unsigned == new.unsigned:
            return _INT_ORDER.index(b) >= _INT_ORDER.index(a)
        return not new.unsigned and _INT_ORDER.index(b) > _INT_ORDER.index(a)
    if a in ("varchar", "char") and b == "varchar":
        return (new.char_length or 0) >= (old.char_length or 0) and old.charset == new.charset
    if a in _TEXT_ORDER and b in _TEXT_ORDER:
        return _TEXT_ORDER.index(b) >= _TEXT_ORDER.index(a) and old.charset == new.charset
    if a in _BLOB_ORDER and b in _BLOB_ORDER:
        return _BLOB_ORDER.index(b) >= _BLOB_ORDER.index(a)
    if a == "varbinary" and b == "varbinary":
        return (new.char_length or 0) >= (old.char_length or 0)
    if a == b == "decimal":
        return (new.scale or 0) >= (old.scale or 0) and \
            (new.precision or 0) - (new.scale or 0) >= (old.precision or 0) - (old.scale or 0)
    if a == b and a in ("datetime", "timestamp", "time"):
        return (new.datetime_precision or 0) >= (old.datetime_precision or 0)
    if a == "float" and b == "double":
        return True
    return False


def compare(source: TableSchema, replica: TableSchema, *, key: tuple[str, ...] | None = None) -> Drift:
    """What changed from the replica's shape to the source's. `key`: the merge key (default: primary key).

    A changed collation is drift too: it is how the server compares and orders the column. On a
    non-key column it is applied in place (MODIFY: same bytes, other comparison). On a key column
    it is refused: which rows are the same key changes ('X1' and 'x1' become two keys under
    utf8mb4_bin), so the replica is rebuilt by a full refresh rather than merged under the old rule.
    """
    drift = Drift()
    rep = {c.name: c for c in replica.columns}
    src = {c.name: c for c in source.columns}
    key = source.primary_key if key is None else key
    for c in source.columns:
        old = rep.get(c.name)
        if old is None:
            drift.added.append(c)
        elif c.name in key and old.collation != c.collation:
            drift.problems.append(f"the collation of key column {c.name!r} changed from {old.collation} to "
                                  f"{c.collation}, which changes which keys are equal")
        elif _collation_changed(old, c):
            drift.widened.append((old, c))
        elif (old.column_type, old.nullable, old.charset) != (c.column_type, c.nullable, c.charset):
            if is_widening(old, c):
                drift.widened.append((old, c))
            else:
                drift.problems.append(f"column {c.name!r} changed from {old.column_type} to {c.column_type}, "
                                      f"which is not a widening")
    for c in replica.columns:
        if c.name not in src:
            drift.problems.append(f"column {c.name!r} was dropped in the source")
    if source.primary_key != replica.primary_key and not drift.problems:
        drift.problems.append(f"primary key changed from {list(replica.primary_key)} to {list(source.primary_key)}")
    return drift


def _collation_changed(old: Column, new: Column) -> bool:
    """Only the collation differs (a type change as well is judged by is_widening, whose MODIFY
    carries the source's collation)."""
    return (old.collation != new.collation and (old.column_type, old.nullable, old.charset)
            == (new.column_type, new.nullable, new.charset))


def column_definition(show_create: str, column: str) -> str:
    """The column's definition line from SHOW CREATE TABLE output, in format form (tasks/identifiers.py)."""
    quoted = mysql_quote(column)  # as the server prints it
    for line in show_create.split("\n"):
        s = line.strip().rstrip(",")
        if s.startswith(quoted + " "):
            return sql_text(s)
    raise SchemaError(f"column {column!r} not found in SHOW CREATE TABLE output")


def replica_alter_sql(table: str, drift: Drift, source: TableSchema, show_create: str) -> list[str]:
    """ALTER statements (format form) that bring the replica to the source's shape (additions in position)."""
    order = source.column_names
    stmts = []
    for c in drift.added:
        i = order.index(c.name)
        where = f" AFTER {mysql_ident(order[i - 1])}" if i > 0 else " FIRST"
        stmts.append(f"ALTER TABLE {mysql_ident(table)} ADD COLUMN {column_definition(show_create, c.name)}{where}")
    for _, new in drift.widened:
        stmts.append(f"ALTER TABLE {mysql_ident(table)} MODIFY COLUMN {column_definition(show_create, new.name)}")
    return stmts


def refuse(table: str, drift: Drift) -> SchemaError:
    return SchemaError(
        f"table {table!r}: source schema changed in a way that is not applied automatically "
        f"({'; '.join(drift.problems)}); nothing was changed. To rebuild replica and analytics from the "
        f"source's current shape run `etl run --full-refresh --tables {table}` (drop or adjust views on it first)"
    )

