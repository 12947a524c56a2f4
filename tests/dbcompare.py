"""Value-by-value comparison of MySQL/MariaDB tables with their copies.

Two checks, both raising ``AssertionError`` with a readable report of the first 10 problems:

``assert_mysql_equal(src_conn, src_db, dst_conn, dst_db, table)``
    The MySQL replica must be an exact copy: same columns (name, order, COLUMN_TYPE,
    character set, JSON-ness), same rows, same values (compared strictly: type and repr,
    FLOAT columns additionally by their stored bits), and the same ``CHECKSUM TABLE`` when
    the two table definitions are comparable (same column types, nullability and engine).

``assert_pg_matches_mysql(my_conn, my_db, pg_conn, pg_schema, table, ...)``
    The PostgreSQL copy must hold exactly what the type mapping says (see ``_check_pg_type``
    and ``_expected_value``).  Rows are matched by primary key (multiset of whole rows for a
    table without one), so a missing, extra or changed row or value, or a different column
    set, always fails.  PostgreSQL columns whose name starts with ``_etl`` are ignored.

Connections are plain DBAPI connections:

* PyMySQL, ``charset='utf8mb4'`` (checked), default converters and the session time zone
  UTC (``'+00:00'``; if the session has another time zone it is switched to UTC for the
  duration of the read and restored afterwards);
* psycopg2 (any session time zone: timestamptz values are compared as instants).

Reads never leave a transaction open behind them: when a connection was idle (no open
transaction) before a read and is not in autocommit mode, the read transaction is rolled
back afterwards, so no snapshot or metadata lock outlives the call.

FLOAT
    MariaDB prints FLOAT with 6 significant digits (``123456789`` stored as float prints as
    ``123457000``; ``1/3`` prints as ``0.333333``); PyMySQL hands that printed text to Python.
    ``CAST(col AS DOUBLE)`` gives the stored float32 exactly.  A PostgreSQL ``real`` value is
    accepted if, as a float32, it equals either the stored float32 (exact copy) or the float32
    nearest to MySQL's printed text (copy through the printed form).  Both tests are exact
    float32 equality, so any other value fails, e.g. 0.3333333 for a stored 0.33333334.
    ``-0.0 == 0.0`` as in Python (MariaDB stores ``-0e0`` as 0 anyway).  DOUBLE is printed by
    MariaDB in the shortest exact form, so it is compared with plain float ``==``.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import struct
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

UTC = _dt.timezone.utc
MAX_REPORTED = 10
_REPR_LIMIT = 160

__all__ = [
    "MyColumn",
    "PgColumn",
    "assert_mysql_equal",
    "assert_pg_matches_mysql",
    "connect_mysql",
    "connect_pg",
    "fetch_mysql_rows",
    "fetch_pg_rows",
    "load_sql_file",
    "mysql_columns",
    "mysql_primary_key",
    "pg_columns",
    "split_sql_script",
]


# ----------------------------------------------------------------------------- connections
def connect_mysql(url: str, **kwargs: Any):
    """PyMySQL connection from a SQLAlchemy-style URL, utf8mb4, session time zone UTC."""
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    params = dict(host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                  password=u.password or "", database=u.database, charset="utf8mb4",
                  autocommit=True, init_command="SET time_zone = '+00:00'")
    params.update(kwargs)
    return pymysql.connect(**params)


def connect_pg(url: str, **kwargs: Any):
    """psycopg2 connection from a SQLAlchemy-style URL (autocommit)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    params = dict(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                  dbname=u.database or "postgres")
    if u.password:
        params["password"] = u.password
    params.update(kwargs)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


# ----------------------------------------------------------------------------- SQL scripts
def split_sql_script(text: str) -> list[str]:
    """Split a MySQL script on ``;`` outside quotes and comments.

    Understands '...' and "..." (backslash escapes and doubled quotes), `...`, ``-- ``, ``#``
    and ``/* */`` comments.  Statements consisting only of comments are dropped.  The
    ``DELIMITER`` client command is not supported.
    """
    stmts: list[str] = []
    buf: list[str] = []
    has_code = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in ("'", '"', "`"):
            j = i + 1
            while j < n:
                c = text[j]
                if c == "\\" and ch != "`":
                    j += 2
                    continue
                if c == ch:
                    if j + 1 < n and text[j + 1] == ch:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            buf.append(text[i:j + 1])
            has_code = True
            i = j + 1
        elif ch == "#" or (ch == "-" and text.startswith("--", i)
                           and (i + 2 >= n or text[i + 2] in " \t\r\n")):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            i = j
        elif ch == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            chunk = text[i:j]
            buf.append(chunk)
            if chunk.startswith("/*!"):  # MySQL executable comment
                has_code = True
            i = j
        elif ch == ";":
            if has_code:
                stmts.append("".join(buf).strip())
            buf, has_code = [], False
            i += 1
        else:
            buf.append(ch)
            if not ch.isspace():
                has_code = True
            i += 1
    if has_code:
        stmts.append("".join(buf).strip())
    return stmts


def load_sql_file(conn, path: str | Path) -> int:
    """Run every statement of a MySQL script on a PyMySQL connection; return the count."""
    stmts = split_sql_script(Path(path).read_text(encoding="utf-8"))
    with conn.cursor() as cur:
        for stmt in stmts:
            cur.execute(stmt)
    conn.commit()
    return len(stmts)


# ----------------------------------------------------------------------------- helpers
def _qmy(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _qpg(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _short(v: Any) -> str:
    if isinstance(v, memoryview):
        v = bytes(v)
    r = repr(v)
    if len(r) > _REPR_LIMIT:
        r = r[:_REPR_LIMIT] + f"... ({len(v) if hasattr(v, '__len__') else '?'} long)"
    return r


def _mysql_cursor(conn):
    import pymysql.cursors

    return conn.cursor(pymysql.cursors.Cursor)  # tuples, whatever the connection's default


@contextmanager
def _mysql_read(conn) -> Iterator[Any]:
    """utf8mb4 + UTC session for the read; end the read transaction if we started it."""
    charset = getattr(conn, "charset", None)
    if charset != "utf8mb4":
        raise ValueError(f"PyMySQL connection must use charset='utf8mb4', not {charset!r}")
    in_trans_before = bool(getattr(conn, "server_status", 0) & 1)  # SERVER_STATUS_IN_TRANS
    cur = _mysql_cursor(conn)
    old_tz = None
    try:
        cur.execute("SELECT @@session.time_zone")
        tz = cur.fetchone()[0]
        if tz not in ("+00:00", "UTC", "Etc/UTC"):
            old_tz = tz
            cur.execute("SET time_zone = '+00:00'")
        yield cur
    finally:
        try:
            if old_tz is not None:
                cur.execute("SET time_zone = %s", (old_tz,))
            cur.close()
        finally:
            if not in_trans_before and not conn.get_autocommit():
                conn.rollback()


@contextmanager
def _pg_read(conn) -> Iterator[Any]:
    import psycopg2.extensions as ext

    status = conn.info.transaction_status
    if status == ext.TRANSACTION_STATUS_INERROR:
        raise ValueError("psycopg2 connection is in a failed transaction; roll it back first")
    idle_before = status == ext.TRANSACTION_STATUS_IDLE
    cur = conn.cursor(cursor_factory=ext.cursor)
    try:
        yield cur
    finally:
        cur.close()
        if idle_before and not conn.autocommit:
            conn.rollback()


# ----------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class MyColumn:
    name: str
    ordinal: int
    data_type: str          # information_schema DATA_TYPE, lower case ('longtext' for MariaDB json)
    column_type: str        # e.g. 'tinyint(1)', 'bigint(20) unsigned', "enum('a','b')"
    nullable: bool
    char_max_len: int | None
    num_precision: int | None
    num_scale: int | None
    dt_precision: int | None
    charset: str | None
    collation: str | None
    is_json: bool

    @property
    def unsigned(self) -> bool:
        return " unsigned" in self.column_type.lower()

    @property
    def bit_width(self) -> int:
        m = re.match(r"bit\((\d+)\)", self.column_type.lower())
        return int(m.group(1)) if m else 1

    @property
    def is_tinyint1(self) -> bool:
        return re.fullmatch(r"tinyint\(1\)", self.column_type.lower().strip()) is not None


@dataclass(frozen=True)
class PgColumn:
    name: str
    ordinal: int
    data_type: str          # information_schema data_type, e.g. 'timestamp with time zone'
    udt_name: str
    nullable: bool
    char_max_len: int | None
    num_precision: int | None
    num_scale: int | None
    dt_precision: int | None


def _mysql_json_columns(cur, db: str, table: str) -> set[str]:
    try:
        cur.execute(
            "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s", (db, table))
    except Exception:  # MySQL 8 has no TABLE_NAME here (and has a real json type)
        return set()
    out = set()
    for _name, clause in cur.fetchall():
        for m in re.finditer(r"json_valid\(\s*`((?:[^`]|``)+)`\s*\)", clause or "", re.I):
            out.add(m.group(1).replace("``", "`"))
    return out


def mysql_columns(conn, db: str, table: str) -> list[MyColumn]:
    """Columns of `db`.`table` in ordinal order (empty list if the table does not exist)."""
    with _mysql_read(conn) as cur:
        return _mysql_columns(cur, db, table)


def _mysql_columns(cur, db: str, table: str) -> list[MyColumn]:
    cur.execute(
        "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, "
        "CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, "
        "CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (db, table))
    rows = [r for r in cur.fetchall() if r[0] == table]  # exact (case-sensitive) name
    json_cols = _mysql_json_columns(cur, db, table)
    cols = []
    for (_t, name, pos, dtype, ctype, nullable, cml, npr, nsc, dtp, cs, coll) in rows:
        dtype = dtype.lower()
        cols.append(MyColumn(
            name=name, ordinal=int(pos), data_type=dtype, column_type=ctype, nullable=nullable == "YES",
            char_max_len=None if cml is None else int(cml),
            num_precision=None if npr is None else int(npr),
            num_scale=None if nsc is None else int(nsc),
            dt_precision=None if dtp is None else int(dtp), charset=cs, collation=coll,
            is_json=dtype == "json" or (dtype == "longtext" and name in json_cols)))
    return cols


def mysql_primary_key(conn, db: str, table: str) -> list[str]:
    with _mysql_read(conn) as cur:
        return _mysql_primary_key(cur, db, table)


def _mysql_primary_key(cur, db: str, table: str) -> list[str]:
    cur.execute(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' "
        "ORDER BY SEQ_IN_INDEX", (db, table))
    return [c for t, c in cur.fetchall() if t == table]


def _mysql_table_info(cur, db: str, table: str) -> tuple[str | None, str | None]:
    cur.execute("SELECT TABLE_NAME, ENGINE, TABLE_TYPE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (db, table))
    for t, engine, ttype in cur.fetchall():
        if t == table:
            return engine, ttype
    return None, None


def pg_columns(conn, schema: str, table: str) -> list[PgColumn]:
    with _pg_read(conn) as cur:
        return _pg_columns(cur, schema, table)


def _pg_columns(cur, schema: str, table: str) -> list[PgColumn]:
    cur.execute(
        "SELECT column_name, ordinal_position, data_type, udt_name, is_nullable, "
        "character_maximum_length, numeric_precision, numeric_scale, datetime_precision "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (schema, table))
    return [PgColumn(name=r[0], ordinal=r[1], data_type=r[2], udt_name=r[3], nullable=r[4] == "YES",
                     char_max_len=r[5], num_precision=r[6], num_scale=r[7], dt_precision=r[8])
            for r in cur.fetchall()]


# ----------------------------------------------------------------------------- fetching
def fetch_mysql_rows(conn, table: str, order_by: Sequence[str], *, db: str | None = None,
                     columns: Sequence[str] | None = None) -> list[tuple]:
    """All rows of `table` (in `db`, default: the connection's current database) as PyMySQL
    returns them with its default converters, ordered by the given column names."""
    exprs = [_qmy(c) for c in columns] if columns else ["*"]
    with _mysql_read(conn) as cur:
        return _mysql_select(cur, db, table, exprs, order_by)


def _mysql_select(cur, db: str | None, table: str, exprs: Sequence[str], order_by: Sequence[str]) -> list[tuple]:
    src = (_qmy(db) + "." if db else "") + _qmy(table)
    sql = f"SELECT {', '.join(exprs)} FROM {src}"
    if order_by:
        sql += " ORDER BY " + ", ".join(_qmy(c) for c in order_by)
    cur.execute(sql)
    return list(cur.fetchall())


def fetch_pg_rows(conn, schema: str, table: str, order_by: Sequence[str], *,
                  columns: Sequence[str] | None = None) -> list[tuple]:
    """All rows of "schema"."table" as psycopg2 returns them, ordered by the given column
    names.  json/jsonb values are parsed with ``Decimal`` for non-integer numbers (psycopg2's
    default would round them through float)."""
    import psycopg2.extras

    exprs = [_qpg(c) for c in columns] if columns else ["*"]
    with _pg_read(conn) as cur:
        loads = lambda s: json.loads(s, parse_float=Decimal)  # noqa: E731
        psycopg2.extras.register_default_json(cur, loads=loads)
        psycopg2.extras.register_default_jsonb(cur, loads=loads)
        return _pg_select(cur, schema, table, exprs, order_by)


def _pg_select(cur, schema: str, table: str, exprs: Sequence[str], order_by: Sequence[str]) -> list[tuple]:
    sql = f"SELECT {', '.join(exprs)} FROM {_qpg(schema)}.{_qpg(table)}"
    if order_by:
        sql += " ORDER BY " + ", ".join(_qpg(c) for c in order_by)
    cur.execute(sql)
    return list(cur.fetchall())


# ----------------------------------------------------------------------------- canonical values
class JsonValue:
    """A parsed JSON document compared by meaning (key order, whitespace and number
    spelling ignored; numbers compared exactly as Decimal; JSON null != SQL NULL)."""

    __slots__ = ("text", "frozen")

    def __init__(self, text: str):
        self.text = text
        try:
            self.frozen = _freeze_json(json.loads(text, parse_float=Decimal))
        except ValueError:  # not JSON at all: equal only to the very same text
            self.frozen = ("invalid-json", text)

    def __eq__(self, other):
        return isinstance(other, JsonValue) and self.frozen == other.frozen

    def __hash__(self):
        return hash(self.frozen)

    def __repr__(self):
        return f"json({self.text})"


def _freeze_json(v):
    if isinstance(v, dict):
        return ("obj", tuple(sorted((k, _freeze_json(x)) for k, x in v.items())))
    if isinstance(v, list):
        return ("arr", tuple(_freeze_json(x) for x in v))
    if isinstance(v, bool):
        return ("bool", v)
    if v is None:
        return ("null",)
    if isinstance(v, (int, Decimal)):
        return ("num", Decimal(v))
    if isinstance(v, float):  # only if a caller passes floats in; not produced here
        return ("num", Decimal(repr(v)))
    return ("str", v)


@dataclass(frozen=True)
class _FloatExpect:
    """Expected PostgreSQL real: either the stored float32 or MySQL's printed text as float32."""

    exact: float
    printed: float

    def matches(self, actual) -> bool:
        return isinstance(actual, float) and (actual == self.exact or actual == self.printed)

    def __repr__(self):
        if self.exact == self.printed:
            return repr(self.exact)
        return f"{self.exact!r} (stored) or {self.printed!r} (printed)"


def _f32(x: float) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", float(x)))[0]
    except OverflowError:
        return float(x)


_TEXTISH_PG = {"text", "character varying", "character", "name", "citext", "USER-DEFINED"}
_MY_TEMPORAL = {"date", "datetime", "timestamp"}
_MY_GEOMETRY = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
                "geometrycollection"}


def jsonb_refuses(text: str) -> bool:
    """Whether PostgreSQL jsonb cannot hold this (valid) JSON document: a string or key holding
    NUL (from \\u0000) or a lone UTF-16 surrogate (Python's json keeps those as lone code points)."""
    def bad(v) -> bool:
        if isinstance(v, str):
            return "\x00" in v or any(0xD800 <= ord(ch) <= 0xDFFF for ch in v)
        if isinstance(v, dict):
            return any(bad(k) or bad(x) for k, x in v.items())
        if isinstance(v, list):
            return any(bad(x) for x in v)
        return False
    try:
        return bad(json.loads(text))
    except ValueError:
        return False


def _canon_pg(v: Any, pc: PgColumn) -> Any:
    """psycopg2 value -> canonical Python value (json/jsonb arrive as text, see _pg_exprs)."""
    if v is None:
        return None
    t = pc.data_type
    if isinstance(v, memoryview):
        return bytes(v)
    if t == "json":  # json keeps the document's text exactly: compare the text
        return v
    if t == "jsonb":
        return JsonValue(v)
    if t == "real":
        return _f32(v)
    if t == "timestamp with time zone" and isinstance(v, _dt.datetime):
        return v.astimezone(UTC)
    return v


def _bits(v: Any, width: int) -> str:
    if isinstance(v, (bytes, bytearray)):
        n = int.from_bytes(v, "big")
    else:
        n = int(v)
    return format(n, f"0{width}b")


def _expected_value(v: Any, mc: MyColumn, pc: PgColumn, exact_float: Any = None) -> Any:
    """What PostgreSQL must hold for MySQL value `v` (from PyMySQL) of column `mc`, in the
    canonical form of `_canon_pg` for the PostgreSQL column `pc`."""
    if v is None:
        return None
    my, pg = mc.data_type, pc.data_type
    # PyMySQL returns zero dates ('0000-00-00'), partial zero dates ('2020-00-15') and year-0
    # dates ('0000-01-01') as str (Python's date cannot hold them): PostgreSQL holds NULL.
    if my in _MY_TEMPORAL and isinstance(v, str):
        return None
    if my == "bit" and isinstance(v, (bytes, bytearray)) and pg not in ("bit", "bit varying", "bytea"):
        v = int.from_bytes(v, "big")
    if pg == "boolean":
        return bool(v)
    if pg in ("smallint", "integer", "bigint"):
        return int(v)
    if pg == "numeric":
        return Decimal(v) if not isinstance(v, float) else Decimal(repr(v))
    if pg == "real":
        printed = _f32(v)
        exact = _f32(exact_float) if exact_float is not None else printed
        return _FloatExpect(exact, printed)
    if pg == "double precision":
        if my == "float" and exact_float is not None:  # FLOAT in a double column (check_types=False)
            return _FloatExpect(float(exact_float), float(v))
        return float(v)
    if pg in ("bit", "bit varying"):
        return _bits(v, mc.bit_width if my == "bit" else (pc.char_max_len or 1))
    if pg == "timestamp with time zone" and isinstance(v, _dt.datetime):
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    if pg == "json":
        return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v
    if pg == "jsonb":
        return JsonValue(v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else v)
    if pg == "bytea":
        return bytes(v) if isinstance(v, (bytes, bytearray)) else str(v).encode("utf-8")
    if pg in _TEXTISH_PG:
        if isinstance(v, (bytes, bytearray)):
            v = bytes(v).decode("utf-8")
        elif not isinstance(v, str):
            v = str(v)
        return v.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    return v


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, _FloatExpect):
        return expected.matches(actual)
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, _dt.datetime) != isinstance(actual, _dt.datetime):
        return False
    if isinstance(expected, (str, bytes)) or isinstance(actual, (str, bytes)):
        return type(expected) is type(actual) and expected == actual
    return expected == actual


def _hkey(v: Any) -> Any:
    """Hashable key consistent with _equal (for non-float values)."""
    if v is None:
        return ("none",)
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, (int, Decimal, float)):
        return ("num", v)
    if isinstance(v, _FloatExpect):
        return ("num", v.exact)
    return (type(v).__name__, v)


# ----------------------------------------------------------------------------- type mapping
def _check_pg_type(mc: MyColumn, pc: PgColumn, as_bool: bool) -> str | None:
    """None if `pc` is the PostgreSQL type the mapping requires for `mc`, else a message."""
    my, t = mc.data_type, pc.data_type

    def want(desc: str, ok: bool) -> str | None:
        if ok:
            return None
        got = t
        if pc.char_max_len is not None:
            got += f"({pc.char_max_len})"
        elif t == "numeric":
            got += f"({pc.num_precision},{pc.num_scale})"
        elif t.startswith("timestamp"):
            got += f" precision {pc.dt_precision}"
        return f"MySQL {mc.column_type}{' (json)' if mc.is_json else ''} must be {desc}, PostgreSQL has {got}"

    if as_bool:
        return want("boolean", t == "boolean")
    u = mc.unsigned
    if my == "tinyint":
        return want("smallint", t == "smallint")
    if my == "smallint":
        return want("integer" if u else "smallint", t == ("integer" if u else "smallint"))
    if my == "mediumint":
        return want("integer", t == "integer")
    if my in ("int", "integer"):
        return want("bigint" if u else "integer", t == ("bigint" if u else "integer"))
    if my == "bigint":
        if u:
            return want("numeric(20,0)", t == "numeric" and pc.num_precision == 20 and pc.num_scale == 0)
        return want("bigint", t == "bigint")
    if my in ("decimal", "numeric"):
        return want(f"numeric({mc.num_precision},{mc.num_scale})",
                    t == "numeric" and pc.num_precision == mc.num_precision and pc.num_scale == mc.num_scale)
    if my == "float":
        return want("real", t == "real")
    if my == "double":
        return want("double precision", t == "double precision")
    if my == "bit":
        return want(f"bit({mc.bit_width})", t == "bit" and pc.char_max_len == mc.bit_width)
    if my == "year":
        return want("smallint", t == "smallint")
    if my == "time":
        return want("interval", t == "interval")
    if my == "date":
        return want("date", t == "date")
    if my == "datetime":
        p = mc.dt_precision or 0
        return want(f"timestamp({p}) without time zone",
                    t == "timestamp without time zone" and pc.dt_precision == p)
    if my == "timestamp":
        p = mc.dt_precision or 0
        return want(f"timestamp({p}) with time zone",
                    t == "timestamp with time zone" and pc.dt_precision == p)
    if mc.is_json:
        return want("jsonb", t == "jsonb")
    if my == "char":
        return want(f"character varying({mc.char_max_len})",
                    t == "character varying" and pc.char_max_len == mc.char_max_len)
    if my == "varchar":
        return want(f"character varying({mc.char_max_len}) or text",
                    t == "text" or (t == "character varying" and pc.char_max_len == mc.char_max_len))
    if my in ("tinytext", "text", "mediumtext", "longtext", "enum", "set"):
        return want("text", t in ("text", "character varying"))
    if my in ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"):
        return want("bytea", t == "bytea")
    return None  # geometry, uuid, inet...: not checked


# ----------------------------------------------------------------------------- reporting
class _Report:
    def __init__(self, title: str):
        self.title = title
        self.lines: list[str] = []
        self.count = 0
        self.header: list[str] = []

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_REPORTED:
            self.lines.append(line)

    def raise_if_any(self) -> None:
        if not self.count and not self.header:
            return
        out = [f"{self.title}: {self.count} mismatch(es)"] + ["  " + h for h in self.header]
        out += ["  " + ln for ln in self.lines]
        if self.count > len(self.lines):
            out.append(f"  ... and {self.count - len(self.lines)} more")
        raise AssertionError("\n".join(out))


def _pk_text(names: Sequence[str], values: Sequence[Any]) -> str:
    return "(" + ", ".join(f"{n}={_short(v)}" for n, v in zip(names, values)) + ")"


def _match_rows(report: _Report, my_names: Sequence[str], pg_names: Sequence[str],
                expected_rows: list[tuple], actual_rows: list[tuple], key_idx: Sequence[int],
                pk_names: Sequence[str] | None, labels: tuple[str, str] = ("mysql", "pg")) -> None:
    """Pair expected (from MySQL) and actual rows by the key columns, then compare values.

    With a primary key each group holds at most one row per side; without one the key is every
    column that can be hashed exactly (all but FLOAT) and rows inside a group are paired greedily
    with full equality, so duplicates must appear the same number of times on both sides.
    """
    groups_e: dict[tuple, list[tuple]] = defaultdict(list)
    groups_a: dict[tuple, list[tuple]] = defaultdict(list)
    for r in expected_rows:
        groups_e[tuple(_hkey(r[i]) for i in key_idx)].append(r)
    for r in actual_rows:
        groups_a[tuple(_hkey(r[i]) for i in key_idx)].append(r)

    def ident(r: tuple) -> str:
        if pk_names:
            return "pk " + _pk_text(pk_names, [r[i] for i in key_idx])
        return "row " + _pk_text(my_names, r)

    for key, erows in groups_e.items():
        arows = list(groups_a.pop(key, []))
        unmatched_e = []
        for er in erows:
            for j, ar in enumerate(arows):
                if all(_equal(e, a) for e, a in zip(er, ar)):
                    del arows[j]
                    break
            else:
                unmatched_e.append(er)
        for er in unmatched_e:
            if pk_names and arows:
                ar = arows.pop(0)
                for name, pname, e, a in zip(my_names, pg_names, er, ar):
                    if not _equal(e, a):
                        report.add(f"{ident(er)} column {name!r}: {labels[0]}={_short(e)} "
                                   f"{labels[1]}[{pname}]={_short(a)}")
            else:
                report.add(f"missing in copy: {ident(er)}")
        for ar in arows:
            report.add(f"extra in copy: {ident(ar)}")
    for arows in groups_a.values():
        for ar in arows:
            report.add(f"extra in copy: {ident(ar)}")


# ----------------------------------------------------------------------------- MySQL -> PostgreSQL
def _pg_exprs(pcols: Sequence[PgColumn]) -> list[str]:
    return [f"{_qpg(c.name)}::text" if c.data_type in ("json", "jsonb") else _qpg(c.name) for c in pcols]


def assert_pg_matches_mysql(my_conn, my_db: str, pg_conn, pg_schema: str, table: str, *,
                            column_case: str = "lower", boolean_columns: Iterable[str] = (),
                            pg_table: str | None = None, check_types: bool = True) -> None:
    """Assert that PostgreSQL "pg_schema"."<table lower-cased>" holds exactly MySQL
    `my_db`.`table` under the project's type mapping.

    column_case: 'lower' (PostgreSQL column = MySQL name lower-cased) or 'preserve'.
    boolean_columns: MySQL tinyint(1) / bit(1) columns that must be PostgreSQL boolean
        (names matched case-insensitively); every other tinyint(1) must be smallint.
    check_types: also require the PostgreSQL column types of the mapping (module docstring).
    """
    if column_case not in ("lower", "preserve"):
        raise ValueError("column_case must be 'lower' or 'preserve'")
    pg_table = pg_table or table.lower()
    title = f"table {table}: MySQL {_qmy(my_db)}.{_qmy(table)} vs PostgreSQL {_qpg(pg_schema)}.{_qpg(pg_table)}"

    with _mysql_read(my_conn) as mcur:
        mcols = _mysql_columns(mcur, my_db, table)
        if not mcols:
            raise AssertionError(f"{title}: MySQL table not found")
        pk = _mysql_primary_key(mcur, my_db, table)
        # FLOAT columns are read twice: as printed by MySQL and as the exact stored value
        float_idx = [i for i, c in enumerate(mcols) if c.data_type == "float"]
        # Geometry reaches PostgreSQL as WKT text (the SRID is the replica's business, CHECKSUM TABLE).
        exprs = [f"ST_AsText({_qmy(c.name)})" if c.data_type in _MY_GEOMETRY else _qmy(c.name) for c in mcols]
        exprs += [f"CAST({_qmy(mcols[i].name)} AS DOUBLE)" for i in float_idx]
        my_rows = _mysql_select(mcur, my_db, table, exprs, pk)

    bool_names = {b.lower() for b in boolean_columns}
    unknown = bool_names - {c.name.lower() for c in mcols}
    if unknown:
        raise ValueError(f"boolean_columns not in MySQL table {table}: {sorted(unknown)}")
    for c in mcols:
        if c.name.lower() in bool_names and not (c.data_type in ("tinyint", "bit")):
            raise ValueError(f"boolean column {c.name!r} is {c.column_type}, not tinyint(1)/bit(1)")

    mapped = [c.name.lower() if column_case == "lower" else c.name for c in mcols]
    if len(set(mapped)) != len(mapped):
        raise ValueError(f"MySQL column names of {table} collide after lower-casing: {mapped}")

    with _pg_read(pg_conn) as pcur:
        all_pcols = _pg_columns(pcur, pg_schema, pg_table)
        if not all_pcols:
            raise AssertionError(f"{title}: PostgreSQL table not found (or has no columns)")
        # The ETL's own columns (`_etl_loaded_at`) are not the source's; a source column of that
        # kind of name (loaded under another analytics.loaded_at_column) is compared like any other.
        by_name = {c.name: c for c in all_pcols if c.name in mapped or not c.name.lower().startswith("_etl")}
        missing = [n for n in mapped if n not in by_name]
        extra = [n for n in by_name if n not in set(mapped)]
        if missing or extra:
            raise AssertionError(f"{title}: column sets differ; missing in PostgreSQL: {missing}, "
                                 f"extra in PostgreSQL: {extra}")
        pcols = [by_name[n] for n in mapped]
        pk_pg = [mapped[[c.name for c in mcols].index(k)] for k in pk]
        pg_rows = _pg_select(pcur, pg_schema, pg_table, _pg_exprs(pcols), pk_pg)

    report = _Report(title)
    if check_types:
        for i, (mc, pc) in enumerate(zip(mcols, pcols)):
            if mc.is_json and pc.data_type == "json":
                # Only a column holding a document jsonb refuses may be json (it keeps the text exactly).
                docs = [r[i] for r in my_rows if r[i] is not None]
                if not any(jsonb_refuses(d.decode() if isinstance(d, bytes) else d) for d in docs):
                    report.header.append(f"type of column {mc.name!r}: json although no document needs it; "
                                         f"must be jsonb")
                continue
            problem = _check_pg_type(mc, pc, mc.name.lower() in bool_names)
            if problem:
                report.header.append(f"type of column {mc.name!r}: {problem}")
    if len(my_rows) != len(pg_rows):
        report.header.append(f"row count: mysql={len(my_rows)} pg={len(pg_rows)}")

    ncol = len(mcols)
    expected = []
    for r in my_rows:
        exact = dict(zip(float_idx, r[ncol:]))
        expected.append(tuple(_expected_value(r[i], mcols[i], pcols[i], exact.get(i)) for i in range(ncol)))
    actual = [tuple(_canon_pg(v, pc) for v, pc in zip(r, pcols)) for r in pg_rows]

    if pk:
        key_idx = [[c.name for c in mcols].index(k) for k in pk]
    else:
        key_idx = [i for i, pc in enumerate(pcols) if pc.data_type != "real"]
    _match_rows(report, [c.name for c in mcols], mapped, expected, actual, key_idx, pk or None)
    report.raise_if_any()


# ----------------------------------------------------------------------------- MySQL -> MySQL
def _strict(v: Any) -> Any:
    """Key for byte-exact comparison: type plus value (repr for float/Decimal)."""
    if isinstance(v, (float, Decimal)):
        return (type(v).__name__, repr(v))
    if v is None:
        return ("none",)
    return (type(v).__name__, v)


class _Strict:
    """Wraps a value so that == and hash are type- and representation-exact."""

    __slots__ = ("v", "k")

    def __init__(self, v):
        self.v = v
        self.k = _strict(v)

    def __eq__(self, other):
        return isinstance(other, _Strict) and self.k == other.k

    def __hash__(self):
        return hash(self.k)

    def __repr__(self):
        return _short(self.v)


def assert_mysql_equal(src_conn, src_db: str, dst_conn, dst_db: str, table: str, *,
                       dst_table: str | None = None, checksum: bool = True,
                       check_definitions: bool = True) -> None:
    """Assert that `dst_db`.`dst_table` (default: same name) is an exact copy of `src_db`.`table`.

    check_definitions: the columns must agree in name, order, COLUMN_TYPE, nullability,
        character set, collation and JSON-ness (False: only names and order); the primary
        key must be the same either way.
    checksum: also compare CHECKSUM TABLE when the two definitions make it comparable.
    """
    dst_table = dst_table or table
    title = f"table {table}: MySQL {_qmy(src_db)}.{_qmy(table)} vs replica {_qmy(dst_db)}.{_qmy(dst_table)}"

    def read(conn, db, tbl, want_pk=None):
        with _mysql_read(conn) as cur:
            cols = _mysql_columns(cur, db, tbl)
            if not cols:
                raise AssertionError(f"{title}: table {db}.{tbl} not found")
            pk = _mysql_primary_key(cur, db, tbl) if want_pk is None else want_pk
            order = pk or [c.name for c in cols]
            fl = [c.name for c in cols if c.data_type == "float"]
            exprs = [_qmy(c.name) for c in cols] + [f"CAST({_qmy(n)} AS DOUBLE)" for n in fl]
            rows = _mysql_select(cur, db, tbl, exprs, order)
            engine, _ttype = _mysql_table_info(cur, db, tbl)
            return cols, pk, rows, engine

    scols, pk, srows, s_engine = read(src_conn, src_db, table)
    with _mysql_read(dst_conn) as cur:
        dcols = _mysql_columns(cur, dst_db, dst_table)
        dpk = _mysql_primary_key(cur, dst_db, dst_table)
    if not dcols:
        raise AssertionError(f"{title}: replica table not found")

    def sig(c: MyColumn):
        if not check_definitions:
            return (c.name,)
        return (c.name, c.column_type, "NULL" if c.nullable else "NOT NULL", c.charset, c.collation,
                "json" if c.is_json else "")

    if [sig(c) for c in scols] != [sig(c) for c in dcols]:
        lines = [f"{title}: column definitions differ"]
        for a, b in zip(scols + [None] * len(dcols), dcols + [None] * len(scols)):
            if a is None and b is None:
                break
            if a is None or b is None or sig(a) != sig(b):
                lines.append(f"  source {sig(a) if a else None} != replica {sig(b) if b else None}")
        raise AssertionError("\n".join(lines[:MAX_REPORTED + 1]))
    if dpk != pk:
        raise AssertionError(f"{title}: primary key differs: source {pk} replica {dpk}")

    _c, _p, drows, d_engine = read(dst_conn, dst_db, dst_table, want_pk=pk)
    names = [c.name for c in scols] + [f"CAST({c.name} AS DOUBLE)" for c in scols if c.data_type == "float"]
    report = _Report(title)
    if len(srows) != len(drows):
        report.header.append(f"row count: source={len(srows)} replica={len(drows)}")
    wrap = lambda rows: [tuple(_Strict(v) for v in r) for r in rows]  # noqa: E731
    ws, wd = wrap(srows), wrap(drows)
    if ws != wd:
        # Not identical in order: pair rows by primary key (or as a multiset without one; the
        # order can legitimately differ only through ties of a case-insensitive sort).
        key_idx = [names.index(k) for k in pk] if pk else list(range(len(names)))
        _match_rows(report, names, names, ws, wd, key_idx, pk or None, labels=("source", "replica"))
    report.raise_if_any()

    if checksum:
        comparable = (s_engine == d_engine and
                      [(c.column_type, c.nullable, c.charset) for c in scols] ==
                      [(c.column_type, c.nullable, c.charset) for c in dcols])
        if comparable:
            sums = []
            for conn, db, tbl in ((src_conn, src_db, table), (dst_conn, dst_db, dst_table)):
                with _mysql_read(conn) as cur:
                    cur.execute(f"CHECKSUM TABLE {_qmy(db)}.{_qmy(tbl)}")
                    sums.append(cur.fetchone()[1])
            if None not in sums and sums[0] != sums[1]:
                raise AssertionError(f"{title}: CHECKSUM TABLE differs: source {sums[0]} replica {sums[1]}")
