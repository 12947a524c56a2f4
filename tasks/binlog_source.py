"""What binlog mode needs from the source server, and where its binary log stands.

Pure reads of server settings: `missing_settings` names each setting or grant binlog mode lacks,
with the statement that fixes it (`etl discover` keeps today's mode then, `etl plan` prints why);
`Position` is a point in the log (file + offset), comparable and storable as one integer in the
state tables (file number * 2**32 + offset) next to the data it describes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_FILE_NO = re.compile(r"\.(\d+)$")


@dataclass(frozen=True, order=True)
class Position:
    """A point in the source's binary log: `file` (e.g. binlog.000003) and byte `offset` in it."""

    file: str
    offset: int

    @property
    def number(self) -> int:
        m = _FILE_NO.search(self.file)
        if not m:
            raise ValueError(f"binary log file name {self.file!r} has no sequence number")
        return int(m.group(1))

    def encode(self) -> int:
        return self.number * (1 << 32) + self.offset

    def key(self) -> tuple[int, int]:
        return (self.number, self.offset)

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}"


def _variables(cur: Any) -> dict[str, str]:
    cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', "
                "'binlog_row_metadata', 'server_id', 'version')")
    return {str(k).lower(): str(v) for k, v in cur.fetchall()}


def missing_settings(cur: Any) -> list[str]:
    """What the source lacks for binlog mode, each with the statement that fixes it; empty = ready."""
    v = _variables(cur)
    out: list[str] = []
    if "mariadb" not in v.get("version", "").lower():
        out.append("the source is MySQL: binlog mode supports MariaDB only (its consistent-snapshot position); "
                   "use mode: incremental")
        return out
    if v.get("log_bin", "OFF").upper() not in ("ON", "1"):
        out.append("binary logging is off: start the server with --log-bin --server-id=<n> (not settable at runtime)")
        return out
    if v.get("binlog_format", "").upper() != "ROW":
        out.append("binlog_format is " + v.get("binlog_format", "?") + ": SET GLOBAL binlog_format = 'ROW' "
                   "(and binlog_format=ROW in my.cnf)")
    if v.get("binlog_row_image", "").upper() != "FULL":
        out.append("binlog_row_image is " + v.get("binlog_row_image", "?") + ": SET GLOBAL binlog_row_image = 'FULL'")
    if v.get("binlog_row_metadata", "").upper() != "FULL":
        out.append("binlog_row_metadata is " + v.get("binlog_row_metadata", "unset") +
                   ": SET GLOBAL binlog_row_metadata = 'FULL' (MariaDB >= 10.5)")
    grants = _grants(cur)
    for priv in ("REPLICATION SLAVE", "REPLICATION CLIENT"):
        alias = {"REPLICATION SLAVE": "REPLICATION SLAVE", "REPLICATION CLIENT": "BINLOG MONITOR"}[priv]
        if not any(g in grants for g in ("ALL PRIVILEGES", priv, alias)):
            out.append(f"the ETL user lacks {priv}: GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <etl user>")
            break
    return out


def _grants(cur: Any) -> str:
    cur.execute("SHOW GRANTS")
    return " ".join(str(r[0]).upper() for r in cur.fetchall() if str(r[0]).upper().startswith("GRANT ") and
                    " ON *.* " in str(r[0]).upper())


def server_id(cur: Any) -> int:
    cur.execute("SELECT @@server_id")
    return int(cur.fetchone()[0])


def current_position(cur: Any) -> Position:
    """The end of the log now (SHOW MASTER STATUS): a run reads up to here and stops."""
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("binary logging is off on the source (SHOW MASTER STATUS is empty)")
    return Position(str(row[0]), int(row[1]))


def log_files(cur: Any) -> list[tuple[str, int]]:
    """(file, size) of every binary log the server still has, oldest first."""
    cur.execute("SHOW BINARY LOGS")
    return [(str(r[0]), int(r[1])) for r in cur.fetchall()]


def still_available(files: list[tuple[str, int]], at: Position) -> bool:
    """Whether the server can still serve the log from `at` (its file is there and long enough)."""
    sizes = dict(files)
    return at.file in sizes and at.offset <= sizes[at.file]


def decode(value: int, like: str) -> Position:
    """The Position `encode` stored; `like` is any file name of the server (for its base name)."""
    base = _FILE_NO.sub("", like)
    return Position(f"{base}.{value >> 32:06d}", value & 0xFFFFFFFF)


# Key types whose values the log library returns exactly as the query path would compare them (the
# apply re-reads rows by these values). TIMESTAMP comes back in the reader's time zone, FLOAT/DOUBLE
# rounded, TIME/YEAR/BIT/ENUM/SET in other shapes, utf16/utf32/ucs2 strings misdecoded.
_EXACT_KEY_TYPES = {"tinyint", "smallint", "mediumint", "int", "bigint", "decimal", "char", "varchar", "binary",
                    "varbinary", "date", "datetime"}
_MISREAD_CHARSETS = {"utf16", "utf16le", "utf32", "ucs2"}


def key_blocker(schema: Any, key: tuple[str, ...] | list[str]) -> str | None:
    """Why the log cannot name this key exactly (the first column and its type), or None when it can."""
    for name in key:
        col = schema.column(name)
        if col.data_type not in _EXACT_KEY_TYPES:
            return f"key column {name!r} is {col.column_type}"
        if (col.charset or "").lower() in _MISREAD_CHARSETS:
            return f"key column {name!r} is in {col.charset}"
    return None
