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
| date / datetime(n)            | date / timestamp(n) | zero dates become NULL; column nullable          |
| timestamp(n)                  | timestamptz(n)    | read in UTC                                        |
| char(n) / varchar(n)          | varchar(n)        | MySQL returns CHAR without trailing spaces         |
| *text, enum, set              | text              | set as 'a,b'                                       |
| json (MySQL) / MariaDB json   | jsonb             |                                                    |
| binary, varbinary, *blob      | bytea             |                                                    |
| geometry types                | text (WKT)        |                                                    |
"""
from __future__ import annotations

from dataclasses import dataclass

from tasks.errors import SchemaError
from tasks.identifiers import PG_MAX_IDENT, mysql_ident, pg_column_name, pg_ident
from tasks.mysql_schema import Column, TableSchema

INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})
_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
_BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_TEMPORAL_ZERO = {"date", "datetime", "timestamp"}
_GEOMETRY = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
             "multipolygon", "geometrycollection", "geomcollection"}


def is_boolean_candidate(col: Column) -> bool:
    return col.data_type == "tinyint" and col.display_width == 1 and not col.unsigned


def pg_type(col: Column, *, as_boolean: bool = False) -> str:
    """The PostgreSQL type that holds every value of `col` unchanged."""
    t = col.data_type
    u = col.unsigned
    if as_boolean:
        if t not in ("tinyint", "bit") or (t == "bit" and col.bit_width != 1):
            raise SchemaError(f"column {col.name!r} is {col.column_type}; only tinyint(1) or bit(1) can be boolean")
        return "boolean"
    if t == "tinyint":
        return "smallint"
    if t == "smallint":
        return "integer" if u else "smallint"
    if t == "mediumint":
        return "integer"
    if t in ("int", "integer"):
        return "bigint" if u else "integer"
    if t == "bigint":
        return "numeric(20,0)" if u else "bigint"
    if t in ("decimal", "numeric"):
        return f"numeric({col.precision},{col.scale})"
    if t == "float":
        return "real"
    if t in ("double", "real", "double precision"):
        return "double precision"
    if t == "bit":
        return f"bit({col.bit_width})"
    if t == "year":
        return "smallint"
    if t == "time":
        return "interval"
    if t == "date":
        return "date"
    if t == "datetime":
        return f"timestamp({col.datetime_precision or 0})"
    if t == "timestamp":
        return f"timestamptz({col.datetime_precision or 0})"
    if col.is_json:
        return "jsonb"
    if t in ("char", "varchar"):
        return f"varchar({col.char_length})"
    if t in _TEXT_TYPES:
        return "text"
    if t in _BINARY_TYPES:
        return "bytea"
    if t in _GEOMETRY:
        return "text"
    if t == "json":
        return "jsonb"
    if t in ("uuid", "inet4", "inet6"):  # MariaDB 10.7+ native types
        return "text"
    raise SchemaError(f"column {col.name!r} has MySQL type {col.column_type!r}, which has no mapping yet; "
                      f"exclude the table or report the type")


def pg_nullable(col: Column) -> bool:
    """Temporal columns accept NULL in PostgreSQL: MySQL zero dates arrive as NULL."""
    return col.nullable or col.data_type in _TEMPORAL_ZERO


def _escape_copy_text(expr: str) -> str:
    # COPY text format: backslash, tab, newline and carriage return are escaped with a backslash.
    return (f"REPLACE(REPLACE(REPLACE(REPLACE({expr},'\\\\','\\\\\\\\'),"
            f"'\\t','\\\\t'),'\\n','\\\\n'),'\\r','\\\\r')")


def _needs_escape(col: Column) -> bool:
    if col.data_type in ("enum", "set"):
        return any(ch in v for v in col.enum_values for ch in "\\\t\n\r")
    return True


def _utf8(q: str) -> str:
    # One character set for every text piece of the line: CONCAT_WS over columns with different
    # collations would otherwise fail with "Illegal mix of collations", and latin1 text is re-encoded.
    return f"CONVERT({q} USING utf8mb4)"


def _zero_date_guard(q: str, col: Column) -> str:
    # MySQL zero dates ('0000-00-00'), dates with a zero month or day, and year 0 (which
    # PostgreSQL does not have) become NULL. Anything from 0001-01-01 on is a real date.
    return f"IF({q} < '0001-01-01' OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0, NULL, {q})"


def copy_text_expr(col: Column, *, as_boolean: bool = False) -> str:
    """SQL printing `col` as one PostgreSQL COPY text field ('\\N' for NULL)."""
    q = mysql_ident(col.name)
    t = col.data_type
    if t == "bit":
        e = f"LPAD(BIN({q} + 0), {col.bit_width}, '0')" if not as_boolean else f"({q} + 0)"
    elif t in _TEMPORAL_ZERO:
        e = _zero_date_guard(q, col)
        if t == "timestamp":
            e = f"CONCAT({e}, '+00')"  # sessions run with time_zone '+00:00'
    elif col.is_json:
        e = _escape_copy_text(_utf8(q))
    elif t in _BINARY_TYPES:
        e = f"CONCAT('\\\\\\\\x', HEX({q}))"
    elif t in _GEOMETRY:
        e = f"ST_AsText({q})"
    elif t in _TEXT_TYPES or t in ("uuid", "inet4", "inet6"):
        e = _escape_copy_text(_utf8(q)) if _needs_escape(col) else _utf8(q)
    elif t == "float":
        # MySQL prints FLOAT with 6 significant digits (16777216 shows as 16777200); the double
        # conversion prints the stored value exactly, and PostgreSQL rounds it back to the same float4.
        e = f"CAST({q} AS DOUBLE)"
    else:
        # Integers, decimal, double (shortest exact form), year and time print as PostgreSQL reads them.
        e = q
    may_be_null = col.nullable or t in _TEMPORAL_ZERO
    return f"IFNULL({e},'\\\\N')" if may_be_null else e


@dataclass(frozen=True)
class LoadDataColumn:
    """How one column travels through LOAD DATA: the SELECT side and the LOAD side."""

    select_expr: str
    target: str  # column name or @variable in the LOAD DATA column list
    set_clause: str | None  # `col = f(@var)` when the value needs converting on the way in


def load_data_column(col: Column, index: int) -> LoadDataColumn:
    """MySQL LOAD DATA format: tab-separated, backslash-escaped, \\N for NULL.

    Binary values travel as hex and BIT as a number, so no byte is reinterpreted by a charset;
    everything else is printed by the source and parsed back by the replica in the same session
    settings (utf8mb4, UTC, zero dates allowed).
    """
    q = mysql_ident(col.name)
    t = col.data_type
    var = f"@v{index}"
    if t in _BINARY_TYPES:
        sel = f"HEX({q})"
        return LoadDataColumn(_nullable(sel, col), var, f"{q} = UNHEX({var})")
    if t == "bit":
        sel = f"({q} + 0)"
        return LoadDataColumn(_nullable(sel, col), var, f"{q} = CAST({var} AS UNSIGNED)")
    if t in _GEOMETRY:
        sel = f"HEX(ST_AsBinary({q}))"
        return LoadDataColumn(_nullable(sel, col), var, f"{q} = ST_GeomFromWKB(UNHEX({var}))")
    if t in _TEXT_TYPES or col.is_json:
        sel = _escape_load_text(_utf8(q))
        return LoadDataColumn(_nullable(sel, col), q, None)
    if t == "float":
        # See copy_text_expr: the double form carries the stored FLOAT bits exactly.
        return LoadDataColumn(_nullable(f"CAST({q} AS DOUBLE)", col), q, None)
    return LoadDataColumn(_nullable(q, col), q, None)


def _escape_load_text(expr: str) -> str:
    # LOAD DATA (ESCAPED BY '\\'): backslash, tab, newline, CR and NUL are escaped.
    return (f"REPLACE(REPLACE(REPLACE(REPLACE(REPLACE({expr},'\\\\','\\\\\\\\'),"
            f"'\\t','\\\\t'),'\\n','\\\\n'),'\\r','\\\\r'),CHAR(0 USING utf8mb4),'\\\\0')")


def _nullable(expr: str, col: Column) -> str:
    return f"IFNULL({expr},'\\\\N')" if col.nullable else expr


@dataclass(frozen=True)
class PgColumn:
    source: Column
    name: str
    pg_type: str
    nullable: bool
    as_boolean: bool


def pg_columns(schema: TableSchema, *, column_case: str, boolean_columns: tuple[str, ...] = (),
               loaded_at_column: str | None = None) -> list[PgColumn]:
    """The PostgreSQL columns of a MySQL table; raises SchemaError on name clashes or bad booleans.

    `loaded_at_column`: the load-time column analytics adds to the table; a source column that
    becomes the same PostgreSQL name would make CREATE TABLE fail (DuplicateColumn), so it is refused.
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
        out.append(PgColumn(col, name, pg_type(col, as_boolean=as_bool), pg_nullable(col), as_bool))
    return out


def pg_create_table_sql(qualified: str, cols: list[PgColumn], *, loaded_at_column: str | None = None) -> str:
    parts = [f"{pg_ident(c.name)} {c.pg_type}{'' if c.nullable else ' NOT NULL'}" for c in cols]
    if loaded_at_column:
        # When the row was loaded (dbt freshness checks read it); COPY leaves it to the default.
        parts.append(f"{pg_ident(loaded_at_column)} timestamptz NOT NULL DEFAULT now()")
    return f"CREATE TABLE {qualified} (\n  " + ",\n  ".join(parts) + "\n)"


def copy_line_select(cols: list[PgColumn]) -> str:
    """The SELECT list expression that prints a whole row as one COPY text line."""
    exprs = [copy_text_expr(c.source, as_boolean=c.as_boolean) for c in cols]
    if len(exprs) == 1:
        return exprs[0]
    return "CONCAT_WS('\\t', " + ", ".join(exprs) + ")"
