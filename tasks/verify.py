"""Load verification: after a table is loaded, the copies must agree.

Row counts of the replica and the analytics table are compared exactly (both are ours and quiet
once the table's load has finished). The source can change while we read it, so it is compared
only when the caller asks (`etl verify` in a quiet window), and then over every column of every row
(`verify_table`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tasks.connections import Engines
from tasks.identifiers import execute, mysql_qualified, pg_qualified, pg_table_name
from tasks.type_mapping import INTEGER_TYPES, type_rule


@dataclass(frozen=True)
class CountCheck:
    table: str
    replica_rows: int
    analytics_rows: int
    source_rows: int | None = None

    @property
    def ok(self) -> bool:
        same = self.replica_rows == self.analytics_rows
        return same and (self.source_rows is None or self.source_rows == self.replica_rows)

    def describe(self) -> str:
        src = f"source {self.source_rows:,}, " if self.source_rows is not None else ""
        return f"{self.table}: {src}replica {self.replica_rows:,}, analytics {self.analytics_rows:,}"


def count_check(engines: Engines, table: str, *, source_db: str | None, replica_db: str, pg_schema: str) -> CountCheck:
    """Row counts of the table in the replica and analytics (and the source when `source_db` is
    given). The PostgreSQL count runs beside the MySQL one: on a big table each takes seconds."""
    def analytics_count() -> int:
        with engines.analytics.connect() as c:
            return int(c.exec_driver_sql(f"SELECT COUNT(*) FROM {pg_qualified(pg_schema, pg_table_name(table))}")
                       .scalar_one())

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etl-count") as pool:
        pending = pool.submit(analytics_count)
        with engines.replica.connect() as c:
            rep = int(c.exec_driver_sql(f"SELECT COUNT(*) FROM {mysql_qualified(replica_db, table)}").scalar_one())
        ana = pending.result()
    src = None
    if source_db is not None:
        with engines.source.connect() as c:
            src = int(c.exec_driver_sql(f"SELECT COUNT(*) FROM {mysql_qualified(source_db, table)}").scalar_one())
    return CountCheck(table, rep, ana, src)


# --- etl verify: every column of every row, in SQL, across the three databases ------------------
#
# Each value is printed as a canonical text, by MySQL and by PostgreSQL alike for equal values, so
# that a row hashes the same on both engines. A field is `<characters>:<text>` and NULL is `~` (a
# number's or date's text, which cannot hold `|`, is `<text>|`, NULL `~|`): no value can be
# mistaken for its neighbour or for NULL, and '' is not NULL. A row's hash is the MD5
# of its fields in column order; a range's checksum is the row count and the sum of the first 60
# bits of its rows' hashes (order free, computed by the server: nothing per row reaches Python).
#
# Two MySQL texts exist. Source vs replica (same engine) compares the stored values exactly: zero
# dates, NUL characters and JSON text as stored. Replica vs analytics compares what PostgreSQL must
# hold: zero dates as NULL, NUL removed, FLOAT as the float4 it is.

_HASH_HEX = 15  # 60 bits: positive as a signed bigint on both engines, exact in SUM


@dataclass(frozen=True)
class ColumnText:
    """SQL printing one column's value as canonical text (NULL stays NULL)."""

    my_exact: str  # MySQL, the stored value exactly (source vs replica)
    my: str  # MySQL, the value as PostgreSQL holds it (replica vs analytics)
    pg: str  # PostgreSQL
    plain: bool = False  # every text it prints is digits, letters, `.:-+ ` (never `|`, never `~`)


def _my_float(x: str) -> str:
    """A double as `<53-bit mantissa>p<binary exponent>`, exact, by arithmetic only.

    MySQL and PostgreSQL print the same shortest digits but choose plain or exponent form at
    different magnitudes (`0.00001` vs `1e-05`), and rewriting a print costs dozens of string calls
    per value. The binary form is exact and cheap: the exponent from LOG2 (off by at most one next
    to a power of two, hence the correction), the mantissa scaled to an integer below 2^53, every
    step exact (powers of two). Zero and -0 are `0`.
    """
    a = f"ABS({x})"
    e0 = f"GREATEST(LEAST(FLOOR(LOG2({a})), 1023), -1074)"  # POW(2, 1024) overflows
    e = f"({e0} + ({a} / POW(2, {e0}) >= 2) - ({a} / POW(2, {e0}) < 1))"
    return (f"IF({x} = 0, '0', CONCAT(IF({x} < 0, '-', ''), CAST({a} / POW(2, {e}) * 4503599627370496 AS SIGNED), "
            f"'p', {e}))")


def _pg_float(x: str) -> str:
    """PostgreSQL's side of `_my_float` (float8 `x`); NaN and infinities, which MySQL cannot hold, as text."""
    a = f"abs({x})"
    e0 = f"greatest(least(floor(ln({a}) / ln(2::float8))::int, 1023), -1074)"
    e = (f"({e0} + CASE WHEN {a} / power(2::float8, {e0}) >= 2 THEN 1 "
         f"WHEN {a} / power(2::float8, {e0}) < 1 THEN -1 ELSE 0 END)")
    return (f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = 0 THEN '0' "
            f"WHEN {x} IN ('Infinity', '-Infinity', 'NaN') THEN {x}::text ELSE "
            f"(CASE WHEN {x} < 0 THEN '-' ELSE '' END) "
            f"|| ({a} / power(2::float8, {e}) * 4503599627370496)::bigint::text "
            f"|| 'p' || {e} END")


def column_text(col, *, as_boolean: bool, pg_name: str) -> ColumnText:  # noqa: ANN001
    """The canonical text of one column on each side; `pg_name` is its PostgreSQL name."""
    from tasks.identifiers import mysql_ident, pg_ident

    q, p = mysql_ident(col.name), pg_ident(pg_name)
    kind = type_rule(col).verify  # the shape of canonical text, from tasks/type_mapping.TYPE_RULES
    if as_boolean:
        return ColumnText(f"CONCAT({q} + 0)", f"CONCAT({q} + 0)", f"{p}::int::text", plain=True)
    if kind == "integer":
        # `+ 0` drops ZEROFILL padding and YEAR's `0000`, as the load's number does.
        return ColumnText(f"CONCAT({q} + 0)", f"CONCAT({q} + 0)", f"{p}::text", plain=True)
    if kind == "bit":
        e = f"LPAD(BIN({q} + 0), {col.bit_width}, '0')"
        return ColumnText(e, e, f"{p}::text", plain=True)
    if kind == "float":
        # The float4 as stored: MySQL widens it to double, PostgreSQL widens real to float8.
        return ColumnText(f"CONCAT(CAST({q} AS DOUBLE))", _my_float(f"CAST({q} AS DOUBLE)"), _pg_float(f"{p}::float8"),
                          plain=True)
    if kind == "double":
        return ColumnText(f"CONCAT({q})", _my_float(q), _pg_float(p), plain=True)
    if kind == "time":
        # Microseconds: TIME spans -838:59:59..838:59:59, PostgreSQL holds it as an interval.
        us = f"CONCAT(ROUND(TIME_TO_SEC({q}) * 1000000))"
        return ColumnText(f"CONCAT({q})", us, f"(extract(epoch FROM {p}) * 1000000)::numeric(30,0)::text", plain=True)
    if kind in ("date", "timestamp"):
        # Zero dates, a zero month or day, and year 0 are NULL in PostgreSQL (as the load sends them).
        zero = f"{q} < '0001-01-01' OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0"
        if col.data_type == "date":
            my, pg = f"DATE_FORMAT({q}, '%%Y-%%m-%%d')", f"to_char({p}, 'YYYY-MM-DD')"
        else:
            my = f"DATE_FORMAT({q}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')"
            src = f"({p} AT TIME ZONE 'UTC')" if kind == "timestamp" else p
            pg = f"to_char({src}, 'YYYY-MM-DD HH24:MI:SS.US')"
        return ColumnText(f"CONCAT({q})", f"IF({zero}, NULL, {my})", pg, plain=True)
    if kind == "json":
        # jsonb keeps neither key order, duplicate keys, whitespace nor escapes, and MySQL cannot
        # parse text into jsonb's form: replica vs analytics compares the JSON type and an array's
        # length only (README, Verify). Source vs replica compares the text exactly.
        jt = f"JSON_TYPE({q})"
        my = (f"CONCAT(IF({jt} IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL'), 'number', LOWER({jt})), "
              f"IF({jt} = 'ARRAY', CONCAT(':', JSON_LENGTH({q})), ''))")
        pg = (f"jsonb_typeof({p}) || CASE WHEN jsonb_typeof({p}) = 'array' "
              f"THEN ':' || jsonb_array_length({p}) ELSE '' END")
        return ColumnText(f"CONVERT({q} USING utf8mb4)", my, pg)
    if kind == "decimal":
        return ColumnText(f"CONCAT({q})", f"CONCAT({q})", f"{p}::text", plain=True)
    if kind == "text":
        # PostgreSQL cannot store NUL; the load removes it.
        u = f"CONVERT({q} USING utf8mb4)"
        return ColumnText(u, f"REPLACE({u}, CHAR(0 USING utf8mb4), '')", f"{p}::text")
    if kind == "binary":
        return ColumnText(f"LOWER(HEX({q}))", f"LOWER(HEX({q}))", f"encode({p}, 'hex')", plain=True)
    if kind == "geometry":
        return ColumnText(f"LOWER(HEX({q}))", f"ST_AsText({q})", f"{p}::text")
    return ColumnText(f"CONCAT({q})", f"CONCAT({q})", f"{p}::text")


def _my_field(v: str, plain: bool) -> str:
    u = f"CONVERT({v} USING utf8mb4)"
    if plain:  # cannot hold the separator: written once, not measured (a float's text is costly)
        return f"IFNULL(CONCAT({u}, '|'), '~|')"
    return f"IFNULL(CONCAT(CHAR_LENGTH({u}), ':', {u}), '~')"


def _pg_field(v: str, plain: bool) -> str:
    if plain:
        return f"COALESCE({v} || '|', '~|')"
    return f"COALESCE(length({v}) || ':' || {v}, '~')"


def _my_fields(fields: list[tuple[str, bool]]) -> str:
    return "CONCAT(" + ", ".join(_my_field(t, plain) for t, plain in fields) + ")" if fields else "''"


def _pg_fields(fields: list[tuple[str, bool]]) -> str:
    return " || ".join(_pg_field(t, plain) for t, plain in fields) if fields else "''"


def _my_sum(row: str) -> str:
    return f"CAST(CONV(LEFT(MD5({row}), {_HASH_HEX}), 16, 10) AS UNSIGNED)"


def _pg_sum(row: str) -> str:
    return f"('x' || left(md5({row}), {_HASH_HEX}))::bit({_HASH_HEX * 4})::bigint"


def exact_row_sql(schema) -> str:  # noqa: ANN001 - a TableSchema
    """MySQL SQL printing a row of `schema` as its canonical text, stored values exactly (the text
    source vs replica compare). Public for the checksum sync mode (tasks/range_checksum.py)."""
    texts = [column_text(c, as_boolean=False, pg_name=c.name) for c in schema.columns]
    return _my_fields([(t.my_exact, t.plain) for t in texts])


def row_hash_sql(row: str) -> str:
    """MySQL SQL of a row's 60-bit hash (an unsigned integer) from its canonical text `row`: summed
    over a range, with COUNT(*), it is the range's checksum (order free, computed by the server)."""
    return _my_sum(row)


def row_hash_sum_sql(schema) -> str:  # noqa: ANN001
    """MySQL: the sum of the 60-bit row hashes of every row, stored values exactly (the probe's
    whole-table checksum, tasks/probe.py); NULL for an empty table."""
    return f"SUM({row_hash_sql(exact_row_sql(schema))})"


@dataclass(frozen=True)
class TableTexts:
    """The SQL verify and repair need for one table, built once from its replica schema."""

    key: tuple[str, ...]
    key_columns: list  # PgColumn of each key column
    ranged: bool  # leading key column is an integer: ranges cut on it are the same rows everywhere
    my_key: list[str]  # canonical text of each key column, MySQL
    pg_key: list[str]
    key_plain: list[bool]
    my_exact_row: str  # the row's canonical text, MySQL, stored values exactly
    my_row: str  # the row's canonical text, MySQL, as PostgreSQL holds it
    pg_row: str


def table_texts(engines: Engines, table, *, replica_db: str, column_case: str) -> TableTexts:  # noqa: ANN001
    from tasks.mysql_schema import choose_key, read_table_schema, unique_keys
    from tasks.type_mapping import pg_columns

    with engines.replica.connect() as rc:
        schema = read_table_schema(rc, replica_db, table.name)
        key = choose_key(schema, table.primary_key, unique_keys(rc, replica_db, table.name))
        rc.rollback()
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns)
    texts = {c.source.name: column_text(c.source, as_boolean=c.as_boolean, pg_name=c.name) for c in cols}
    order = [c.source.name for c in cols]
    by_name = {c.source.name: c for c in cols}
    return TableTexts(
        key=key, key_columns=[by_name[k] for k in key],
        ranged=bool(key) and schema.column(key[0]).data_type in INTEGER_TYPES,
        my_key=[texts[k].my for k in key], pg_key=[texts[k].pg for k in key],
        key_plain=[texts[k].plain for k in key],
        my_exact_row=_my_fields([(texts[n].my_exact, texts[n].plain) for n in order]),
        my_row=_my_fields([(texts[n].my, texts[n].plain) for n in order]),
        pg_row=_pg_fields([(texts[n].pg, texts[n].plain) for n in order]))


@dataclass
class RangeDiff:
    low: object  # integer-key range (low, high]; None = open end
    high: object
    source: tuple
    replica: tuple
    analytics: tuple
    keys: list = None  # every key (tuple of canonical texts) whose row differs somewhere in the range
    bucket: int | None = None  # set instead of low/high for a table without a leading integer key


@dataclass
class VerifyResult:
    table: str
    source_rows: int
    replica_rows: int
    analytics_rows: int
    ranges: int
    differing: list

    @property
    def ok(self) -> bool:
        return not self.differing and self.source_rows == self.replica_rows == self.analytics_rows


def verify_table(engines: Engines, table, *, source_db: str, replica_db: str, pg_schema: str, column_case: str,
                 page: int = 100_000) -> VerifyResult:
    """Compare source, replica and analytics over every column of every row, range by range.

    A table whose (leading) key column is an integer is cut into ranges of about `page` rows on the
    replica. Any other table is cut into buckets by a hash of its key's canonical text, which puts
    a key in the same bucket on every engine (a string range would not: MySQL and PostgreSQL order
    strings differently); one GROUP BY per engine reads all buckets. Only differing ranges or
    buckets are drilled into, key by key; a table without a key is one range, checked but not drilled.
    """
    from tasks.identifiers import mysql_ident, pg_column_name, pg_ident

    tx = table_texts(engines, table, replica_db=replica_db, column_case=column_case)
    src_t, rep_t = mysql_qualified(source_db, table.name), mysql_qualified(replica_db, table.name)
    pg_t = pg_qualified(pg_schema, pg_table_name(table.name))
    same = tx.my_exact_row == tx.my_row  # no column where the two MySQL texts differ: hash once
    rep_sums = (f"COALESCE(SUM({_my_sum(tx.my_exact_row)}), 0)" if same else
                f"COALESCE(SUM({_my_sum(tx.my_exact_row)}), 0), COALESCE(SUM({_my_sum(tx.my_row)}), 0)")

    def rep_tuple(row: tuple) -> tuple:
        n, *sums = (int(x) for x in row)
        return (n, sums[0], sums[0]) if same else (n, *sums)

    with engines.source.connect() as sc, engines.replica.connect() as rc, engines.analytics.connect() as pc:
        scur = sc.connection.driver_connection.cursor()
        rcur = rc.connection.driver_connection.cursor()
        pcur = pc.connection.driver_connection.cursor()
        seg_s, seg_r, seg_a, where = {}, {}, {}, {}
        if tx.ranged:
            k, kp = mysql_ident(tx.key[0]), pg_ident(pg_column_name(tx.key[0], column_case))
            bounds: list = [None]
            while True:
                execute(rcur, f"SELECT {k} FROM {rep_t} WHERE %s IS NULL OR {k} > %s ORDER BY {k} "
                              f"LIMIT 1 OFFSET {page - 1}", (bounds[-1], bounds[-1]))
                row = rcur.fetchone()
                if not row:
                    break
                bounds.append(int(row[0]))
            bounds.append(None)
            for lo, hi in zip(bounds, bounds[1:]):
                my = [f"{k} > {lo}"] * (lo is not None) + [f"{k} <= {hi}"] * (hi is not None)
                pg = [f"{kp} > {lo}"] * (lo is not None) + [f"{kp} <= {hi}"] * (hi is not None)
                w_my, w_pg = " AND ".join(my) or "1=1", " AND ".join(pg) or "true"
                where[(lo, hi)] = (w_my, w_pg)
                seg_s[(lo, hi)] = tuple(int(x) for x in execute(
                    scur, f"SELECT COUNT(*), COALESCE(SUM({_my_sum(tx.my_exact_row)}), 0) FROM {src_t} WHERE {w_my}")
                    .fetchone())
                seg_r[(lo, hi)] = rep_tuple(execute(rcur, f"SELECT COUNT(*), {rep_sums} FROM {rep_t} WHERE {w_my}")
                                            .fetchone())
                seg_a[(lo, hi)] = tuple(int(x) for x in execute(
                    pcur, f"SELECT count(*), COALESCE(sum({_pg_sum(tx.pg_row)}), 0) FROM {pg_t} WHERE {w_pg}")
                    .fetchone())
        else:
            n = int(execute(rcur, f"SELECT COUNT(*) FROM {rep_t}").fetchone()[0])
            buckets = max(1, -(-n // page)) if tx.key else 1
            b_my, b_pg = _bucket_exprs(tx, buckets)
            for cur, sql, out, conv in (
                    (scur, f"SELECT {b_my}, COUNT(*), COALESCE(SUM({_my_sum(tx.my_exact_row)}), 0) FROM {src_t} "
                           f"GROUP BY 1", seg_s, lambda r: tuple(int(x) for x in r)),
                    (rcur, f"SELECT {b_my}, COUNT(*), {rep_sums} FROM {rep_t} GROUP BY 1", seg_r, rep_tuple),
                    (pcur, f"SELECT {b_pg}, count(*), COALESCE(sum({_pg_sum(tx.pg_row)}), 0) FROM {pg_t} "
                           f"GROUP BY 1", seg_a, lambda r: tuple(int(x) for x in r))):
                for row in execute(cur, sql).fetchall():
                    out[int(row[0])] = conv(row[1:])
            for b in range(buckets):
                where[b] = (f"{b_my} = {b}", f"{b_pg} = {b}")
        empty_s, empty_r, empty_a = (0, 0), (0, 0, 0), (0, 0)
        differing = []
        for seg, (w_my, w_pg) in where.items():
            s, r, a = seg_s.get(seg, empty_s), seg_r.get(seg, empty_r), seg_a.get(seg, empty_a)
            # Source vs replica: count and exact hash; replica vs analytics: count and PostgreSQL-side hash.
            if s == r[:2] and (r[0], r[2]) == a:
                continue
            lo, hi = seg if tx.ranged else (None, None)
            d = RangeDiff(lo, hi, s, r, a, keys=[], bucket=None if tx.ranged else seg)
            if tx.key and tx.ranged:
                d.keys = [k[1:] for k in _drill(scur, rcur, pcur, tx, src_t, rep_t, pg_t, w_my, w_pg, "0", "0")]
            differing.append(d)
        if tx.key and not tx.ranged and differing:
            # Buckets are not index ranges: one pass over the table drills all differing buckets.
            ids = ", ".join(str(d.bucket) for d in differing)
            found = _drill(scur, rcur, pcur, tx, src_t, rep_t, pg_t, f"{b_my} IN ({ids})", f"{b_pg} IN ({ids})",
                           b_my, b_pg)
            by_bucket = {d.bucket: d for d in differing}
            for tag, *k in found:
                by_bucket[int(tag)].keys.append(tuple(k))
        totals = [sum(x[0] for x in seg.values()) for seg in (seg_s, seg_r, seg_a)]
        sc.rollback()
        rc.rollback()
        pc.rollback()
    return VerifyResult(table.name, *totals, len(where), differing)


def _bucket_exprs(tx: TableTexts, buckets: int) -> tuple[str, str]:
    if buckets == 1:
        return "0", "0"
    my = f"CAST(CONV(LEFT(MD5({_my_fields(list(zip(tx.my_key, tx.key_plain)))}), 8), 16, 10) AS UNSIGNED) MOD {buckets}"
    pg = f"mod(('x' || left(md5({_pg_fields(list(zip(tx.pg_key, tx.key_plain)))}), 8))::bit(32)::bigint, {buckets})"
    return my, pg


def _drill(scur, rcur, pcur, tx: TableTexts, src_t, rep_t, pg_t, w_my, w_pg,  # noqa: ANN001
           tag_my, tag_pg) -> list[tuple]:  # noqa: ANN001
    """(tag, *key) of every row in the range that is missing or different somewhere, from key -> hash
    maps of the range read from each database (a range or bucket holds about `page` rows). The tag
    (the bucket's number) tells which bucket a key belongs to."""
    kmy, kpg = ", ".join([f"CONCAT({tag_my})", *tx.my_key]), ", ".join([f"({tag_pg})::text", *tx.pg_key])
    n = len(tx.key) + 1

    def keyed(rows, at: int) -> dict:  # noqa: ANN001
        return {tuple("NULL" if v is None else str(v) for v in row[:n]): row[at] for row in rows}

    s_rows = execute(scur, f"SELECT {kmy}, MD5({tx.my_exact_row}) FROM {src_t} WHERE {w_my}").fetchall()
    r_rows = execute(rcur, f"SELECT {kmy}, MD5({tx.my_exact_row}), MD5({tx.my_row}) FROM {rep_t} "
                           f"WHERE {w_my}").fetchall()
    a_rows = execute(pcur, f"SELECT {kpg}, md5({tx.pg_row}) FROM {pg_t} WHERE {w_pg}").fetchall()
    s, r_exact, r_pg, a = keyed(s_rows, n), keyed(r_rows, n), keyed(r_rows, n + 1), keyed(a_rows, n)
    found = sorted(k for k in set(s) | set(r_exact) | set(a)
                   if s.get(k) != r_exact.get(k) or r_pg.get(k) != a.get(k))
    return found


VERIFY_DDL = """CREATE TABLE IF NOT EXISTS etl.verify_results (
    run_id text NOT NULL,
    table_name text NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now(),
    ok boolean NOT NULL,
    source_rows bigint, replica_rows bigint, analytics_rows bigint,
    ranges integer, ranges_differing integer,
    differing_keys text,
    PRIMARY KEY (run_id, table_name))"""


def store_results(pg_conn, run_id: str, results: list[VerifyResult]) -> None:  # noqa: ANN001
    """Keep the outcome with the run's metrics (schema etl)."""
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))")
        cur.execute("CREATE SCHEMA IF NOT EXISTS etl")
        cur.execute(VERIFY_DDL)
        for r in results:
            keys = "; ".join(",".join(k) for d in r.differing for k in (d.keys or []))[:2000] or None
            cur.execute(
                "INSERT INTO etl.verify_results (run_id, table_name, ok, source_rows, replica_rows, analytics_rows, "
                "ranges, ranges_differing, differing_keys) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run_id, table_name) DO UPDATE SET ok = EXCLUDED.ok, checked_at = now()",
                (run_id, r.table, r.ok, r.source_rows, r.replica_rows, r.analytics_rows, r.ranges,
                 len(r.differing), keys))
    pg_conn.commit()


def render_results(results: list[VerifyResult]) -> str:
    from tasks.reports import format_table

    rows = [[r.table, "ok" if r.ok else "DIFFERS", r.source_rows, r.replica_rows, r.analytics_rows, r.ranges,
             len(r.differing), "; ".join(",".join(k) for d in r.differing for k in (d.keys or []))[:80]]
            for r in results]
    return format_table(["table", "result", "source", "replica", "analytics", "ranges", "differing",
                         "keys that differ (first)"], rows)
