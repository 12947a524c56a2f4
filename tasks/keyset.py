"""Keyset pagination over a (possibly composite) primary key: `WHERE pk > last ORDER BY pk LIMIT n`.

Never LIMIT/OFFSET: each chunk starts where the previous one ended, found through the index, so a
chunk costs the same at the end of a table as at the start and a retry can resume after the last
committed key. The row comparison `(a, b) > (x, y)` is spelled out as
`a > x OR (a = x AND b > y)`, which every MySQL and MariaDB version turns into index ranges.

Every comparison must agree with the server's own ORDER BY for the column, or paging skips rows:
- strings: `col > %s` and `col = %s` use the column's collation (a column outranks a literal), the
  same collation ORDER BY uses, PAD SPACE included;
- ENUM and SET: ORDER BY sorts them by their index (bit mask for SET), but `col > 'x'` compares
  the text. Their last value is turned into that number before it is bound, and MySQL compares an
  ENUM/SET column with a number by index;
- FLOAT and DOUBLE: a value read back and bound again is not reliably the stored one (FLOAT is
  single precision), so `col = %s` can miss the row: such a key is refused (`for_table`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from tasks.errors import SchemaError
from tasks.type_mapping import rule_for_type



@dataclass(frozen=True)
class Keyset:
    """SQL fragments for one table's primary key, with DBAPI `%s` placeholders.

    `members`: for ENUM/SET key columns, their member list (see the module docstring).
    `sets`: which of those are SET columns (compared by bit mask, not position).
    """

    columns: tuple[str, ...]
    quote: Callable[[str], str]
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sets: frozenset[str] = frozenset()

    @classmethod
    def for_table(cls, schema: Any, columns: Sequence[str], quote: Callable[[str], str]) -> Keyset:
        """A keyset over `columns` of `schema` (a TableSchema), refusing keys it cannot page exactly."""
        members: dict[str, tuple[str, ...]] = {}
        sets: set[str] = set()
        for name in columns:
            col = schema.column(name)
            if rule_for_type(col.data_type).inexact_key:
                raise SchemaError(
                    f"table {schema.name!r}: key column {name!r} is {col.column_type}; a floating-point key cannot "
                    f"be compared exactly once read back, so rows could be skipped or merged wrongly; set "
                    f"tables.{schema.name}.primary_key to a unique NOT NULL key without FLOAT/DOUBLE columns, "
                    f"or change the column to DECIMAL"
                )
            if col.data_type in ("enum", "set"):
                members[name] = tuple(col.enum_values)
                if col.data_type == "set":
                    sets.add(name)
        return cls(tuple(columns), quote, members, frozenset(sets))

    @property
    def max_is_last(self) -> bool:
        """MAX(col) is the last key in ORDER BY order (not for ENUM/SET: MAX compares their text)."""
        return not self.members

    def __post_init__(self) -> None:
        # A change window pages on (change column, *key); when the change column IS the key (an
        # auto-increment id) it would be listed twice, and a select list naming a column twice fails.
        object.__setattr__(self, "columns", tuple(dict.fromkeys(self.columns)))

    @property
    def order_by(self) -> str:
        return ", ".join(self.quote(c) for c in self.columns)

    @property
    def order_by_desc(self) -> str:
        return ", ".join(f"{self.quote(c)} DESC" for c in self.columns)

    @property
    def select_list(self) -> str:
        return ", ".join(self.quote(c) for c in self.columns)

    def bind(self, column: str, value: Any) -> Any:
        """The parameter that compares with `column` the way its ORDER BY sorts."""
        members = self.members.get(column)
        if members is None or value is None or isinstance(value, int):
            return value
        text = value.decode() if isinstance(value, bytes) else str(value)
        if column in self.sets:
            # SET sorts by its bit mask: member i is bit i.
            return sum(1 << _position(members, p) - 1 for p in text.split(",") if p) if text else 0
        # ENUM sorts by position (1-based); '' is the error value, index 0 (unless '' is a member).
        return _position(members, text) if text or text in members else 0

    def after(self, last: Sequence[Any] | None) -> tuple[str, list[Any]]:
        """(`WHERE` condition, parameters) for rows strictly after key `last` (None: from the start)."""
        if last is None:
            return "1=1", []
        if len(last) != len(self.columns):
            raise ValueError(f"key {last!r} does not match primary key {self.columns!r}")
        bound = [self.bind(c, v) for c, v in zip(self.columns, last)]
        ors: list[str] = []
        params: list[Any] = []
        for i, col in enumerate(self.columns):
            ands = [f"{self.quote(c)} = %s" for c in self.columns[:i]]
            ands.append(f"{self.quote(col)} > %s")
            params.extend(bound[: i + 1])
            ors.append("(" + " AND ".join(ands) + ")")
        return "(" + " OR ".join(ors) + ")", params


def _position(members: tuple[str, ...], text: str) -> int:
    """1-based position of a member as the server returned it (its own spelling, so an exact match
    first; then without case and trailing spaces, as a `_ci` PAD SPACE column compares)."""
    if text in members:
        return members.index(text) + 1
    loose = [m.rstrip(" ").lower() for m in members]
    t = text.rstrip(" ").lower()
    if t in loose:
        return loose.index(t) + 1
    raise ValueError(f"{text!r} is not a member of {members!r}")
