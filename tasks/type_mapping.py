"""MySQL -> PostgreSQL types, and the SQL that makes MySQL print each value ready for the target.

The fast path lets MySQL do the formatting: one SELECT returns one line per row, already in
PostgreSQL COPY text format (or MySQL LOAD DATA format for the replica), so Python handles one
string per row instead of N typed values. The expressions are chosen once per column, here.

| MySQL                         | PostgreSQL        | note                                               |
|-------------------------------|-------------------|----------------------------------------------------|
| tinyint, smallint             | smallint          | tinyint(1) stays a number unless listed as boolean |
| tinyint/smallint unsigned     | smallint/integer  |                                                    |
| mediumint (unsigned), int     | integer           |                                                    |
| int unsigned                  | bigint            |                                                    |
| bigint                        | bigint            |                                                    |
| bigint unsigned               | numeric(20,0)     | holds 18446744073709551615                         |
| decimal(p,s)                  | numeric(p,s)      |                                                    |
| float / double                | real / double precision | stored bits, not MySQL's 6-digit print  |
| bit(n)                        | bit(n)            |                                                    |
| year                          | smallint          |                                                    |
| time                          | interval          | -838:59:59 .. 838:59:59 do not fit `time`          |
| date / datetime(n)            | date / timestamp(n) | zero and invalid (02-30) dates become NULL       |
| timestamp(n)                  | timestamptz(n)    | read in UTC                                        |
| char(n) / varchar(n)          | varchar(n)        | MySQL returns CHAR without trailing spaces         |
| *text, enum, set              | text              | set as 'a,b'                                       |
| json (MySQL) / MariaDB json   | jsonb             | json when a document holds \u0000 or a surrogate escape |
| binary, varbinary, *blob      | bytea             |                                                    |
| geometry types                | text (WKT)        |                                                    |
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from tasks.errors import SchemaError
from tasks.identifiers import PG_MAX_IDENT, mysql_ident, pg_column_name, pg_ident
from tasks.mysql_schema import Column, TableSchema

_INT_PG = {"tinyint": ("smallint", "smallint"), "smallint": ("smallint", "integer"),
           "mediumint": ("integer", "integer"), "int": ("integer", "bigint"), "integer": ("integer", "bigint"),
           "bigint": ("bigint", "numeric(20,0)")}


def _unmapped(col: Column) -> str:
    raise SchemaError(f"column {col.name!r} has MySQL type {col.column_type!r}, which has no mapping yet; "
                      f"exclude the table or report the type")


@dataclass(frozen=True)
class TypeRule:
    """Everything the pipeline decides from a column's MySQL type family, in one row.

    The `copy`, `load` and `verify` fields name the shape of SQL that prints the value (built by
    `copy_text_expr`, `load_data_column` and tasks/verify.py `column_text`); a new type whose values
    print like an existing family's is one more row here.
    """

    family: str
    mysql_types: tuple[str, ...]  # information_schema DATA_TYPE values (aliases included)
    pg: Callable[[Column], str]  # the PostgreSQL type that holds every value unchanged
    copy: str  # COPY text field: plain | float | bit | date | timestamp | json | binary | geometry | text
    load: str  # LOAD DATA field: plain | float | bit | binary | geometry | text
    verify: str  # canonical text: integer | bit | float | double | time | date | json | decimal | text | ...
    key_bind: tuple[str, str] | None = None  # how a key's canonical text binds back (MySQL, PostgreSQL)
    widening_order: tuple[str, ...] = ()  # narrow to wide: each holds every value of the ones before
    as_text: bool = False  # reaches PostgreSQL as text (where a NUL character is removed)
    time: bool = False  # a date/time: may be a watermark, zero dates load as NULL
    integer: bool = False  # integer key: ranges cut on it are the same rows everywhere
    inexact_key: bool = False  # a key value does not survive the trip to Python and back exactly
    collated_text: bool = False  # a key whose spelling can change while the server sees the same key


_ANY = ("%s", "%s")
TYPE_RULES: tuple[TypeRule, ...] = (
    TypeRule("integer", ("tinyint", "smallint", "mediumint", "int", "integer", "bigint"),
             lambda c: _INT_PG[c.data_type][c.unsigned], "plain", "plain", "integer", _ANY,
             widening_order=("tinyint", "smallint", "mediumint", "int", "bigint"), integer=True),
    TypeRule("decimal", ("decimal", "numeric"), lambda c: f"numeric({c.precision},{c.scale})",
             "plain", "plain", "decimal", _ANY),
    TypeRule("float", ("float",), lambda c: "real", "float", "float", "float", inexact_key=True),
    TypeRule("double", ("double", "real"), lambda c: "double precision", "plain", "plain", "double",
             inexact_key=True),
    TypeRule("double_alias", ("double precision",), lambda c: "double precision", "plain", "plain", "double"),
    TypeRule("bit", ("bit",), lambda c: f"bit({c.bit_width})", "bit", "bit", "bit"),
    TypeRule("year", ("year",), lambda c: "smallint", "plain", "plain", "integer", _ANY),
    TypeRule("time", ("time",), lambda c: "interval", "plain", "plain", "time"),
    TypeRule("date", ("date",), lambda c: "date", "date", "plain", "date", _ANY, time=True),
    TypeRule("datetime", ("datetime",), lambda c: f"timestamp({c.datetime_precision or 0})", "date", "plain",
             "date", _ANY, time=True),
    TypeRule("timestamp", ("timestamp",), lambda c: f"timestamptz({c.datetime_precision or 0})", "timestamp",
             "plain", "timestamp", ("%s", "(%s::timestamp AT TIME ZONE 'UTC')"), time=True),  # sessions run in UTC
    TypeRule("char", ("char", "varchar"), lambda c: f"varchar({c.char_length})", "text", "text", "text", _ANY,
             as_text=True, collated_text=True),
    TypeRule("text", ("tinytext", "text", "mediumtext", "longtext"), lambda c: "text", "text", "text", "text",
             _ANY, widening_order=("tinytext", "text", "mediumtext", "longtext"), as_text=True, collated_text=True),
    TypeRule("enum", ("enum", "set"), lambda c: "text", "text", "text", "text", _ANY, as_text=True),
    # MySQL JSON, and MariaDB's (a LONGTEXT with a JSON_VALID check: `is_json`)
    TypeRule("json", ("json",), lambda c: "jsonb", "json", "text", "json", as_text=True),
    TypeRule("binary", ("binary", "varbinary"), lambda c: "bytea", "binary", "binary", "binary",
             ("UNHEX(%s)", "decode(%s, 'hex')")),
    TypeRule("blob", ("tinyblob", "blob", "mediumblob", "longblob"), lambda c: "bytea", "binary", "binary",
             "binary", ("UNHEX(%s)", "decode(%s, 'hex')"),
             widening_order=("tinyblob", "blob", "mediumblob", "longblob")),
    TypeRule("geometry", ("geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
                          "multipolygon", "geometrycollection", "geomcollection"), lambda c: "text",
             "geometry", "geometry", "geometry"),
    TypeRule("native_text", ("uuid", "inet4", "inet6"), lambda c: "text", "text", "plain", "text"),  # MariaDB 10.7+
)
_UNKNOWN = TypeRule("unknown", (), _unmapped, "plain", "plain", "unknown")
_BY_TYPE = {t: r for r in TYPE_RULES for t in r.mysql_types}
_JSON = _BY_TYPE["json"]
INTEGER_TYPES = frozenset(_BY_TYPE["int"].mysql_types)


def rule_for_type(data_type: str) -> TypeRule:
    """The rule of a MySQL DATA_TYPE (a rule that maps nothing for a type the table does not know)."""
    return _BY_TYPE.get(data_type, _UNKNOWN)


def type_rule(col: Column) -> TypeRule:
    """The rule of one column: its DATA_TYPE's, or JSON's for MariaDB JSON (text with a JSON_VALID check)."""
    rule = rule_for_type(col.data_type)
    return _JSON if col.is_json and rule.family in ("char", "text", "enum") else rule


def reaches_pg_as_text(col: Column) -> bool:
    return rule_for_type(col.data_type).as_text


def is_time_type(data_type: str) -> bool:
    return rule_for_type(data_type).time


def widening_order(family: str) -> tuple[str, ...]:
    return next(r.widening_order for r in TYPE_RULES if r.family == family)


def normal_pg_type(pg_type: str) -> str:
    """format_type() spelling and ours, made comparable."""
    t = pg_type.replace("character varying", "varchar").replace("double precision", "float8")
    t = re.sub(r"timestamp(\(\d+\))? with time zone", r"timestamptz\1", t)
    t = re.sub(r"timestamp(\(\d+\))? without time zone", r"timestamp\1", t)
    t = t.replace(" ", "").replace("timestamptz(6)", "timestamptz").replace("timestamp(6)", "timestamp")
    return t


def same_pg_type(a: str, b: str) -> bool:
    """Whether two spellings (ours or format_type()'s) name the same PostgreSQL type."""
    return normal_pg_type(a) == normal_pg_type(b)


def is_boolean_candidate(col: Column) -> bool:
    return col.data_type == "tinyint" and col.display_width == 1 and not col.unsigned


def pg_type(col: Column, *, as_boolean: bool = False) -> str:
    """The PostgreSQL type that holds every value of `col` unchanged."""
    if as_boolean:
        if col.data_type not in ("tinyint", "bit") or (col.data_type == "bit" and col.bit_width != 1):
            raise SchemaError(f"column {col.name!r} is {col.column_type}; only tinyint(1) or bit(1) can be boolean")
        return "boolean"
    return type_rule(col).pg(col)


def pg_nullable(col: Column) -> bool:
    """Temporal columns accept NULL in PostgreSQL: MySQL zero dates arrive as NULL."""
    return col.nullable or is_time_type(col.data_type)


# Text travels with its four special bytes swapped, one for one, for bytes that valid UTF-8 never
# holds (0xFC..0xFF); the reader (tasks/streaming.py `decode_text_bytes`) turns them into the
# target's two-byte escapes with bytes.replace. Why not REPLACE(text, LF, backslash-n) in SQL:
# MariaDB's REPLACE moves the rest of the string for every replacement whose length differs, so a
# 1 MB note with 20,000 line breaks cost ~18 s of server CPU (REGEXP_REPLACE is slower still); an
# equal-length REPLACE on a binary string works in place and is linear (16 MB in 0.08 s, see
# `make bench` stage `escaping`). The line's other fields are ASCII (numbers, dates, hex), so
# these bytes can only come from text. COPY text and LOAD DATA use the same four escapes.
TEXT_ESCAPES = {b"\xfc": b"\\\\", b"\xfd": b"\\r", b"\xfe": b"\\t", b"\xff": b"\\n"}


def _placeholders(expr: str) -> str:
    """`expr` (utf8mb4) as bytes with backslash, tab, newline and CR swapped for the TEXT_ESCAPES bytes."""
    return (f"REPLACE(REPLACE(REPLACE(REPLACE(CAST({expr} AS BINARY),'\\\\',0xFC),"
            f"'\\t',0xFE),'\\n',0xFF),'\\r',0xFD)")


def _needs_escape(col: Column) -> bool:
    if col.data_type in ("enum", "set"):
        return any(ch in v for v in col.enum_values for ch in "\\\t\n\r")
    return True


def _utf8(q: str) -> str:
    # One character set for every text piece of the line: CONCAT over columns with different
    # collations would otherwise fail with "Illegal mix of collations", and latin1 text is re-encoded.
    return f"CONVERT({q} USING utf8mb4)"


def _zero_date_guard(q: str, col: Column) -> str:
    # MySQL zero dates ('0000-00-00'), dates with a zero month or day, year 0 (which PostgreSQL
    # does not have) and dates that are not in the calendar (2024-02-30, kept by servers running
    # ALLOW_INVALID_DATES) become NULL. Anything else from 0001-01-01 on is a real date.
    cond = f"{q} < '0001-01-01' OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0"
    if col.data_type != "timestamp":  # a TIMESTAMP cannot hold a date outside the calendar
        cond += f" OR DAYOFMONTH({q}) > DAYOFMONTH(LAST_DAY({q}))"
    return f"IF({cond}, NULL, {q})"


def invalid_date_count_expr(cols: list[Column]) -> str | None:
    """SQL counting a row's DATE/DATETIME values outside the calendar (they load as NULL), or None."""
    parts = []
    for col in cols:
        if col.data_type in ("date", "datetime"):
            q = mysql_ident(col.name)
            parts.append(f"IFNULL({q} >= '0001-01-01' AND MONTH({q}) > 0 AND DAYOFMONTH({q}) > "
                         f"DAYOFMONTH(LAST_DAY({q})), 0)")
    return " + ".join(parts) if parts else None


def copy_text_expr(col: Column, *, as_boolean: bool = False) -> str:
    """SQL printing `col` as one PostgreSQL COPY text field ('\\N' for NULL).

    The field is NULL only when MySQL could not print a value that is there (HEX, CONVERT or
    ST_AsText return NULL with a warning when the result passes max_allowed_packet): the line
    built by `copy_line_select` is then NULL and the reader stops with the row's key, so no value
    is ever replaced by NULL (see `_null_field`).
    """
    q = mysql_ident(col.name)
    kind = type_rule(col).copy
    if kind == "bit":
        e = f"LPAD(BIN({q} + 0), {col.bit_width}, '0')" if not as_boolean else f"({q} + 0)"
    elif kind in ("date", "timestamp"):
        e = _zero_date_guard(q, col)
        if kind == "timestamp":
            e = f"CONCAT({e}, '+00')"  # sessions run with time_zone '+00:00'
        # The guard's NULL is deliberate (a zero or invalid date); a date always prints.
        return f"IFNULL({e},'\\\\N')"
    elif kind == "json":
        e = _placeholders(_utf8(q))
    elif kind == "binary":
        e = f"CONCAT('\\\\\\\\x', HEX({q}))"
    elif kind == "geometry":
        e = f"ST_AsText({q})"
    elif kind == "text":
        e = _placeholders(_utf8(q)) if _needs_escape(col) else _utf8(q)
    elif kind == "float":
        # MySQL prints FLOAT with 6 significant digits (16777216 shows as 16777200); the double
        # conversion prints the stored value exactly, and PostgreSQL rounds it back to the same float4.
        e = f"CAST({q} AS DOUBLE)"
    else:
        # Integers, decimal, double (shortest exact form), year and time print as PostgreSQL reads them.
        e = q
    return _null_field(q, e, col)


def _null_field(q: str, expr: str, col: Column) -> str:
    # '\N' only for a real NULL in the column. IFNULL(expr, '\N') would also turn a value MySQL
    # failed to print (NULL + warning 1301) into NULL: here the field stays NULL, so the line does.
    return f"IF({q} IS NULL,'\\\\N',{expr})" if col.nullable else expr


@dataclass(frozen=True)
class LoadDataColumn:
    """How one column travels through LOAD DATA: the SELECT side and the LOAD side."""

    select_expr: str
    target: str  # column name or @variable in the LOAD DATA column list
    set_clause: str | None  # `col = f(@var)` when the value needs converting on the way in


# Text in these character sets goes through utf8mb4 and back unchanged; any other one (latin1's
# undefined bytes, cp1251's 0x98, ucs2/utf16/utf32) travels as its own bytes in hex.
_UTF8_SAFE = {"utf8mb4", "utf8mb3", "utf8", "ascii"}


def is_generated(col: Column) -> bool:
    """VIRTUAL/STORED generated columns: the replica computes them, nothing may write them."""
    return "generated" in col.extra


def load_data_column(col: Column, index: int) -> LoadDataColumn:
    """MySQL LOAD DATA format: tab-separated, backslash-escaped, \\N for NULL.

    Binary values travel as hex and BIT as a number, so no byte is reinterpreted by a charset;
    text in a utf8 family charset travels as utf8mb4 (escaped via TEXT_ESCAPES), text in any other
    charset as hex of its own bytes; everything else is printed by the source and parsed back by
    the replica in the same session settings (utf8mb4, UTC, zero and invalid dates allowed).
    """
    q = mysql_ident(col.name)
    kind = type_rule(col).load
    var = f"@v{index}"
    if kind == "binary":
        sel = f"HEX({q})"
        return LoadDataColumn(_nullable(q, sel, col), var, f"{q} = UNHEX({var})")
    if kind == "bit":
        sel = f"({q} + 0)"
        return LoadDataColumn(_nullable(q, sel, col), var, f"{q} = CAST({var} AS UNSIGNED)")
    if kind == "geometry":
        # WKB plus the SRID: ST_AsBinary alone drops the SRID, and CHECKSUM TABLE sees it.
        sel = f"CONCAT(ST_SRID({q}), ':', HEX(ST_AsBinary({q})))"
        return LoadDataColumn(_nullable(q, sel, col), var,
                              f"{q} = ST_GeomFromWKB(UNHEX(SUBSTRING_INDEX({var}, ':', -1)), "
                              f"SUBSTRING_INDEX({var}, ':', 1))")
    if kind == "text":
        if (col.charset or "utf8mb4").lower() not in _UTF8_SAFE:
            return LoadDataColumn(_nullable(q, f"HEX({q})", col), var, f"{q} = UNHEX({var})")
        sel = _placeholders(_utf8(q))
        return LoadDataColumn(_nullable(q, sel, col), q, None)
    if kind == "float":
        # See copy_text_expr: the double form carries the stored FLOAT bits exactly.
        return LoadDataColumn(_nullable(q, f"CAST({q} AS DOUBLE)", col), q, None)
    return LoadDataColumn(_nullable(q, q, col), q, None)


def _nullable(q: str, expr: str, col: Column) -> str:
    # As _null_field: '\N' for a real NULL only; a value MySQL could not print leaves the line NULL.
    return f"IF({q} IS NULL,'\\\\N',{expr})" if col.nullable else expr


# A JSON document that jsonb refuses although it is valid JSON (MariaDB accepts it): the escape
# \u0000 (PostgreSQL text cannot hold NUL) or a lone UTF-16 surrogate escape (a high one not
# followed by a low one, or a low one without its high one; jsonb insists on correct pairs).
# An escape counts only after an even run of backslashes ("\\u0000" is a backslash and "u0000").
_ESC = r"(?<!\\)(?:\\\\)*\\u"
_HI, _LO = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"[dD][c-fC-F][0-9a-fA-F]{2}"
JSONB_REFUSED_REGEX = rf"{_ESC}0000|{_ESC}[dD][89abAB][0-9a-fA-F]{{2}}(?!\\u{_LO})|(?<!{_HI}){_ESC}{_LO}"


@dataclass(frozen=True)
class PgColumn:
    source: Column
    name: str
    pg_type: str
    nullable: bool
    as_boolean: bool


def pg_columns(schema: TableSchema, *, column_case: str, boolean_columns: tuple[str, ...] = (),
               loaded_at_column: str | None = None,
               json_text_columns: frozenset[str] | set[str] = frozenset()) -> list[PgColumn]:
    """The PostgreSQL columns of a MySQL table; raises SchemaError on name clashes or bad booleans.

    `loaded_at_column`: the load-time column analytics adds to the table; a source column that
    becomes the same PostgreSQL name would make CREATE TABLE fail (DuplicateColumn), so it is refused.
    `json_text_columns`: JSON columns holding a document jsonb refuses (see `JSONB_REFUSED_REGEX`);
    they become `json`, which keeps the document's text exactly.
    """
    known = set(schema.column_names)
    for b in boolean_columns:
        if b not in known:
            raise SchemaError(f"table {schema.name!r}: boolean_columns names {b!r}, which is not a column")
    out: list[PgColumn] = []
    seen: dict[str, str] = {}
    cuts: dict[str, str] = {}
    for col in schema.columns:
        name = pg_column_name(col.name, column_case)
        # PostgreSQL keeps the first 63 bytes of a name; two names alike up to there would be one column.
        cut = name.encode()[:PG_MAX_IDENT].decode(errors="ignore")
        if cut in cuts and name not in seen:
            raise SchemaError(
                f"table {schema.name!r}: columns {cuts[cut]!r} and {col.name!r} are the same in their first 63 "
                f"bytes, all PostgreSQL keeps of a name; rename one in the source or disable the table"
            )
        cuts[cut] = col.name
        if name in seen:
            raise SchemaError(
                f"table {schema.name!r}: columns {seen[name]!r} and {col.name!r} both become {name!r} in "
                f"PostgreSQL; set analytics.column_case: preserve"
            )
        seen[name] = col.name
        if loaded_at_column and name == loaded_at_column:
            raise SchemaError(
                f"table {schema.name!r}: column {col.name!r} becomes {name!r} in PostgreSQL, the name of the "
                f"column the ETL adds for the load time; set analytics.loaded_at_column to another name"
            )
        as_bool = col.name in boolean_columns
        t = "json" if col.is_json and col.name in json_text_columns else pg_type(col, as_boolean=as_bool)
        out.append(PgColumn(col, name, t, pg_nullable(col), as_bool))
    return out


def pg_create_table_sql(qualified: str, cols: list[PgColumn], *, loaded_at_column: str | None = None,
                        primary_key: tuple[str, list[str]] | None = None) -> str:
    """`primary_key`: (constraint name, PostgreSQL column names) declared in the statement itself (a
    small table's first load: one statement where CREATE + ALTER ... ADD PRIMARY KEY were two)."""
    parts = [f"{pg_ident(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in cols]
    if loaded_at_column:
        # When the row was loaded (dbt freshness checks read it); COPY leaves it to the default.
        parts.append(f"{pg_ident(loaded_at_column)} timestamptz NOT NULL DEFAULT now()")
    if primary_key:
        name, key = primary_key
        parts.append(f"CONSTRAINT {pg_ident(name)} PRIMARY KEY ({', '.join(pg_ident(k) for k in key)})")
    return f"CREATE TABLE {qualified} (\n  " + ",\n  ".join(parts) + "\n)"


def join_fields(exprs: list[str]) -> str:
    """One line from field expressions, tab-separated, NULL when any field is NULL.

    CONCAT, not CONCAT_WS: CONCAT_WS skips a NULL argument, so a value MySQL failed to print would
    silently vanish from the line; with CONCAT the whole line is NULL and the reader names the row.
    """
    if len(exprs) == 1:
        return exprs[0]
    return "CONCAT(" + ", '\\t', ".join(exprs) + ")"


def copy_line_select(cols: list[PgColumn]) -> str:
    """The SELECT list expression that prints a whole row as one COPY text line."""
    return join_fields([copy_text_expr(c.source, as_boolean=c.as_boolean) for c in cols])
