"""Keyset pagination over a (possibly composite) primary key: `WHERE pk > last ORDER BY pk LIMIT n`.

Never LIMIT/OFFSET: each chunk starts where the previous one ended, found through the index, so a
chunk costs the same at the end of a table as at the start and a retry can resume after the last
committed key. The row comparison `(a, b) > (x, y)` is spelled out as
`a > x OR (a = x AND b > y)`, which every MySQL and MariaDB version turns into index ranges.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Keyset:
    """SQL fragments for one table's primary key, with DBAPI `%s` placeholders."""

    columns: tuple[str, ...]
    quote: Callable[[str], str]

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

    def after(self, last: Sequence[Any] | None) -> tuple[str, list[Any]]:
        """(`WHERE` condition, parameters) for rows strictly after key `last` (None: from the start)."""
        if last is None:
            return "1=1", []
        if len(last) != len(self.columns):
            raise ValueError(f"key {last!r} does not match primary key {self.columns!r}")
        ors: list[str] = []
        params: list[Any] = []
        for i, col in enumerate(self.columns):
            ands = [f"{self.quote(c)} = %s" for c in self.columns[:i]]
            ands.append(f"{self.quote(col)} > %s")
            params.extend(last[: i + 1])
            ors.append("(" + " AND ".join(ands) + ")")
        return "(" + " OR ".join(ors) + ")", params
