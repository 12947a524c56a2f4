#!/usr/bin/env python3
"""The anchors our pipeline is measured against: what a user could do with stock tools.

Ported from the team's earlier peer harness (shared bench ``mypg.py`` / ``run_peers.sh``) so the
project does not depend on it at run time. Each subcommand is one measured run; ``bench/run.py``
runs it as a child process and takes its wall time and peak RSS.

  native    MySQL -> PostgreSQL "physical limit": per primary-key-range chunk (about 250k rows),
            ``mariadb --quick --batch --raw`` runs a SELECT that already escapes every value for
            COPY text format, piped into ``psql \\copy``; 2 chunks at a time; tables created
            without keys, then the primary key and the secondary indexes are built. No Python in
            the data path.
  pgloader  pgloader with its defaults plus the one CAST rule that lets ``date NOT NULL DEFAULT
            '0000-00-00'`` columns load (without it pgloader silently drops those tables and exits 0).
  dump      ``mariadb-dump --quick --single-transaction SRC | mariadb DST`` (DST recreated).
  same      same-server ``INSERT INTO dst.t SELECT * FROM src.t`` per primary-key-range chunk,
            2 at a time, into PK-only copies (``CREATE TABLE LIKE`` then secondary indexes
            dropped), secondary indexes rebuilt after the load (shared harness: mysql-same --post-indexes).

  python bench/anchors.py native   --src bench_repl --dst bench_dst --schema native
  python bench/anchors.py pgloader --src bench_repl --dst bench_dst --schema pgloader
  python bench/anchors.py dump     --src bench_src  --dst bench_dump
  python bench/anchors.py same     --src bench_src  --dst bench_same

Only the stdlib and the mariadb / mariadb-dump / psql / pgloader command line tools are used.
Connection details come from ``--mysql-url`` / ``--pg-url`` (SQLAlchemy-style server URLs);
passwords are handed to the tools through MYSQL_PWD / PGPASSWORD, never on a command line.
Tables whose name starts with ``_etl`` (the pipeline's checkpoint table in a replica) are skipped.
Databases written (``--dst``) must be named ``bench_*``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
import time
from urllib.parse import unquote, urlsplit

DEFAULT_MYSQL_URL = os.environ.get("BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")

MY_SESSION = "SET SESSION sql_mode='', time_zone='+00:00', net_write_timeout=3600, net_read_timeout=3600"

# pgloader: defaults + the CAST rule for `date NOT NULL DEFAULT '0000-00-00'` (shared bench
# pgloader/fixed.load). Tables are matched by the source's list; the schema pgloader creates
# (named after the source database) is renamed to --schema.
PGLOADER_TEMPLATE = """-- written by bench/anchors.py
LOAD DATABASE
  FROM {src_url}
  INTO {dst_url}
CAST type date to date drop not null drop default using zero-dates-to-null
{including}
ALTER SCHEMA '{src}' RENAME TO '{schema}';
"""


class Server:
    """host/port/user/password of a server URL (the database part is ignored)."""

    def __init__(self, url: str, default_port: int, default_user: str):
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or default_port
        self.user = unquote(u.username) if u.username else default_user
        self.password = unquote(u.password) if u.password is not None else ""


class Ctx:
    def __init__(self, mysql_url: str, pg_url: str, jobs: int = 2, chunk_rows: int = 250_000):
        self.my = Server(mysql_url, 3306, "root")
        self.pg = Server(pg_url, 5432, "postgres")
        self.jobs = jobs
        self.chunk_rows = chunk_rows

    # ------------------------------------------------------------------ clients
    def my_cli(self, db: str | None = None, raw: bool = True) -> list[str]:
        # utf8mb4: the client's default (utf8mb3 here) turns 4-byte characters such as emoji into '?'
        cmd = ["mariadb", "-h", self.my.host, "-P", str(self.my.port), "-u", self.my.user,
               "--default-character-set=utf8mb4", "--batch", "-N", "--quick"]
        if raw:
            cmd.append("--raw")
        if db:
            cmd.append(db)
        return cmd

    def my_env(self) -> dict:
        env = dict(os.environ)
        if self.my.password:
            env["MYSQL_PWD"] = self.my.password
        return env

    def pg_env(self) -> dict:
        env = dict(os.environ, PGOPTIONS="-c TimeZone=UTC")
        if self.pg.password:
            env["PGPASSWORD"] = self.pg.password
        return env

    def my_query(self, sql: str, db: str | None = None) -> list[list[str]]:
        p = subprocess.run(self.my_cli(db, raw=False), input=MY_SESSION + ";\n" + sql, text=True,
                           capture_output=True, env=self.my_env())
        if p.returncode:
            raise RuntimeError(p.stderr.strip())
        return [line.split("\t") for line in p.stdout.splitlines()]

    def psql_cmd(self, dbname: str) -> list[str]:
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.pg.host, "-p", str(self.pg.port),
                "-U", self.pg.user, "-d", dbname]

    def psql(self, dbname: str, sql: str) -> list[list[str]]:
        p = subprocess.run(self.psql_cmd(dbname) + ["-At", "-F", "\t"], input=sql, text=True, capture_output=True,
                           env=self.pg_env())
        if p.returncode:
            raise RuntimeError(p.stderr.strip())
        return [line.split("\t") for line in p.stdout.splitlines()]


def _check_bench_db(name: str) -> None:
    if not name.startswith("bench_"):
        raise SystemExit(f"refusing to write database {name!r}: the benchmark only writes bench_* databases")


# ----------------------------------------------------------------------------- metadata
class Col:
    def __init__(self, name: str, data_type: str, column_type: str, nullable: str):
        self.name, self.dt, self.ct, self.nullable = name, data_type, column_type.lower(), nullable == "YES"
        self.unsigned = "unsigned" in self.ct

    @property
    def is_bool(self) -> bool:
        return self.dt == "tinyint" and self.ct.startswith("tinyint(1)")

    @property
    def kind(self) -> str:
        dt = self.dt
        if self.is_bool:
            return "bool"
        if dt in ("tinyint", "smallint", "mediumint", "int", "bigint", "year", "bit"):
            return "int"
        if dt == "decimal":
            return "dec"
        if dt in ("float", "double"):
            return "float"
        if dt in ("date", "datetime", "timestamp", "time"):
            return dt
        if dt in ("blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary"):
            return "bin"
        if dt == "json":
            return "json"
        return "str"  # char, varchar, *text, enum, set

    def pg_type(self) -> str:
        dt, ct = self.dt, self.ct
        if self.is_bool:
            return "boolean"
        if dt == "tinyint" or (dt == "smallint" and not self.unsigned) or dt == "year":
            return "smallint"
        if dt in ("smallint", "mediumint") or (dt == "int" and not self.unsigned):
            return "integer"
        if dt == "int" or (dt == "bigint" and not self.unsigned):
            return "bigint"
        if dt == "bigint":
            return "numeric(20)"
        if dt == "decimal":
            return "numeric" + ct[ct.index("("):ct.index(")") + 1] if "(" in ct else "numeric"
        if dt == "bit":
            return "bigint"
        if dt == "float":
            return "real"
        if dt == "double":
            return "double precision"
        if dt == "date":
            return "date"
        if dt == "datetime":
            return "timestamp"
        if dt == "timestamp":
            return "timestamptz"
        if dt == "time":
            return "time"
        if dt in ("char", "varchar"):
            return "varchar" + ct[ct.index("("):ct.index(")") + 1]
        if dt == "json":
            return "jsonb"
        if self.kind == "bin":
            return "bytea"
        return "text"

    def my_copy_expr(self) -> str:
        """Server-side expression giving the COPY text field (read with mariadb --raw)."""
        c = f"`{self.name}`"
        k = self.kind
        if self.dt == "bit" and not self.is_bool:
            # --raw would print BIT's bytes (0x00 / 0x01) as they are; its number is what PostgreSQL takes
            return f"IFNULL(CAST({c} + 0 AS CHAR), '\\N')"
        if k == "bool":
            return f"IF({c} IS NULL, '\\\\N', IF({c} <> 0, 't', 'f'))"
        if k in ("date", "datetime", "timestamp"):
            val = f"CONCAT({c}, '+00')" if k == "timestamp" else c
            return f"IF({c} IS NULL OR MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0, '\\\\N', {val})"
        if k == "bin":
            return f"IFNULL(CONCAT('\\\\\\\\x', HEX({c})), '\\\\N')"
        if k in ("str", "json"):
            if self.dt in ("enum", "set") and not any(ch in self.ct for ch in "\\\t\n\r"):
                return f"IFNULL({c}, '\\\\N')"
            return (f"IFNULL(REPLACE(REPLACE(REPLACE(REPLACE({c}, '\\\\', '\\\\\\\\'), '\\t', '\\\\t'), "
                    f"'\\n', '\\\\n'), '\\r', '\\\\r'), '\\\\N')")
        return f"IFNULL({c}, '\\\\N')"


def table_meta(ctx: Ctx, db: str) -> dict[str, dict]:
    """{table: dict(cols, pk, rows, data_bytes)}, largest first; `_etl*` tables left out."""
    rows = ctx.my_query(f"""SELECT table_name, column_name, data_type, column_type, is_nullable
        FROM information_schema.columns WHERE table_schema = '{db}' ORDER BY table_name, ordinal_position""")
    # MariaDB's JSON is LONGTEXT + CHECK (json_valid(col)); recover it from the check constraint
    js = {(t, cc.split("`")[1]) for t, cc in ctx.my_query(f"""SELECT table_name, check_clause
        FROM information_schema.check_constraints WHERE constraint_schema = '{db}'
        AND check_clause LIKE 'json_valid(%'""")}
    cols: dict[str, list[Col]] = {}
    for t, c, dt, ct, nl in rows:
        if (t, c) in js:
            dt = ct = "json"
        cols.setdefault(t, []).append(Col(c, dt, ct, nl))
    pks: dict[str, list[str]] = {}
    for t, c in ctx.my_query(f"""SELECT table_name, column_name FROM information_schema.key_column_usage
            WHERE table_schema='{db}' AND constraint_name='PRIMARY' ORDER BY table_name, ordinal_position"""):
        pks.setdefault(t, []).append(c)
    sizes = {t: (int(r), int(d)) for t, r, d in ctx.my_query(f"""SELECT table_name, table_rows, data_length
            FROM information_schema.tables WHERE table_schema='{db}' AND table_type='BASE TABLE'""")}
    meta = {t: dict(cols=cols[t], pk=pks.get(t, []), rows=sizes[t][0], data_bytes=sizes[t][1])
            for t in cols if t in sizes and not t.startswith("_etl")}
    return dict(sorted(meta.items(), key=lambda kv: -kv[1]["data_bytes"]))


def indexes(ctx: Ctx, db: str, tables: set[str]) -> list[tuple[str, str, bool, list[str]]]:
    rows = ctx.my_query(f"""SELECT table_name, index_name, non_unique, GROUP_CONCAT(column_name ORDER BY seq_in_index)
        FROM information_schema.statistics WHERE table_schema='{db}'
        GROUP BY table_name, index_name, non_unique ORDER BY table_name, index_name""")
    return [(t, i, nu == "0", cs.split(",")) for t, i, nu, cs in rows if t in tables]


def chunk_ranges(ctx: Ctx, db: str, t: str, meta: dict, chunk_rows: int) -> list[str | None]:
    """PK-range WHERE clauses for single-integer-PK tables bigger than chunk_rows; [None] otherwise."""
    m = meta[t]
    if len(m["pk"]) != 1 or m["rows"] <= chunk_rows:
        return [None]
    pk = m["pk"][0]
    lo, hi = (int(x) for x in ctx.my_query(f"SELECT MIN(`{pk}`), MAX(`{pk}`) FROM `{t}`", db)[0])
    n = -(-m["rows"] // chunk_rows)
    step = -(-(hi - lo + 1) // n)
    return [f"`{pk}` BETWEEN {a} AND {min(hi, a + step - 1)}" for a in range(lo, hi + 1, step)]


def work_items(ctx: Ctx, db: str, meta: dict) -> list[tuple[str, str | None]]:
    return [(t, w) for t in meta for w in chunk_ranges(ctx, db, t, meta, ctx.chunk_rows)]


def run_parallel(fn, items, jobs: int) -> None:
    with cf.ThreadPoolExecutor(jobs) as ex:
        for f in [ex.submit(fn, *it) for it in items]:
            f.result()


# ----------------------------------------------------------------------------- native pipe
def pg_ddl(ctx: Ctx, db: str, schema: str, meta: dict, *, tables: bool, keys: bool) -> list[str]:
    out = []
    if tables:
        out.append(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; CREATE SCHEMA "{schema}";')
        for t, m in meta.items():
            cols = []
            for c in m["cols"]:
                nn = "" if (c.nullable or c.kind in ("date", "datetime", "timestamp")) else " NOT NULL"
                cols.append(f'  "{c.name.lower()}" {c.pg_type()}{nn}')
            out.append(f'CREATE TABLE "{schema}"."{t}" (\n' + ",\n".join(cols) + "\n);")
    if keys:
        for t, i, uniq, cs in indexes(ctx, db, set(meta)):
            collist = ", ".join(f'"{c.lower()}"' for c in cs)
            if i == "PRIMARY":
                out.append(f'ALTER TABLE "{schema}"."{t}" ADD PRIMARY KEY ({collist});')
            else:
                out.append(f'CREATE {"UNIQUE " if uniq else ""}INDEX "{t}_{i}" ON "{schema}"."{t}" ({collist});')
    return out


def native_one(ctx: Ctx, args, t: str, where: str | None, meta: dict) -> float:
    sel = ", ".join(c.my_copy_expr() for c in meta[t]["cols"])
    sql = f"{MY_SESSION}; SELECT {sel} FROM `{t}`" + (f" WHERE {where}" if where else "")
    cols = ", ".join(f'"{c.name.lower()}"' for c in meta[t]["cols"])
    copy = f'\\copy "{args.schema}"."{t}" ({cols}) FROM STDIN'
    t0 = time.time()
    my = subprocess.Popen(ctx.my_cli(args.src) + ["-e", sql], stdout=subprocess.PIPE, env=ctx.my_env())
    pg = subprocess.run(ctx.psql_cmd(args.dst) + ["-c", copy], stdin=my.stdout, capture_output=True, text=True,
                        env=ctx.pg_env())
    my.stdout.close()
    rc = my.wait()
    if rc or pg.returncode:
        raise RuntimeError(f"{t} [{where}]: mariadb rc={rc} psql rc={pg.returncode}: {pg.stderr}")
    return time.time() - t0


def cmd_native(ctx: Ctx, args) -> None:
    t0 = time.time()
    meta = table_meta(ctx, args.src)
    ctx.psql(args.dst, "\n".join(pg_ddl(ctx, args.src, args.schema, meta, tables=True, keys=False)))
    items = work_items(ctx, args.src, meta)
    run_parallel(lambda t, w: native_one(ctx, args, t, w, meta), items, ctx.jobs)
    t1 = time.time()
    stmts = pg_ddl(ctx, args.src, args.schema, meta, tables=False, keys=True)
    # PKs first (one ALTER per table), secondary indexes in parallel afterwards
    pk = [(s,) for s in stmts if "PRIMARY KEY" in s]
    rest = [(s,) for s in stmts if "PRIMARY KEY" not in s]
    run = lambda s: ctx.psql(args.dst, "SET maintenance_work_mem='256MB';" + s)  # noqa: E731
    run_parallel(run, pk, ctx.jobs)
    run_parallel(run, rest, ctx.jobs)
    print(f"native: {len(meta)} tables, {len(items)} chunks, load {t1 - t0:.1f}s, "
          f"PK+indexes {time.time() - t1:.1f}s ({len(pk)} PKs, {len(rest)} indexes)", file=sys.stderr)


# ----------------------------------------------------------------------------- pgloader
def pgloader_file(ctx: Ctx, args) -> str:
    meta = table_meta(ctx, args.src)
    auth_my = ctx.my.user + (f":{ctx.my.password}" if ctx.my.password else "")
    auth_pg = ctx.pg.user + (f":{ctx.pg.password}" if ctx.pg.password else "")
    names = ", ".join(f"'{t}'" for t in meta)
    text = PGLOADER_TEMPLATE.format(
        src_url=f"mysql://{auth_my}@{ctx.my.host}:{ctx.my.port}/{args.src}",
        dst_url=f"postgresql://{auth_pg}@{ctx.pg.host}:{ctx.pg.port}/{args.dst}",
        including=f"INCLUDING ONLY TABLE NAMES MATCHING {names}",
        src=args.src, schema=args.schema)
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, f"pgloader_{args.src}_{args.schema}.load")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold passwords
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def cmd_pgloader(ctx: Ctx, args) -> None:
    if not shutil.which("pgloader"):
        raise SystemExit("pgloader is not installed (apt-get install -y pgloader)")
    path = pgloader_file(ctx, args)
    ctx.psql(args.dst, f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE; DROP SCHEMA IF EXISTS "{args.src}" CASCADE;')
    # pgloader exits 0 even when it rejected whole tables: bench/verify.py is what checks the data.
    p = subprocess.run(["pgloader", path], env=ctx.pg_env(), cwd=args.work)
    if p.returncode:
        raise SystemExit(f"pgloader exited {p.returncode}")


# ----------------------------------------------------------------------------- MySQL -> MySQL
def secondary_indexes(ctx: Ctx, db: str, tables: set[str]) -> dict[str, list[tuple[str, bool, list[str]]]]:
    out: dict[str, list] = {}
    for t, i, uniq, cs in indexes(ctx, db, tables):
        if i != "PRIMARY":
            out.setdefault(t, []).append((i, uniq, cs))
    return out


def cmd_same(ctx: Ctx, args) -> None:
    _check_bench_db(args.dst)
    meta = table_meta(ctx, args.src)
    sec = secondary_indexes(ctx, args.src, set(meta))
    stmts = [f"DROP DATABASE IF EXISTS `{args.dst}`", f"CREATE DATABASE `{args.dst}` CHARACTER SET utf8mb4"]
    stmts += [f"CREATE TABLE `{args.dst}`.`{t}` LIKE `{args.src}`.`{t}`" for t in meta]
    # load into PK-only tables, build the secondary indexes afterwards (one sorted build each)
    for t, ix in sec.items():
        stmts.append(f"ALTER TABLE `{args.dst}`.`{t}` " + ", ".join(f"DROP INDEX `{i}`" for i, _, _ in ix))
    ctx.my_query(";\n".join(stmts) + ";")
    items = work_items(ctx, args.src, meta)
    t0 = time.time()

    def one(t: str, w: str | None) -> None:
        ctx.my_query(f"SET foreign_key_checks=0; INSERT INTO `{args.dst}`.`{t}` SELECT * FROM `{args.src}`.`{t}`"
                     + (f" WHERE {w}" if w else "") + ";")
    run_parallel(one, items, ctx.jobs)
    t1 = time.time()
    alters = [(f"ALTER TABLE `{args.dst}`.`{t}` " + ", ".join(
        f"ADD {'UNIQUE ' if u else ''}INDEX `{i}` (" + ", ".join(f"`{c}`" for c in cs) + ")" for i, u, cs in ix),)
        for t, ix in sec.items()]
    run_parallel(lambda a: ctx.my_query(a + ";"), alters, ctx.jobs)
    print(f"same: {len(meta)} tables, {len(items)} chunks, load {t1 - t0:.1f}s, indexes {time.time() - t1:.1f}s",
          file=sys.stderr)


def cmd_dump(ctx: Ctx, args) -> None:
    _check_bench_db(args.dst)
    ctx.my_query(f"DROP DATABASE IF EXISTS `{args.dst}`; CREATE DATABASE `{args.dst}` CHARACTER SET utf8mb4;")
    base = ["-h", ctx.my.host, "-P", str(ctx.my.port), "-u", ctx.my.user, "--default-character-set=utf8mb4"]
    dump = subprocess.Popen(["mariadb-dump", *base, "--quick", "--single-transaction", args.src],
                            stdout=subprocess.PIPE, env=ctx.my_env())
    load = subprocess.run(["mariadb", *base, args.dst], stdin=dump.stdout, env=ctx.my_env(),
                          capture_output=True, text=True)
    dump.stdout.close()
    rc = dump.wait()
    if rc or load.returncode:
        raise SystemExit(f"mariadb-dump rc={rc}, mariadb rc={load.returncode}: {load.stderr.strip()[:500]}")


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["native", "pgloader", "dump", "same", "pgloader-file"])
    ap.add_argument("--src", default="bench_repl", help="MySQL database read")
    ap.add_argument("--dst", default="bench_dst", help="PostgreSQL database (native, pgloader) or MySQL database (dump, same)")
    ap.add_argument("--schema", default="native", help="PostgreSQL schema (dropped and recreated)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--chunk-rows", type=int, default=250_000)
    ap.add_argument("--work", default="/tmp/bench-etl", help="where the pgloader command file is written")
    ap.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL)
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = ap.parse_args(argv)
    ctx = Ctx(args.mysql_url, args.pg_url, args.jobs, args.chunk_rows)
    if args.cmd == "native":
        cmd_native(ctx, args)
    elif args.cmd == "pgloader":
        cmd_pgloader(ctx, args)
    elif args.cmd == "pgloader-file":
        print(pgloader_file(ctx, args))
    elif args.cmd == "dump":
        cmd_dump(ctx, args)
    elif args.cmd == "same":
        cmd_same(ctx, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
