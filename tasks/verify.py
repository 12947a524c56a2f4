"""Load verification: after a table is loaded, the copies must agree.

Row counts of the replica and the analytics table are compared exactly (both are ours and quiet
once the table's load has finished). The source can change while we read it, so it is compared
only when the caller asks (`etl verify` in a quiet window).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tasks.connections import Engines
from tasks.identifiers import execute, mysql_qualified, pg_qualified, pg_table_name
from tasks.type_mapping import INTEGER_TYPES


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


# --- etl verify: counts and per-key-range checksums across the three databases ------------------



@dataclass
class RangeDiff:
    low: object
    high: object
    source: tuple[int, int]
    replica: tuple[int, int]
    analytics: tuple[int, int]
    keys: list = None  # keys whose key/change-column hash differs somewhere (drilled into)


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


def _my_expr(col, q: str) -> str:
    # Format form (tasks/identifiers.py): the DATE_FORMAT patterns spell `%` as `%%`.
    t = col.data_type
    if t in ("datetime", "timestamp"):
        return (f"IF({q} IS NULL OR {q} < '0001-01-01' OR MONTH({q}) = 0, '\\\\N', "
                f"DATE_FORMAT({q}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f'))")
    if t == "date":
        return f"IF({q} IS NULL OR {q} < '0001-01-01' OR MONTH({q}) = 0, '\\\\N', DATE_FORMAT({q}, '%%Y-%%m-%%d'))"
    return f"IFNULL(CAST({q} AS CHAR), '\\\\N')"


def _pg_expr(col, q: str) -> str:
    t = col.data_type
    if t == "timestamp":
        return f"COALESCE(to_char({q} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '\\N')"
    if t == "datetime":
        return f"COALESCE(to_char({q}, 'YYYY-MM-DD HH24:MI:SS.US'), '\\N')"
    if t == "date":
        return f"COALESCE(to_char({q}, 'YYYY-MM-DD'), '\\N')"
    return f"COALESCE({q}::text, '\\N')"


def verify_table(engines: Engines, table, *, source_db: str, replica_db: str, pg_schema: str, column_case: str,
                 page: int = 100_000, drill_limit: int = 20) -> VerifyResult:
    """Compare source, replica and analytics: counts, then checksums of key and change columns per key range.

    Ranges are cut on the replica's integer key; for other keys the whole table is one range (MySQL
    and PostgreSQL order strings differently, so a range cut on one side is not the same set on the
    other). Only ranges whose checksums differ are drilled into, key by key.
    """
    from tasks.identifiers import mysql_ident, pg_column_name, pg_ident
    from tasks.mysql_schema import choose_key, read_table_schema, unique_keys

    with engines.replica.connect() as rc:
        schema = read_table_schema(rc, replica_db, table.name)
        key = choose_key(schema, table.primary_key, unique_keys(rc, replica_db, table.name))
    cols = [schema.column(c) for c in (*key, *[c for c in table.incremental_columns if c not in key])]
    # A table without a key or change column is checked by its row count alone.
    my_row = "MD5(CONCAT_WS('|', " + ", ".join(
        [_my_expr(c, mysql_ident(c.name)) for c in cols] or ["''"]) + "))"
    pg_row = "md5(concat_ws('|', " + ", ".join(
        [_pg_expr(c, pg_ident(pg_column_name(c.name, column_case))) for c in cols] or ["''"]) + "))"

    def my_agg(t: str, w: str) -> str:
        return f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT({my_row}, 8), 16, 10) AS UNSIGNED)), 0) FROM {t} WHERE {w}"

    def pg_agg(t: str, w: str) -> str:
        return f"SELECT count(*), COALESCE(sum(('x' || left({pg_row}, 8))::bit(32)::bigint), 0) FROM {t} WHERE {w}"

    src_t, rep_t = mysql_qualified(source_db, table.name), mysql_qualified(replica_db, table.name)
    pg_t = pg_qualified(pg_schema, pg_table_name(table.name))
    ranged = len(key) == 1 and schema.column(key[0]).data_type in INTEGER_TYPES
    bounds: list = [None]
    with engines.source.connect() as sc, engines.replica.connect() as rc, engines.analytics.connect() as pc:
        scur = sc.connection.driver_connection.cursor()
        rcur = rc.connection.driver_connection.cursor()
        pcur = pc.connection.driver_connection.cursor()
        if ranged:
            k = mysql_ident(key[0])
            low = None
            while True:
                rcur.execute(f"SELECT {k} FROM {rep_t} WHERE %s IS NULL OR {k} > %s ORDER BY {k} LIMIT 1 OFFSET {page - 1}",
                             (low, low))
                row = rcur.fetchone()
                if not row:
                    break
                low = row[0]
                bounds.append(low)
        bounds.append(None)
        differing = []
        totals = [0, 0, 0]
        for lo, hi in zip(bounds, bounds[1:]):
            if ranged:
                kq, kp = mysql_ident(key[0]), pg_ident(pg_column_name(key[0], column_case))
                conds_my = [f"{kq} > {int(lo)}"] if lo is not None else []
                conds_pg = [f"{kp} > {int(lo)}"] if lo is not None else []
                if hi is not None:
                    conds_my.append(f"{kq} <= {int(hi)}")
                    conds_pg.append(f"{kp} <= {int(hi)}")
                w_my, w_pg = " AND ".join(conds_my) or "1=1", " AND ".join(conds_pg) or "true"
            else:
                w_my, w_pg = "1=1", "true"
            s = tuple(int(x) for x in execute(scur, my_agg(src_t, w_my)).fetchone())
            r = tuple(int(x) for x in execute(rcur, my_agg(rep_t, w_my)).fetchone())
            a = tuple(int(x) for x in execute(pcur, pg_agg(pg_t, w_pg)).fetchone())
            for i, v in enumerate((s, r, a)):
                totals[i] += v[0]
            if not (s == r == a):
                d = RangeDiff(lo, hi, s, r, a)
                d.keys = _drill(scur, rcur, pcur, my_row, pg_row, key, column_case, src_t, rep_t, pg_t, w_my, w_pg,
                                drill_limit) if key else []
                differing.append(d)
        sc.rollback()
        rc.rollback()
        pc.rollback()
    return VerifyResult(table.name, totals[0], totals[1], totals[2], len(bounds) - 1, differing)


def _drill(scur, rcur, pcur, my_row, pg_row, key, column_case, src_t, rep_t, pg_t, w_my, w_pg, limit):  # noqa: ANN001, ANN202
    from tasks.identifiers import mysql_ident, pg_column_name, pg_ident

    kmy = ", ".join(mysql_ident(k) for k in key)
    kpg = ", ".join(pg_ident(pg_column_name(k, column_case)) for k in key)
    execute(scur, f"SELECT {kmy}, {my_row} FROM {src_t} WHERE {w_my}")
    s = {tuple(str(v) for v in r[:-1]): r[-1] for r in scur.fetchall()}
    execute(rcur, f"SELECT {kmy}, {my_row} FROM {rep_t} WHERE {w_my}")
    r = {tuple(str(v) for v in r[:-1]): r[-1] for r in rcur.fetchall()}
    execute(pcur, f"SELECT {kpg}, {pg_row} FROM {pg_t} WHERE {w_pg}")
    a = {tuple(str(v) for v in row[:-1]): row[-1] for row in pcur.fetchall()}
    bad = sorted(k for k in set(s) | set(r) | set(a) if not (s.get(k) == r.get(k) == a.get(k)))
    return bad[:limit]


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
