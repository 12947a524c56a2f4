#!/usr/bin/env python3
"""Data checks for the benchmark: is each copy the same data as the source?

Two checks, both per table, both reading only (never writing) the databases:

``check_mysql(src_db, dst_db)``   MySQL -> MySQL copies (our replica copy, mariadb-dump, INSERT..SELECT):
    row count and ``CHECKSUM TABLE`` of every source table, compared with the copy. The checksum
    covers every byte of every row, so any changed, missing or extra value fails. It is only
    comparable when both tables have the same column definitions, which is the case for every
    MySQL copy the benchmark makes.

``check_pg(src_db, pg_db, schema)``   MySQL -> PostgreSQL copies (ours, native pipe, pgloader):
    per column aggregates computed on both sides, as the team's earlier harness did
    (shared bench ``mypg.py verify``), plus content hashes:

    ==========================  =====================================================================
    column kind                 aggregates compared
    ==========================  =====================================================================
    all                         COUNT(*) of the table, COUNT(col) (non-NULL values)
    integer, decimal, bool      SUM (bool: number of non-zero values)
    float, double               SUM, with a relative tolerance of 1e-9 (summation order differs)
    date, datetime, timestamp   sum of epoch seconds (zero dates and year 0 count as NULL)
    time                        sum of seconds
    text, enum, set             sum of character lengths, sum of the first 32 bits of MD5 per value
    binary, blob                sum of byte lengths, sum of the first 32 bits of MD5 per value
    json                        COUNT and the summed number of top-level members
    ==========================  =====================================================================

    The MD5 sums make it a content checksum for text and binary values (an escaping bug changes the
    hash even when the length stays the same). Tables and columns are matched by name ignoring case
    and underscores (pgloader and column_case choices differ). Source aggregates are cached per
    process, since every PG target is compared with the same source.

Command line (prints one line per table, exits 1 when any table differs):

    python bench/verify.py mysql --src bench_src --dst bench_repl
    python bench/verify.py pg    --src bench_src --dst bench_dst --schema ours

Needs PyMySQL and psycopg2 (the project's own dependencies).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

DEFAULT_MYSQL_URL = os.environ.get("BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")

# TO_SECONDS('1970-01-01') in MySQL: seconds from year 0 to the Unix epoch.
_EPOCH_TO_SECONDS = 62167219200


# ----------------------------------------------------------------------------- connections
def _url_parts(url: str) -> dict:
    """host/port/user/password/database of a SQLAlchemy-style URL (stdlib only: the harness stays small)."""
    from urllib.parse import unquote, urlsplit

    u = urlsplit(url)
    return dict(host=u.hostname or "127.0.0.1", port=u.port, user=unquote(u.username) if u.username else None,
                password=unquote(u.password) if u.password is not None else "",
                database=unquote(u.path.lstrip("/")) or None)


def mysql_connect(server_url: str, db: str | None = None):
    import pymysql

    p = _url_parts(server_url)
    return pymysql.connect(host=p["host"], port=p["port"] or 3306, user=p["user"] or "root",
                           password=p["password"], database=db, charset="utf8mb4", autocommit=True,
                           init_command="SET SESSION sql_mode='', time_zone='+00:00', "
                                        "net_read_timeout=3600, net_write_timeout=3600")


def pg_connect(server_url: str, db: str):
    import psycopg2

    p = _url_parts(server_url)
    kw = dict(host=p["host"], port=p["port"] or 5432, user=p["user"] or "postgres", dbname=db,
              options="-c timezone=UTC")
    if p["password"]:
        kw["password"] = p["password"]
    conn = psycopg2.connect(**kw)
    conn.autocommit = True
    return conn


def _q(conn, sql: str, args: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall()) if cur.description else []


def mq(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def pq(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def norm_name(s: str) -> str:
    return s.lower().replace("_", "")


# ----------------------------------------------------------------------------- metadata
def source_tables(my, db: str) -> list[str]:
    """Base tables of a MySQL database, largest first; the pipeline's own `_etl*` tables are left out."""
    rows = _q(my, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                  "AND table_type = 'BASE TABLE' AND table_name NOT LIKE '\\_etl%%' "
                  "ORDER BY data_length DESC, table_name", (db,))
    return [r[0] for r in rows]


@dataclass(frozen=True)
class Col:
    name: str
    dt: str  # data_type, lower case ('json' for MariaDB LONGTEXT + CHECK json_valid)
    ct: str  # column_type, lower case

    @property
    def kind(self) -> str:
        dt = self.dt
        if dt == "tinyint" and self.ct.startswith("tinyint(1)") and "unsigned" not in self.ct:
            return "bool"
        if dt in ("tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "decimal", "numeric", "bit"):
            return "int"
        if dt in ("float", "double", "real"):
            return "float"
        if dt in ("date", "datetime", "timestamp"):
            return dt
        if dt == "time":
            return "time"
        if dt in ("blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary"):
            return "bin"
        if dt == "json":
            return "json"
        return "str"


def table_columns(my, db: str, tables: list[str]) -> dict[str, list[Col]]:
    rows = _q(my, "SELECT table_name, column_name, data_type, column_type FROM information_schema.columns "
                  "WHERE table_schema = %s ORDER BY table_name, ordinal_position", (db,))
    js: set[tuple[str, str]] = set()
    try:
        for t, clause in _q(my, "SELECT table_name, check_clause FROM information_schema.check_constraints "
                                "WHERE constraint_schema = %s AND check_clause LIKE 'json_valid(%%'", (db,)):
            js.add((t, clause.split("`")[1]))
    except Exception:  # noqa: BLE001 - MySQL 5.7 has no check_constraints view
        pass
    out: dict[str, list[Col]] = {t: [] for t in tables}
    for t, c, dt, ct in rows:
        if t in out:
            dt = "json" if (t, c) in js else str(dt).lower()
            out[t].append(Col(c, dt, str(ct).lower()))
    return out


# ----------------------------------------------------------------------------- results
@dataclass
class TableCheck:
    table: str
    src_rows: int | None
    dst_rows: int | None
    src_sum: str = ""  # CHECKSUM TABLE value (MySQL) or a digest of the aggregates (PG)
    dst_sum: str = ""
    compared: int = 0  # aggregates compared (PG check)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        what = f"{self.compared} aggregates" if self.compared else f"checksum {self.src_sum}/{self.dst_sum}"
        state = "ok" if self.ok else "FAIL: " + "; ".join(self.problems[:4]) + (
            f"; ... {len(self.problems) - 4} more" if len(self.problems) > 4 else "")
        return f"{self.table}: rows {self.src_rows}/{self.dst_rows}, {what}: {state}"


@dataclass
class CheckResult:
    kind: str  # 'mysql' or 'pg'
    target: str
    tables: list[TableCheck]

    @property
    def ok(self) -> bool:
        return bool(self.tables) and all(t.ok for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.dst_rows or 0 for t in self.tables)

    def summary(self) -> str:
        bad = [t.table for t in self.tables if not t.ok]
        what = "count+CHECKSUM" if self.kind == "mysql" else "count+aggs"
        if not bad:
            return f"ok ({len(self.tables)} tables, {what})"
        return f"FAIL ({len(bad)}/{len(self.tables)}: {', '.join(bad[:3])}{'...' if len(bad) > 3 else ''})"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "ok": self.ok,
                "tables": [dict(table=t.table, ok=t.ok, src_rows=t.src_rows, dst_rows=t.dst_rows, src_sum=t.src_sum,
                                dst_sum=t.dst_sum, compared=t.compared, problems=t.problems[:20])
                           for t in self.tables]}


# ----------------------------------------------------------------------------- MySQL -> MySQL
_checksum_cache: dict[tuple[str, str, str], tuple[int, int | None]] = {}


def mysql_counts_checksums(my, db: str, tables: list[str], *, cache: bool = False,
                           connect=None) -> dict[str, tuple[int, int | None]]:
    """{table: (rows, CHECKSUM TABLE)}; a missing table gives (-1, None). With `connect` (a
    connection factory) and at most 20 tables, tables are checked on JOBS connections at once."""
    key = (f"{my.host}:{my.port}", db)
    hits = {t: _checksum_cache[(*key, t)] for t in tables if cache and (*key, t) in _checksum_cache}
    todo = [t for t in tables if t not in hits]
    existing = {r[0] for r in _q(my, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (db,))}
    present = [t for t in todo if t in existing]
    out: dict[str, tuple[int, int | None]] = {t: (-1, None) for t in todo}
    if connect is not None and 0 < len(present) <= 20:
        work = [(t, f"SELECT COUNT(*) FROM {mq(db)}.{mq(t)}", []) for t in present]
        counts = _parallel_aggregates(connect, work)
        sums = _parallel_checksums(connect, db, present)
        for t in present:
            c = counts[t][0]
            if isinstance(c, Exception):
                raise c
            out[t] = (int(c[0]), sums[t])
        present = []
    # Few round trips: 400 tiny tables are checked with 2 + 4 statements.
    for i in range(0, len(present), 200):
        part = present[i:i + 200]
        sums = {str(name).split(".", 1)[1]: (None if v is None else int(v))
                for name, v in _q(my, "CHECKSUM TABLE " + ", ".join(f"{mq(db)}.{mq(t)}" for t in part))}
        for j in range(0, len(part), 100):
            sub = part[j:j + 100]
            sql = " UNION ALL ".join(f"SELECT {n}, COUNT(*) FROM {mq(db)}.{mq(t)}" for n, t in enumerate(sub))
            for n, count in _q(my, sql):
                t = sub[int(n)]
                out[t] = (int(count), sums.get(t))
    if cache:
        for t, v in out.items():
            if v[0] >= 0:
                _checksum_cache[(*key, t)] = v
    return {t: hits[t] if t in hits else out[t] for t in tables}


def _parallel_checksums(connect, db: str, tables: list[str]) -> dict[str, int | None]:
    import concurrent.futures as cf

    def one(t: str) -> int | None:
        conn = connect()
        try:
            v = _q(conn, f"CHECKSUM TABLE {mq(db)}.{mq(t)}")[0][1]
            return None if v is None else int(v)
        finally:
            conn.close()

    with cf.ThreadPoolExecutor(JOBS) as ex:  # tables come largest first
        return dict(zip(tables, ex.map(one, tables)))


def check_mysql(src_db: str, dst_db: str, *, mysql_url: str = DEFAULT_MYSQL_URL, tables: list[str] | None = None,
                cache_source: bool = True) -> CheckResult:
    my = mysql_connect(mysql_url)
    try:
        tables = tables or source_tables(my, src_db)
        connect = lambda: mysql_connect(mysql_url)  # noqa: E731
        src = mysql_counts_checksums(my, src_db, tables, cache=cache_source, connect=connect)
        dst = mysql_counts_checksums(my, dst_db, tables, connect=connect)
    finally:
        my.close()
    checks = []
    for t in tables:
        (sn, ss), (dn, ds) = src[t], dst[t]
        c = TableCheck(t, sn, dn if dn >= 0 else None, str(ss), str(ds))
        if dn < 0:
            c.problems.append("table missing")
        else:
            if sn != dn:
                c.problems.append(f"rows {sn} != {dn}")
            if ss != ds:
                c.problems.append(f"CHECKSUM TABLE {ss} != {ds}")
        checks.append(c)
    return CheckResult("mysql", dst_db, checks)


# ----------------------------------------------------------------------------- MySQL -> PG
def _md5_32_my(expr: str) -> str:
    return f"SUM(CAST(CONV(LEFT(MD5({expr}), 8), 16, 10) AS UNSIGNED))"


def _md5_32_pg(expr: str) -> str:
    return f"SUM(('x' || left(md5({expr}), 8))::bit(32)::bigint)"


def my_aggs(c: Col) -> list[tuple[str, str]]:
    """(label, MySQL expression) for one column; the source side of check_pg."""
    q = mq(c.name)
    k = c.kind
    if k == "bool":
        return [("count", f"COUNT({q})"), ("nonzero", f"SUM({q} <> 0)")]
    if k == "int":
        return [("count", f"COUNT({q})"), ("sum", f"SUM({q} + 0)" if c.dt == "bit" else f"SUM({q})")]
    if k == "float":
        return [("count", f"COUNT({q})"), ("fsum", f"SUM({q})")]
    if k in ("date", "datetime", "timestamp"):
        v = f"IF({q} < '0001-01-01' OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0, NULL, {q})"
        return [("count", f"COUNT({v})"), ("epoch", f"SUM(TO_SECONDS({v}) - {_EPOCH_TO_SECONDS})")]
    if k == "time":
        return [("count", f"COUNT({q})"), ("seconds", f"SUM(TIME_TO_SEC({q}))")]
    if k == "bin":
        return [("count", f"COUNT({q})"), ("bytes", f"SUM(LENGTH({q}))"), ("md5", _md5_32_my(q))]
    if k == "json":
        return [("count", f"COUNT({q})"), ("members", f"SUM(JSON_LENGTH({q}))")]
    u = f"CONVERT({q} USING utf8mb4)"
    return [("count", f"COUNT({q})"), ("chars", f"SUM(CHAR_LENGTH({q}))"), ("md5", _md5_32_my(u))]


_TEXTUAL = ("text", "character varying", "character")


def pg_agg(c: Col, label: str, pgcol: str, pgtype: str) -> str | None:
    """The PostgreSQL expression for one aggregate of my_aggs, or None when the target type
    cannot express it (then the aggregate is skipped, not failed)."""
    q = pq(pgcol)
    k = c.kind
    if label == "count":
        if k in ("date", "datetime", "timestamp") and pgtype in _TEXTUAL:
            return f"COUNT(NULLIF(NULLIF({q}, '0000-00-00'), '0000-00-00 00:00:00'))"
        return f"COUNT({q})"
    if k == "bool" or (k == "int" and pgtype == "boolean"):
        if pgtype == "boolean":
            return f"SUM({q}::int)"
        return f"SUM(({q} <> 0)::int)" if label == "nonzero" else f"SUM({q}::numeric)"
    if k == "int":
        if pgtype == "bit":
            return f"SUM({q}::bigint)"
        return f"SUM({q}::numeric)"
    if k == "float":
        return f"SUM({q}::float8)"
    if k in ("date", "datetime", "timestamp"):
        if pgtype in _TEXTUAL:
            return None
        return f"SUM(FLOOR(EXTRACT(EPOCH FROM {q})))"
    if k == "time":
        cast = "::interval" if pgtype in _TEXTUAL else ""
        return f"SUM(EXTRACT(EPOCH FROM {q}{cast})::bigint)"
    if k == "bin":
        if pgtype != "bytea":
            return None
        return f"SUM(octet_length({q}))" if label == "bytes" else _md5_32_pg(q)
    if k == "json":
        if pgtype not in ("jsonb", "json"):
            return None
        j = f"{q}::jsonb"
        return (f"SUM(CASE WHEN {q} IS NULL THEN NULL WHEN jsonb_typeof({j}) = 'object' "
                f"THEN (SELECT count(*) FROM jsonb_object_keys({j})) "
                f"WHEN jsonb_typeof({j}) = 'array' THEN jsonb_array_length({j}) ELSE 1 END)")
    text = f"array_to_string({q}, ',')" if pgtype == "ARRAY" else f"{q}::text"
    return f"SUM(char_length({text}))" if label == "chars" else _md5_32_pg(text)


def _same(a: Any, b: Any, label: str) -> bool:
    if a is None and b is None:
        return True
    if label == "fsum":
        if a is None or b is None:
            return False
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)
    if a is None or b is None:
        # SUM over no rows is NULL on both sides; COUNT is never NULL.
        return False
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except Exception:  # noqa: BLE001
        return str(a) == str(b)


_agg_cache: dict[tuple[str, str, str], tuple[list[Col], list[tuple[str, str]], list[Any]]] = {}

JOBS = 2  # parallel aggregate queries (one connection each); the box has 2 cores
SPLIT_ROWS = 250_000  # tables with more rows and a single integer primary key are aggregated in JOBS key ranges


def _pk_ranges(my, db: str, table: str) -> list[tuple[str, int, int] | None]:
    """Key ranges splitting a big single-integer-PK table into JOBS parts; [None] = whole table."""
    pk = _q(my, "SELECT s.column_name, c.data_type, t.table_rows FROM information_schema.statistics s "
                "JOIN information_schema.columns c ON c.table_schema = s.table_schema AND c.table_name = s.table_name "
                "AND c.column_name = s.column_name JOIN information_schema.tables t ON t.table_schema = s.table_schema "
                "AND t.table_name = s.table_name WHERE s.table_schema = %s AND s.table_name = %s "
                "AND s.index_name = 'PRIMARY'", (db, table))
    if len(pk) != 1 or pk[0][1] not in ("int", "bigint", "mediumint", "smallint") or int(pk[0][2] or 0) < SPLIT_ROWS:
        return [None]
    col = pk[0][0]
    lo, hi = _q(my, f"SELECT MIN({mq(col)}), MAX({mq(col)}) FROM {mq(db)}.{mq(table)}")[0]
    if lo is None:
        return [None]
    step = -(-(int(hi) - int(lo) + 1) // JOBS)
    return [(col, a, min(int(hi), a + step - 1)) for a in range(int(lo), int(hi) + 1, step)]


def _combine(label: str, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if label == "min":
        return min(a, b)
    if label == "max":
        return max(a, b)
    if label == "fsum":
        return float(a) + float(b)
    return Decimal(str(a)) + Decimal(str(b))


def _parallel_aggregates(connect, work: list[tuple[str, str, list[str]]]) -> dict[str, list[list[Any] | Exception]]:
    """Run (key, sql, labels) items on JOBS connections; results per key, one list per range."""
    import concurrent.futures as cf
    import threading

    local = threading.local()
    conns: list[Any] = []
    lock = threading.Lock()

    def run(sql: str) -> list[Any] | Exception:
        if not hasattr(local, "conn"):
            local.conn = connect()
            with lock:
                conns.append(local.conn)
        try:
            return list(_q(local.conn, sql)[0])
        except Exception as e:  # noqa: BLE001 - reported per table
            return e

    out: dict[str, list] = {}
    try:
        with cf.ThreadPoolExecutor(JOBS) as ex:
            futs = [(key, ex.submit(run, sql)) for key, sql, _ in work]
            for key, f in futs:
                out.setdefault(key, []).append(f.result())
    finally:
        for c in conns:
            c.close()
    return out


def _merge(parts: list[list[Any] | Exception], labels: list[str]) -> list[Any] | Exception:
    for p in parts:
        if isinstance(p, Exception):
            return p
    vals = list(parts[0])
    for p in parts[1:]:
        vals = [_combine(lab, a, b) for lab, a, b in zip(labels, vals, p)]
    return vals


def _where(rng: tuple[str, int, int] | None, col_sql: str | None = None) -> str:
    if rng is None:
        return ""
    return f" WHERE {col_sql or mq(rng[0])} BETWEEN {rng[1]} AND {rng[2]}"


def _source_aggregates(my, db: str, tables: list[str], *, cache: bool,
                       mysql_url: str = DEFAULT_MYSQL_URL) -> dict[str, tuple[list[Col], list[tuple[str, str]], list[Any], list]]:
    key = f"{my.host}:{my.port}"
    need = [t for t in tables if not (cache and (key, db, t) in _agg_cache)]
    cols = table_columns(my, db, need) if need else {}
    work, meta = [], {}
    for t in need:
        labels: list[tuple[str, str]] = [("*", "count")]
        exprs = ["COUNT(*)"]
        for c in cols[t]:
            for label, e in my_aggs(c):
                labels.append((c.name, label))
                exprs.append(e)
        ranges = _pk_ranges(my, db, t)
        meta[t] = (labels, ranges)
        for rng in ranges:
            work.append((t, f"SELECT {', '.join(exprs)} FROM {mq(db)}.{mq(t)}{_where(rng)}", [lb for _, lb in labels]))
    got = _parallel_aggregates(lambda: mysql_connect(mysql_url), work)
    for t in need:
        labels, ranges = meta[t]
        vals = _merge(got[t], [lb for _, lb in labels])
        if isinstance(vals, Exception):
            raise vals
        _agg_cache[(key, db, t)] = (cols[t], labels, vals, ranges)
    return {t: _agg_cache[(key, db, t)] for t in tables}


def _digest(values: list[Any]) -> str:
    norm = []
    for v in values:
        if isinstance(v, float):
            norm.append(f"{v:.6e}")
        elif v is None:
            norm.append("-")
        else:
            try:
                norm.append(str(Decimal(str(v)).normalize()))
            except Exception:  # noqa: BLE001
                norm.append(str(v))
    return f"{zlib.crc32('|'.join(norm).encode()):08x}"


def check_pg(src_db: str, pg_db: str, schema: str, *, mysql_url: str = DEFAULT_MYSQL_URL,
             pg_url: str = DEFAULT_PG_URL, tables: list[str] | None = None, cache_source: bool = True) -> CheckResult:
    my = mysql_connect(mysql_url)
    try:
        tables = tables or source_tables(my, src_db)
        src = _source_aggregates(my, src_db, tables, cache=cache_source, mysql_url=mysql_url)
    finally:
        my.close()
    pg = pg_connect(pg_url, pg_db)
    checks: dict[str, TableCheck] = {}
    plans: dict[str, tuple[list[int], list[str]]] = {}
    work = []
    try:
        pgt = {norm_name(n): n for (n,) in _q(pg, "SELECT table_name FROM information_schema.tables "
                                                  "WHERE table_schema = %s", (schema,))}
        pgcols: dict[str, dict[str, tuple[str, str]]] = {}
        for t, c, dt in _q(pg, "SELECT table_name, column_name, data_type FROM information_schema.columns "
                               "WHERE table_schema = %s", (schema,)):
            pgcols.setdefault(t, {})[norm_name(c)] = (c, dt)
    finally:
        pg.close()
    for t in tables:
        cols, labels, svals, ranges = src[t]
        check = checks[t] = TableCheck(t, int(svals[0]), None)
        name = pgt.get(norm_name(t))
        if name is None:
            check.problems.append("table missing")
            continue
        pc = pgcols.get(name, {})
        byname = {c.name: c for c in cols}
        exprs, used = [], []
        for i, (cname, label) in enumerate(labels):
            if cname == "*":
                exprs.append("COUNT(*)")
                used.append(i)
                continue
            hit = pc.get(norm_name(cname))
            if hit is None:
                if label == "count":
                    check.problems.append(f"column {cname} missing")
                continue
            e = pg_agg(byname[cname], label, hit[0], hit[1])
            if e is not None:
                exprs.append(e)
                used.append(i)
        plans[t] = (used, [labels[i][1] for i in used])
        for rng in ranges:
            col = pq(pc[norm_name(rng[0])][0]) if rng and norm_name(rng[0]) in pc else None
            if rng and col is None:
                rng = None
            work.append((t, f"SELECT {', '.join(exprs)} FROM {pq(schema)}.{pq(name)}{_where(rng, col)}", []))
            if rng is None:
                break
    got = _parallel_aggregates(lambda: pg_connect(pg_url, pg_db), work)
    for t in tables:
        check = checks[t]
        if t not in plans:
            continue
        used, labs = plans[t]
        vals = _merge(got[t], labs)
        if isinstance(vals, Exception):
            check.problems.append(f"query failed: {str(vals).strip().splitlines()[0]}")
            continue
        _, labels, svals, _ = src[t]
        check.dst_rows = int(vals[0])
        check.compared = len(used)
        want = [svals[i] for i in used]
        for i, a, b in zip(used, want, vals):
            cname, label = labels[i]
            if not _same(a, b, label):
                what = "rows" if cname == "*" else f"{cname}.{label}"
                check.problems.append(f"{what}: src={a} dst={b}")
        check.src_sum = _digest(want)
        check.dst_sum = check.src_sum if check.ok else _digest(vals)
    return CheckResult("pg", f"{pg_db}.{schema}", [checks[t] for t in tables])


def clear_cache() -> None:
    """Forget cached source checksums and aggregates (after the source was regenerated)."""
    _checksum_cache.clear()
    _agg_cache.clear()


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=["mysql", "pg"])
    ap.add_argument("--src", default="bench_src", help="MySQL source database")
    ap.add_argument("--dst", required=True, help="MySQL copy (mysql) or PostgreSQL database (pg)")
    ap.add_argument("--schema", default="public", help="pg: schema holding the copy")
    ap.add_argument("--tables", help="comma list (default: every base table of --src)")
    ap.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL)
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = ap.parse_args(argv)
    tables = [t for t in (args.tables or "").split(",") if t] or None
    if args.target == "mysql":
        res = check_mysql(args.src, args.dst, mysql_url=args.mysql_url, tables=tables)
    else:
        res = check_pg(args.src, args.dst, args.schema, mysql_url=args.mysql_url, pg_url=args.pg_url, tables=tables)
    for t in res.tables:
        print(t.describe())
    print(res.summary())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
