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
from tasks.type_mapping import widening_order

_INT_ORDER = widening_order("integer")  # tasks/type_mapping.TYPE_RULES
_TEXT_ORDER = widening_order("text")
_BLOB_ORDER = widening_order("blob")


@dataclass
class Drift:
    added: list[Column] = field(default_factory=list)
    widened: list[tuple[Column, Column]] = field(default_factory=list)  # (replica, source)
    # NULL -> NOT NULL (type unchanged or widened): applied only where no NULL is left (tasks/sync.py)
    tightened: list[tuple[Column, Column]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.added or self.widened or self.tightened or self.problems)

    def describe(self) -> str:
        parts = [f"added {c.name} {c.column_type}" for c in self.added]
        parts += [f"widened {old.name} {_shape(old)} -> {_shape(new)}" if _shape(old) != _shape(new)
                  else f"collation of {old.name} {old.collation} -> {new.collation}" for old, new in self.widened]
        parts += [f"{new.name} became NOT NULL" for _, new in self.tightened]
        return "; ".join(parts + self.problems)


# Bytes a character can take, by character set: how many bytes a CHAR/VARCHAR(n) value needs.
_CHARSET_BYTES = {"latin1": 1, "ascii": 1, "binary": 1, "ucs2": 2, "utf8": 3, "utf8mb3": 3, "utf8mb4": 4,
                  "utf16": 4, "utf16le": 4, "utf32": 4}
_TEXT_BYTES = {"tinytext": 255, "text": 65_535, "mediumtext": 16_777_215, "longtext": 4_294_967_295}
_BLOB_BYTES = {"tinyblob": 255, "blob": 65_535, "mediumblob": 16_777_215, "longblob": 4_294_967_295}
# Decimal digits of the largest value of each integer type (signed, unsigned).
_INT_DIGITS = {"tinyint": (3, 3), "smallint": (5, 5), "mediumint": (7, 8), "int": (10, 10), "bigint": (19, 20)}


def is_widening(old: Column, new: Column) -> bool:
    """True when every value `old` holds is held unchanged by `new`, so both copies can be altered
    in place and no stored value (in the replica or in analytics) changes.

    Nullability counts only one way: NOT NULL -> NULL is a widening; NULL -> NOT NULL is not (see
    `is_tightening`). DEFAULT, COMMENT and ON UPDATE are not part of the type and never compared.
    """
    if old.nullable and not new.nullable:
        return False
    return _same_type(old, new) or _type_widens(old, new)


def is_tightening(old: Column, new: Column) -> bool:
    """NULL -> NOT NULL, with the same type or a widened one."""
    return old.nullable and not new.nullable and (_same_type(old, new) or _type_widens(old, new))


def _same_type(old: Column, new: Column) -> bool:
    return (old.column_type, old.charset) == (new.column_type, new.charset)


def _type_widens(old: Column, new: Column) -> bool:
    a, b = old.data_type, new.data_type
    if a in _INT_ORDER and b in _INT_ORDER:
        if old.unsigned == new.unsigned:
            return _INT_ORDER.index(b) >= _INT_ORDER.index(a)
        return not new.unsigned and _INT_ORDER.index(b) > _INT_ORDER.index(a)
    if a in _INT_ORDER and b == "decimal":
        # every integer of `a` fits when the integer digits cover its largest value (12345 -> 12345.00)
        digits = _INT_DIGITS[a][1 if old.unsigned else 0]
        return (new.precision or 0) - (new.scale or 0) >= digits and (old.unsigned or not new.unsigned)
    if a in ("varchar", "char") and b == "varchar":
        return (new.char_length or 0) >= (old.char_length or 0) and old.charset == new.charset
    if a in ("varchar", "char") and b in _TEXT_ORDER:
        # a TEXT type's limit is in bytes: varchar(255) utf8mb4 needs up to 1,020
        need = (old.char_length or 0) * _CHARSET_BYTES.get(str(old.charset), 4)
        return need <= _TEXT_BYTES[b] and old.charset == new.charset
    if a in _TEXT_ORDER and b in _TEXT_ORDER:
        return _TEXT_ORDER.index(b) >= _TEXT_ORDER.index(a) and old.charset == new.charset
    if a in _BLOB_ORDER and b in _BLOB_ORDER:
        return _BLOB_ORDER.index(b) >= _BLOB_ORDER.index(a)
    if a == "varbinary" and b == "varbinary":
        return (new.char_length or 0) >= (old.char_length or 0)
    if a == "varbinary" and b in _BLOB_ORDER:
        return (old.char_length or 0) <= _BLOB_BYTES[b]
    if a == b == "decimal":
        return (new.scale or 0) >= (old.scale or 0) and \
            (new.precision or 0) - (new.scale or 0) >= (old.precision or 0) - (old.scale or 0)
    if a == b and a in ("datetime", "timestamp", "time"):
        return (new.datetime_precision or 0) >= (old.datetime_precision or 0)
    if a == "float" and b == "double":
        return True
    if a == b and a in ("enum", "set"):
        # Values appended at the end: every stored value keeps its meaning (an ENUM its index, a
        # SET its bits). A value removed or moved is not a widening (`enum_change`).
        olds, news = old.enum_values, new.enum_values
        return news[:len(olds)] == olds and old.charset == new.charset
    return False


def enum_change(old: Column, new: Column) -> str | None:
    """Why an ENUM/SET change that is not an append is refused (None when it is not one)."""
    if not (old.data_type == new.data_type and old.data_type in ("enum", "set")):
        return None
    olds, news = old.enum_values, new.enum_values
    removed = [v for v in olds if v not in news]
    if removed:
        return f"values {removed} were removed from the {old.data_type.upper()}"
    if news[:len(olds)] != olds:
        return (f"its {old.data_type.upper()} values were reordered or inserted before existing ones "
                f"(stored values would change meaning)")
    return None


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
            elif is_tightening(old, c):
                drift.tightened.append((old, c))
            else:
                drift.problems.append(_not_widening(old, c))
    for c in replica.columns:
        if c.name not in src:
            drift.problems.append(f"column {c.name!r} was dropped in the source")
    if source.primary_key != replica.primary_key and not drift.problems:
        drift.problems.append(f"primary key changed from {list(replica.primary_key)} to {list(source.primary_key)}")
    return drift


def _shape(c: Column) -> str:
    return c.column_type + ("" if c.nullable else " NOT NULL")


def _not_widening(old: Column, new: Column) -> str:
    why = enum_change(old, new)
    if why is None:
        if old.column_type == new.column_type and old.charset != new.charset:
            why = f"its character set changed from {old.charset} to {new.charset}"
        else:
            why = f"it changed from {_shape(old)} to {_shape(new)}, which is not a widening"
    return f"column {new.name!r}: {why}"


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
    for _, new in drift.widened + drift.tightened:
        stmts.append(f"ALTER TABLE {mysql_ident(table)} MODIFY COLUMN {column_definition(show_create, new.name)}")
    return stmts


def hold_back_tightening(table: str, drift: Drift, nulls: dict[str, int]) -> list[str]:
    """Leave out of `drift` the NULL -> NOT NULL changes of columns the replica still holds NULL in.

    `nulls` is column -> rows holding NULL in the replica: rows deleted or changed in the source
    that this run has not merged yet. The replica's sessions are not strict, so MODIFY ... NOT NULL
    would silently turn them into '' or 0; instead the column stays NULL-able (it holds every value
    the source has) and the change is retried on the next run, when those rows have been merged.
    Returns the notes to show. A column whose type changed as well cannot wait (the wider values
    would be truncated): that is a SchemaError saying what to do.
    """
    notes = []
    for old, new in list(drift.tightened):
        held = nulls.get(new.name, 0)
        if not held:
            continue
        if not _same_type(old, new):
            raise SchemaError(
                f"table {table!r}: column {new.name!r} changed from {_shape(old)} to {_shape(new)} but the replica "
                f"still holds NULL in it in {held} row(s) not merged yet; run `etl run --full-refresh --tables {table}`")
        drift.tightened.remove((old, new))
        notes.append(f"column {new.name} became NOT NULL in the source; the replica keeps it NULL-able until "
                     f"its {held} row(s) holding NULL are merged (retried next run)")
    return notes


def refuse(table: str, drift: Drift) -> SchemaError:
    return SchemaError(
        f"table {table!r}: source schema changed in a way that is not applied automatically "
        f"({'; '.join(drift.problems)}); nothing was changed. To rebuild replica and analytics from the "
        f"source's current shape run `etl run --full-refresh --tables {table}` (drop or adjust views on it first)"
    )

