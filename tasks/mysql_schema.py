"""Reading MySQL/MariaDB schemas: tables, columns, primary keys, CREATE TABLE text.

Only information_schema and SHOW CREATE TABLE are used, both of which MySQL 8 and MariaDB share.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tasks import once
from tasks.errors import SchemaError
from tasks.identifiers import execute, mysql_ident, mysql_qualified, readable, sql_text


@dataclass(frozen=True)
class Column:
    """One MySQL column as information_schema describes it."""

    name: str
    data_type: str  # lower case: int, varchar, datetime, ...
    column_type: str  # lower case full type: int(10) unsigned, enum('a','b'), ...
    nullable: bool
    char_length: int | None
    precision: int | None
    scale: int | None
    datetime_precision: int | None
    charset: str | None
    extra: str
    default: str | None
    is_json: bool = False
    collation: str | None = None  # COLLATION_NAME: how the server compares and orders the column

    @property
    def unsigned(self) -> bool:
        return "unsigned" in self.column_type

    @property
    def on_update_timestamp(self) -> bool:
        return "on update" in self.extra

    @property
    def auto_increment(self) -> bool:
        return "auto_increment" in self.extra

    @property
    def bit_width(self) -> int:
        m = re.match(r"bit\((\d+)\)", self.column_type)
        return int(m.group(1)) if m else 1

    @property
    def display_width(self) -> int | None:
        m = re.match(r"\w+\((\d+)\)", self.column_type)
        return int(m.group(1)) if m else None

    @property
    def enum_values(self) -> list[str]:
        m = re.match(r"(?:enum|set)\((.*)\)$", self.column_type, re.S)
        if not m:
            return []
        return [v.replace("''", "'").replace("\\\\", "\\") for v in re.findall(r"'((?:[^']|'')*)'", m.group(1))]


@dataclass(frozen=True)
class TableSchema:
    """A table's columns and primary key."""

    database: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    estimated_rows: int
    data_length: int
    avg_row_length: int = 0

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class TableInfo:
    name: str
    estimated_rows: int
    data_length: int


def list_base_tables(conn: Connection, database: str) -> list[TableInfo]:
    rows = conn.execute(
        sa.text(
            "SELECT TABLE_NAME, COALESCE(TABLE_ROWS, 0), COALESCE(DATA_LENGTH, 0) "
            "FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db AND TABLE_TYPE = 'BASE TABLE' "
            "ORDER BY TABLE_NAME"
        ),
        {"db": database},
    ).all()
    return [TableInfo(str(r[0]), int(r[1]), int(r[2])) for r in rows]


def table_exists(conn: Connection, database: str, table: str) -> bool:
    return conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db "
            "AND TABLE_NAME = :t AND TABLE_TYPE = 'BASE TABLE'"
        ),
        {"db": database, "t": table},
    ).scalar_one() > 0


def is_mariadb(conn: Connection) -> bool:
    return "mariadb" in str(conn.execute(sa.text("SELECT VERSION()")).scalar_one()).lower()


def _json_columns_mariadb(conn: Connection, database: str, table: str) -> set[str]:
    """MariaDB stores JSON as LONGTEXT with a CHECK (json_valid(`col`)) constraint."""
    try:
        rows = conn.execute(
            sa.text(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                "WHERE CONSTRAINT_SCHEMA = :db AND TABLE_NAME = :t"
            ),
            {"db": database, "t": table},
        ).all()
    except sa.exc.DBAPIError:
        return set()
    out = set()
    for (clause,) in rows:
        m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", str(clause), re.I)
        if m:
            out.add(m.group(1).replace("``", "`"))
    return out


def read_table_schema(conn: Connection, database: str, table: str) -> TableSchema:
    """Columns, primary key and size estimate of one table. SchemaError when it does not exist."""
    info = conn.execute(
        sa.text(
            "SELECT COALESCE(TABLE_ROWS, 0), COALESCE(DATA_LENGTH, 0), TABLE_TYPE, COALESCE(AVG_ROW_LENGTH, 0) "
            "FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t"
        ),
        {"db": database, "t": table},
    ).first()
    if info is None:
        raise SchemaError(f"table {table!r} does not exist in MySQL database {database!r}; remove it from the config or check its spelling")
    if info[2] != "BASE TABLE":
        raise SchemaError(f"{database}.{table} is a {info[2]}, not a base table; remove it from the config")
    rows = conn.execute(
        sa.text(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_MAXIMUM_LENGTH, "
            "NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME, EXTRA, COLUMN_DEFAULT, "
            "COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :db AND TABLE_NAME = :t "
            "ORDER BY ORDINAL_POSITION"
        ),
        {"db": database, "t": table},
    ).all()
    json_cols = _json_columns_mariadb(conn, database, table)
    pk = conn.execute(
        sa.text(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = :db "
            "AND TABLE_NAME = :t AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX"
        ),
        {"db": database, "t": table},
    ).scalars().all()
    return _schema_of(database, table, info, rows, json_cols, pk)


def _schema_of(database: str, table: str, info: Any, rows: Any, json_cols: set[str], pk: Any) -> TableSchema:
    columns = tuple(
        Column(
            name=str(r[0]),
            data_type=str(r[1]).lower(),
            column_type=str(r[2]).lower() if str(r[1]).lower() not in ("enum", "set") else str(r[2]),
            nullable=r[3] == "YES",
            char_length=int(r[4]) if r[4] is not None else None,
            precision=int(r[5]) if r[5] is not None else None,
            scale=int(r[6]) if r[6] is not None else None,
            datetime_precision=int(r[7]) if r[7] is not None else None,
            charset=r[8],
            extra=str(r[9] or "").lower(),
            default=r[10],
            is_json=str(r[1]).lower() == "json" or str(r[0]) in json_cols,
            collation=r[11],
        )
        for r in rows
    )
    return TableSchema(
        database=database, name=table, columns=columns, primary_key=tuple(str(c) for c in pk),
        estimated_rows=int(info[0]), data_length=int(info[1]), avg_row_length=int(info[3]),
    )


def show_create_table(conn: Connection, database: str, table: str) -> str:
    """SHOW CREATE TABLE output as the server prints it (not in format form: see `split_create_table`)."""
    row = conn.exec_driver_sql(f"SHOW CREATE TABLE {mysql_qualified(database, table)}").first()
    return str(row[1])


@dataclass(frozen=True)
class SplitDDL:
    """CREATE TABLE for loading (primary key only) plus what to add once the rows are in."""

    create: str
    add_indexes: str | None
    dropped_foreign_keys: tuple[str, ...]
    final: str = ""  # the table as it ends up after the indexes are added (what `same_replica_shape` compares)


_KEY_LINE = re.compile(r"^\s*(UNIQUE KEY|KEY|FULLTEXT KEY|SPATIAL KEY|UNIQUE INDEX|INDEX)\s", re.I)
_FK_LINE = re.compile(r"^\s*CONSTRAINT\s+`(?:[^`]|``)*`\s+FOREIGN KEY", re.I)
_UNIQUE_LINE = re.compile(r"^\s*UNIQUE (?:KEY|INDEX)\s+(`(?:[^`]|``)*`)\s*\((.*)\)(.*)$", re.I)


def _index_columns(parts: str) -> tuple[str, ...]:
    """Column names of an index definition's column list (prefix lengths and ASC/DESC left out)."""
    return tuple(m.replace("``", "`") for m in re.findall(r"`((?:[^`]|``)*)`(?:\(\d+\))?", parts))


def relax_unique(line: str, keep_unique: tuple[str, ...]) -> str | None:
    """A secondary UNIQUE index line as the replica holds it: a plain index (None: no index at all).

    `INSERT ... ON DUPLICATE KEY UPDATE` matches any unique index, not only the primary key: a row
    re-created in the source with a new id and the same unique name would update the old row, and
    a name moved between two rows in one transaction would fail with 1062 on every run. The source
    enforces uniqueness; the replica only copies its rows, merged by primary key alone. The index
    on exactly `keep_unique` (the configured key of a table merged by a unique key) stays unique.
    A UNIQUE ... USING HASH index (MariaDB's long unique over a BLOB/TEXT) has no plain form and
    is left out.
    """
    m = _UNIQUE_LINE.match(line.strip().rstrip(","))
    if not m:
        return line.strip().rstrip(",")
    name, cols, rest = m.groups()
    if keep_unique and {readable(c) for c in _index_columns(cols)} == set(keep_unique):
        return line.strip().rstrip(",")
    if re.search(r"\bUSING HASH\b", rest, re.I):
        return None
    return f"KEY {name} ({cols}){rest}"


def split_create_table(ddl: str, new_name: str, *, keep_unique: tuple[str, ...] = ()) -> SplitDDL:
    """Rewrite SHOW CREATE TABLE output for a shadow table named `new_name`, in format form.

    Secondary indexes move to one ALTER TABLE run after the load (building them once is several
    times faster than maintaining them row by row). Secondary UNIQUE indexes become plain ones
    (see `relax_unique`). Foreign keys are dropped: the replica is a copy
    whose tables are swapped one at a time, and a constraint across tables would block the swap.
    Triggers are not part of SHOW CREATE TABLE, so none is copied (they must not fire on the copy).
    Table options after the column list are kept except those `_table_options` drops (partitioning,
    system versioning, the AUTO_INCREMENT counter).
    """
    lines = sql_text(ddl).split("\n")
    m = re.match(r"^CREATE TABLE `(?:[^`]|``)+` \($", lines[0])
    if not m:
        raise SchemaError(f"unexpected SHOW CREATE TABLE output: {lines[0][:80]!r}")
    # The column list ends at the first line that starts with `)`: every definition line is
    # indented, and the server prints newlines inside comments, defaults and expressions as `\n`.
    # Everything from there on is table options, and for a partitioned table the partitioning,
    # which the server prints on lines of its own.
    close = next((i for i, line in enumerate(lines) if i and line.startswith(")")), None)
    if close is None:
        raise SchemaError(f"unexpected SHOW CREATE TABLE output: no end of the column list in {lines[0][:80]!r}")
    body = lines[1:close]
    tail = _table_options("\n".join(lines[close:]), versioned_columns=any(_PERIOD_LINE.match(x) for x in body))
    kept: list[str] = []
    keys: list[str] = []
    fks: list[str] = []
    for line in body:
        stripped = line.strip().rstrip(",")
        if _KEY_LINE.match(line):
            relaxed = relax_unique(line, keep_unique)
            if relaxed is not None:
                keys.append(relaxed)
        elif _FK_LINE.match(line):
            fks.append(stripped)
        else:
            kept.append(stripped)
    create = f"CREATE TABLE {mysql_ident(new_name)} (\n  " + ",\n  ".join(kept) + "\n" + tail
    add = None
    if keys:
        add = f"ALTER TABLE {mysql_ident(new_name)} " + ", ".join(f"ADD {k}" for k in keys)
    final = f"CREATE TABLE {mysql_ident(new_name)} (\n  " + ",\n  ".join(kept + keys) + "\n" + tail
    return SplitDDL(create=create, add_indexes=add, dropped_foreign_keys=tuple(fks), final=final)


def same_replica_shape(source_ddl: str, replica_ddl: str, table: str, *, keep_unique: tuple[str, ...] = ()) -> bool:
    """Would a full copy of the source table (`split_create_table`) end as exactly the replica table
    that is there: the same column definitions, keys and table options? Both sides go through the
    same rewrite, so the comparison is textual; any difference (a new index, an altered column, a
    changed option, even one the server prints in another order) says no, and the caller then takes
    the full path that rebuilds the table."""
    try:
        want = split_create_table(source_ddl, table, keep_unique=keep_unique).final
        have = split_create_table(replica_ddl, table, keep_unique=keep_unique).final
    except SchemaError:
        return False
    return want == have


_PERIOD_LINE = re.compile(r"^\s*PERIOD FOR SYSTEM_TIME\b", re.I)
# SQL outside quotes, and quoted strings/names, as alternating pieces of a table-options tail.
_QUOTED = re.compile(r"('(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`(?:[^`]|``)*`)", re.S)
_DIRECTORY = re.compile(r"\s*\b(?:DATA|INDEX)\s+DIRECTORY\s*=\s*$", re.I)
_PARTITION = re.compile(r"\s*(?:/\*!\d*\s*)?PARTITION\s+BY\b", re.I)


def _table_options(tail: str, *, versioned_columns: bool) -> str:
    """The `) ENGINE=... ` tail of SHOW CREATE TABLE as the replica's shadow table takes it.

    - Partitioning is dropped (`PARTITION BY ...`, also in its `/*!50100 ... */` comment form):
      the replica is a copy of the rows, and a copy of the source's RANGE/LIST partitions would
      refuse rows as soon as the source adds a partition the copy does not have (error 1526 on
      every run). Every unique key of a partitioned table holds its partitioning columns, so
      the keys stay valid without it.
    - `WITH SYSTEM VERSIONING` is dropped: the copy holds the current rows (what the source's
      SELECT returns); versioned, each merge would pile history of the copy itself. A table that
      declares its period columns (`PERIOD FOR SYSTEM_TIME`) keeps it: those columns need it.
    - `AUTO_INCREMENT=n` is never carried: the copy gets its own counter from the rows it receives.
    - `DATA DIRECTORY='...'` / `INDEX DIRECTORY='...'` are dropped: a path on the source's host,
      which the replica's server may not have (every copy would fail); the copy lives in its own datadir.
    Quoted text (a COMMENT holding `PARTITION BY` or `AUTO_INCREMENT=5`) is left as it is.
    """
    pieces = _QUOTED.split(tail)  # even indexes: SQL, odd: quoted
    out: list[str] = []
    skip_quoted = False
    for i, piece in enumerate(pieces):
        if i % 2 == 1 and skip_quoted:
            skip_quoted = False
            continue
        if i % 2 == 0:
            piece, n = _DIRECTORY.subn("", piece)
            skip_quoted = bool(n)
            cut = _PARTITION.search(piece)
            if cut:
                out.append(piece[:cut.start()])
                break
            piece = re.sub(r"\s*\bAUTO_INCREMENT=\d+", "", piece, flags=re.I)
            if not versioned_columns:
                piece = re.sub(r"\s*\bWITH SYSTEM VERSIONING\b", "", piece, flags=re.I)
        out.append(piece)
    return "".join(out).rstrip()


def relax_unique_sql(replica_ddl: str, table: str, *, keep_unique: tuple[str, ...] = ()) -> str | None:
    """ALTER TABLE turning a replica table's secondary UNIQUE indexes into plain ones (None: nothing to do).

    For replica tables created before `relax_unique`; run once, then there is nothing left to relax.
    """
    changes: list[str] = []
    for line in sql_text(replica_ddl).split("\n"):
        m = _UNIQUE_LINE.match(line.strip().rstrip(","))
        if not m:
            continue
        relaxed = relax_unique(line, keep_unique)
        if relaxed == line.strip().rstrip(","):
            continue
        changes.append(f"DROP INDEX {m.group(1)}")
        if relaxed is not None:
            changes.append(f"ADD {relaxed}")
    return f"ALTER TABLE {mysql_ident(table)} " + ", ".join(changes) if changes else None


@dataclass(frozen=True)
class ServerIdentity:
    hostname: str
    port: int
    datadir: str
    version: str

    def same_server(self, other: ServerIdentity) -> bool:
        return (self.hostname, self.port, self.datadir) == (other.hostname, other.port, other.datadir)

    @property
    def mysql8_alias_upsert(self) -> bool:
        """MySQL 8.0.20+ deprecates VALUES() in ON DUPLICATE KEY UPDATE in favour of a row alias."""
        if "mariadb" in self.version.lower():
            return False
        m = re.match(r"(\d+)\.(\d+)\.(\d+)", self.version)
        return bool(m) and tuple(int(x) for x in m.groups()) >= (8, 0, 20)


def server_identity(conn: Connection) -> ServerIdentity:
    """Which server `conn` talks to: read once per DB-API connection (it cannot change under it)."""
    def read() -> ServerIdentity:
        r = conn.execute(sa.text("SELECT @@hostname, @@port, @@datadir, VERSION()")).one()
        return ServerIdentity(str(r[0]), int(r[1]), str(r[2]), str(r[3]))
    return once.remembered(conn.connection.driver_connection, "server-identity", read)


def ensure_database(conn: Connection, database: str, *, like_charset: str = "utf8mb4") -> None:
    """Create the database if it is missing. Looked up first: `CREATE DATABASE IF NOT EXISTS` waits for
    a metadata lock behind any DDL running in that database (a 20 s index build stalled a table).
    Once per connection and database (tasks/once.py): a run's database does not vanish under it."""
    if not once.first_time(conn.connection.driver_connection, f"database:{database}"):
        return
    found = conn.exec_driver_sql("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                                 (database,)).first()
    if not found:
        conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {mysql_ident(database)} CHARACTER SET {like_charset}")


# A table or column name stored in one of our bookkeeping tables. Names are data and compare byte
# for byte: under the default utf8mb4_general_ci `café` = `cafe`, so one table would read or
# replace another's state.
NAME_COLUMN = "VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"


def ensure_exact_names(cur: Any, table: str, columns: tuple[str, ...]) -> None:
    """Convert name columns of a bookkeeping table created before NAME_COLUMN (once; then a no-op)."""
    execute(cur, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                 "AND TABLE_NAME = %s AND COLLATION_NAME <> 'utf8mb4_bin'", (table,))
    wrong = sorted({str(r[0]) for r in cur.fetchall()} & set(columns))
    if wrong:
        execute(cur, f"ALTER TABLE {mysql_ident(table)} "
                     + ", ".join(f"MODIFY {mysql_ident(c)} {NAME_COLUMN}" for c in wrong))


def read_database_schemas(conn: Connection, database: str, tables: set[str]
                          ) -> dict[str, tuple[TableSchema, list[tuple[str, ...]]]]:
    """`read_table_schema` and `unique_keys` of many base tables at once: four reads of
    information_schema for the whole database instead of five per table (a run of 450 tables read
    2,250 statements' worth of metadata before its first row). Tables not found under exactly
    their name are left out: the caller reads those one by one, which gives their own error."""
    def rows(sql: str) -> list:
        return conn.execute(sa.text(sql), {"db": database}).all()

    infos = {str(r[0]): r[1:] for r in rows(
        "SELECT TABLE_NAME, COALESCE(TABLE_ROWS, 0), COALESCE(DATA_LENGTH, 0), TABLE_TYPE, "
        "COALESCE(AVG_ROW_LENGTH, 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db") if str(r[0]) in tables}
    wanted = {t for t, info in infos.items() if info[2] == "BASE TABLE"}
    columns: dict[str, list] = {t: [] for t in wanted}
    for r in rows("SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_MAXIMUM_LENGTH, "
                  "NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME, EXTRA, COLUMN_DEFAULT, "
                  "COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :db "
                  "ORDER BY TABLE_NAME, ORDINAL_POSITION"):
        if str(r[0]) in columns:
            columns[str(r[0])].append(r[1:])
    json_cols: dict[str, set[str]] = {t: set() for t in wanted}
    try:
        checks = rows("SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
                      "WHERE CONSTRAINT_SCHEMA = :db")
    except sa.exc.DBAPIError:
        checks = []
    for t, clause in checks:
        m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", str(clause), re.I)
        if m and str(t) in json_cols:
            json_cols[str(t)].add(m.group(1).replace("``", "`"))
    keys: dict[str, dict[str, list[str]]] = {t: {} for t in wanted}
    for t, index, col in rows("SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
                              "WHERE TABLE_SCHEMA = :db AND NON_UNIQUE = 0 ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"):
        if str(t) in keys:
            keys[str(t)].setdefault(str(index), []).append(str(col))
    out = {}
    for t in wanted:
        pk = keys[t].get("PRIMARY", [])
        out[t] = (_schema_of(database, t, infos[t], columns[t], json_cols[t], pk),
                  [tuple(v) for v in keys[t].values()])
    return out


def unique_keys(conn: Connection, database: str, table: str) -> list[tuple[str, ...]]:
    """Every unique index (the primary key included) as a tuple of column names."""
    rows = conn.execute(
        sa.text(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = :db "
            "AND TABLE_NAME = :t AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX"
        ),
        {"db": database, "t": table},
    ).all()
    out: dict[str, list[str]] = {}
    for name, col in rows:
        out.setdefault(str(name), []).append(str(col))
    return [tuple(v) for v in out.values()]


def choose_key(schema: TableSchema, configured: tuple[str, ...], uniques: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The key used for keyset chunks: the configured one if the table guarantees it is unique.

    A key that is not unique would make keyset pagination skip rows, so it is refused, not trusted.
    """
    names = set(schema.column_names)
    for c in configured:
        if c not in names:
            import difflib

            m = difflib.get_close_matches(c, list(names), n=1)
            hint = f" (did you mean {m[0]!r}?)" if m else ""
            raise SchemaError(f"table {schema.name!r}: primary_key column {c!r} does not exist{hint}; fix tables.{schema.name}.primary_key")
    if not configured:
        return schema.primary_key
    if configured == schema.primary_key:
        return configured
    for u in uniques:
        if set(u) == set(configured) and all(not schema.column(c).nullable for c in configured):
            return configured
    raise SchemaError(
        f"table {schema.name!r}: primary_key {list(configured)} is not a unique NOT NULL key of the table "
        f"(its primary key is {list(schema.primary_key)}); fix tables.{schema.name}.primary_key"
    )


def max_allowed_packet(conn: Connection) -> int:
    return int(conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one())
