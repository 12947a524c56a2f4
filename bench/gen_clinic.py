#!/usr/bin/env python3
"""A clinic-shaped source database: 450 tables in the shape of a real dental clinic's.

    python bench/gen_clinic.py --url mysql+pymysql://root@127.0.0.1:3306/bench_clinic_src [--scale 1]
    python bench/gen_clinic.py --url ... --mutate [--pct 1] [--tables 70] [--round 0]

A real clinic is not ten big tables. The system we replace had 446 tables: 381 tiny, 43 small,
18 medium and 4 large, two thirds of them without a change column. At scale 1 this generator
writes (sizes skewed like a real clinic, about 1.7 M rows):

    class    tables   rows per table            columns
    large         4   90k - 250k                25 - 45
    medium       18   20k - 80k                 20 - 60
    small        43   1k - 20k                  10 - 80
    tiny        385   0 - 400 (some empty)      10 - 40

About a third of the tables have a change column the server maintains (`SecDateTEdit TIMESTAMP NOT
NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP`), a third one the application writes
(`DateTStamp DATETIME NULL`: not trustworthy), a third none. Keys: mostly an auto-increment BIGINT,
some composite (INT, INT), some VARCHAR, a few tables without a primary key. Every type family
appears (integers signed and unsigned, DECIMAL, FLOAT, DOUBLE, BIT, YEAR, DATE, DATETIME(n),
TIMESTAMP, TIME, CHAR, VARCHAR, TEXT, ENUM, SET, JSON, VARBINARY, BLOB), with NULLs. Larger tables
get secondary indexes. Everything is derived from the row number and `--seed`, so two runs with
the same arguments write the same database.

`--mutate` is the nightly churn: in `--tables` tables (default 70, larger ones first, a few tiny
ones too) it updates `--pct` percent of the rows (a non-key column; the server bumps SecDateTEdit
where there is one), inserts half as many and deletes a tenth as many. It prints what it did as
one JSON line.

Only the database named in --url is dropped and recreated, and it must be named bench_*.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_dental import _connect, _exec, parse_url  # noqa: E402

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/bench_clinic_src"
SESSION = "SET SESSION sql_mode='NO_ENGINE_SUBSTITUTION', time_zone='+00:00', foreign_key_checks=0"

# (class, tables, rows low..high at scale 1, columns low..high)
SHAPE = [
    ("large", 4, (90_000, 250_000), (25, 45)),
    ("medium", 18, (20_000, 80_000), (20, 60)),
    ("small", 43, (1_000, 20_000), (10, 80)),
    ("tiny", 385, (0, 400), (10, 40)),
]

# Column families: (name, DDL, value expression over `{h}` = a 32-bit hash of the row, nullable share)
FAMILIES: list[tuple[str, str, str]] = [
    ("int", "INT NOT NULL", "({h} % 200000)"),
    ("intu", "INT UNSIGNED NULL", "({h} % 4000000000)"),
    ("big", "BIGINT NULL", "(CAST({h} AS SIGNED) * 4093 - 2000000000000)"),
    ("tiny", "TINYINT NOT NULL", "({h} % 2)"),
    ("small", "SMALLINT UNSIGNED NOT NULL", "({h} % 65535)"),
    ("dec", "DECIMAL(12,2) NOT NULL", "(({h} % 10000000) / 100)"),
    ("dbl", "DOUBLE NULL", "({h} / 7.0)"),
    ("flt", "FLOAT NOT NULL", "(({h} % 100000) / 8.0)"),
    ("bit", "BIT(1) NOT NULL", "({h} % 2)"),
    ("yr", "YEAR NULL", "(1990 + {h} % 35)"),
    ("date", "DATE NOT NULL", "('2012-01-01' + INTERVAL ({h} % 5000) DAY)"),
    ("dt", "DATETIME NULL", "('2012-01-01' + INTERVAL ({h} % 400000000) SECOND)"),
    ("dt6", "DATETIME(6) NOT NULL", "('2012-01-01' + INTERVAL ({h} % 400000000) SECOND + INTERVAL ({h} % 999999) MICROSECOND)"),
    ("ts", "TIMESTAMP NULL", "(FROM_UNIXTIME(1400000000 + {h} % 300000000))"),
    ("tm", "TIME NOT NULL", "(SEC_TO_TIME({h} % 86400))"),
    ("chr", "CHAR(2) NOT NULL", "(ELT(1 + {h} % 4, 'MA', 'NY', 'CT', 'RI'))"),
    ("vc", "VARCHAR(255) NOT NULL", "(CONCAT('name ', {h} % 50000))"),
    ("vcn", "VARCHAR(100) NULL", "(CONCAT('x', HEX({h})))"),
    ("txt", "TEXT NULL", "(REPEAT(CONCAT('note ', {h} % 997, '\\n'), 1 + {h} % 4))"),
    ("enum", "ENUM('Active','Inactive','Archived','') NOT NULL", "(ELT(1 + {h} % 4, 'Active', 'Inactive', 'Archived', ''))"),
    ("set", "SET('a','b','c') NOT NULL", "(ELT(1 + {h} % 4, '', 'a', 'a,b', 'b,c'))"),
    ("json", "JSON NULL", "(JSON_OBJECT('k', {h} % 100, 'v', CONCAT('x', {h} % 7)))"),
    ("vbin", "VARBINARY(16) NULL", "(UNHEX(LPAD(HEX({h}), 8, '0')))"),
    ("blob", "BLOB NULL", "(UNHEX(MD5({h})))"),
]
NULL_EVERY = 9  # a nullable column is NULL in one row of this many


@dataclass
class TableSpec:
    name: str
    size_class: str
    rows: int
    columns: list[tuple[str, str, str]]  # (name, ddl, expression)
    key: str  # bigint | composite | varchar | none
    change: str  # server | app | none
    indexes: list[str] = field(default_factory=list)


def plan(scale: float, seed: int) -> list[TableSpec]:
    """The 450 tables: deterministic from `scale` and `seed`."""
    rng = random.Random(seed)
    out: list[TableSpec] = []
    n = 0
    for size_class, count, (lo, hi), (clo, chi) in SHAPE:
        for i in range(count):
            n += 1
            # Sizes skewed towards the low end of the class, as a clinic's are.
            frac = rng.random() ** 2
            rows = int((lo + (hi - lo) * frac) * scale)
            if size_class == "tiny" and rng.random() < 0.08:
                rows = 0
            ncols = rng.randint(clo, chi)
            r = rng.random()
            key = "bigint" if r < 0.85 else "composite" if r < 0.92 else "varchar" if r < 0.97 else "none"
            change = ("server", "app", "none")[n % 3]
            fams = [FAMILIES[(n * 7 + j) % len(FAMILIES)] for j in range(ncols)]
            cols = [(f"c{j:02d}_{f[0]}", f[1], f[2]) for j, f in enumerate(fams)]
            spec = TableSpec(name=f"{size_class}_{i + 1:03d}", size_class=size_class, rows=rows, columns=cols,
                             key=key, change=change)
            if size_class in ("large", "medium", "small"):
                spec.indexes = [cols[0][0]] + ([cols[10][0]] if size_class != "small" and ncols > 10 else [])
            out.append(spec)
    return out


def _hash(table_no: int, j: int) -> str:
    return f"CRC32(CONCAT(seq, '/{table_no}/{j}'))"


def create_sql(spec: TableSpec, table_no: int) -> list[str]:
    cols = []
    if spec.key == "bigint":
        cols.append("`Num` BIGINT NOT NULL AUTO_INCREMENT")
    elif spec.key == "composite":
        cols += ["`PartA` INT NOT NULL", "`PartB` INT NOT NULL"]
    elif spec.key == "varchar":
        cols.append("`Code` VARCHAR(20) NOT NULL")
    cols += [f"`{c}` {ddl}" for c, ddl, _ in spec.columns]
    if spec.change == "server":
        cols.append("`SecDateTEdit` TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP")
    elif spec.change == "app":
        cols.append("`DateTStamp` DATETIME NULL")
    keys = {"bigint": ["PRIMARY KEY (`Num`)"], "composite": ["PRIMARY KEY (`PartA`, `PartB`)"],
            "varchar": ["PRIMARY KEY (`Code`)"], "none": []}[spec.key]
    keys += [f"KEY `ix_{c}` (`{c}`)" for c in spec.indexes]
    if spec.change == "server" and spec.size_class in ("large", "medium"):
        keys.append("KEY `ix_SecDateTEdit` (`SecDateTEdit`)")
    return [f"DROP TABLE IF EXISTS `{spec.name}`",
            f"CREATE TABLE `{spec.name}` (\n  " + ",\n  ".join(cols + keys) + "\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"]


def _value_exprs(spec: TableSpec, table_no: int, seq: str = "seq") -> tuple[list[str], list[str]]:
    names, exprs = [], []
    if spec.key == "composite":
        names += ["PartA", "PartB"]
        exprs += [f"({seq} DIV 50)", f"({seq} % 50)"]
    elif spec.key == "varchar":
        names.append("Code")
        exprs.append(f"CONCAT('K', LPAD({seq}, 8, '0'))")
    for j, (c, ddl, e) in enumerate(spec.columns):
        h = _hash(table_no, j).replace("seq", seq)
        expr = e.format(h=h)
        if " NULL" in ddl and "NOT NULL" not in ddl:
            expr = f"IF({h} % {NULL_EVERY} = 0, NULL, {expr})"
        names.append(c)
        exprs.append(expr)
    if spec.change == "server":
        names.append("SecDateTEdit")
        exprs.append(f"FROM_UNIXTIME(1600000000 + {seq} * 13)")
    elif spec.change == "app":
        names.append("DateTStamp")
        exprs.append(f"IF({seq} % 5 = 0, NULL, FROM_UNIXTIME(1600000000 + {seq} * 11))")
    return names, exprs


def insert_sql(spec: TableSpec, table_no: int, lo: int, hi: int) -> str:
    names, exprs = _value_exprs(spec, table_no)
    cols = ", ".join(f"`{n}`" for n in names)
    return (f"INSERT INTO `{spec.name}` ({cols}) SELECT {', '.join(exprs)} FROM seq_{lo}_to_{hi}")


def generate(url: str, scale: float, *, seed: int = 7, verbose: bool = False) -> dict[str, int]:
    p = parse_url(url)
    if not p.database.startswith("bench"):
        raise ValueError(f"refusing to recreate {p.database!r}: the clinic generator writes bench_* databases only")
    specs = plan(scale, seed)
    conn = _connect(p, None, session=SESSION)
    try:
        _exec(conn, [f"DROP DATABASE IF EXISTS `{p.database}`",
                     f"CREATE DATABASE `{p.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
                     f"USE `{p.database}`"])
        rows: dict[str, int] = {}
        for no, spec in enumerate(specs, start=1):
            _exec(conn, create_sql(spec, no), f"create {spec.name}", verbose)
            step = 100_000
            for lo in range(1, spec.rows + 1, step):
                _exec(conn, insert_sql(spec, no, lo, min(spec.rows, lo + step - 1)), f"rows {spec.name}", verbose)
            rows[spec.name] = spec.rows
        _exec(conn, "ANALYZE TABLE " + ", ".join(f"`{s.name}`" for s in specs if s.rows >= 1000))
    finally:
        conn.close()
    return rows


def mutate(url: str, round_no: int, *, pct: float = 1.0, tables: int = 70, seed: int = 7,
           scale: float | None = None) -> dict:
    """The nightly churn in `tables` tables: updates, inserts and deletes (see the module docstring)."""
    p = parse_url(url)
    conn = _connect(p, p.database, session=SESSION)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")
            present = {r[0] for r in cur.fetchall()}
        specs = {s.name: (no, s) for no, s in enumerate(plan(scale or 1.0, seed), start=1) if s.name in present}
        # Larger tables first (where a clinic's changes are), and a few tiny ones.
        ordered = sorted(specs.values(), key=lambda x: -x[1].rows)
        keyed = [x for x in ordered if x[1].key != "none" and x[1].rows > 0]
        chosen = keyed[: max(1, tables - 10)] + keyed[-10:]
        done = {"updated": 0, "inserted": 0, "deleted": 0, "tables": 0}
        t0 = time.time()
        for no, spec in chosen[:tables]:
            with conn.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM `{spec.name}`")
                n = int(cur.fetchone()[0])
                if n == 0:
                    continue
                k = max(1, int(n * pct / 100))
                mod = max(2, n // k)
                bumpable = [c for c, ddl, _ in spec.columns
                            if "NOT NULL" in ddl and c.endswith(("_int", "_dec", "_vc", "_small"))]
                target = bumpable[0] if bumpable else spec.columns[0][0]
                keycol = {"bigint": "Num", "composite": "PartB", "varchar": "Code"}[spec.key]
                keyexpr = f"CRC32(`{keycol}`)" if spec.key == "varchar" else f"`{keycol}`"
                bump = "CONCAT(`{c}`, '*')" if target.endswith("_vc") else "`{c}` + 1"
                cur.execute(f"UPDATE `{spec.name}` SET `{target}` = {bump.format(c=target)} "
                            f"WHERE {keyexpr} % {mod} = {(round_no + 3) % mod} LIMIT {k}")
                done["updated"] += cur.rowcount
                cur.execute(f"DELETE FROM `{spec.name}` WHERE {keyexpr} % {mod * 10} = {(round_no + 5) % (mod * 10)} "
                            f"LIMIT {max(1, k // 10)}")
                done["deleted"] += cur.rowcount
                ins = max(1, k // 2)
                start = 10_000_000 + round_no * 100_000 + 1
                if spec.key == "bigint":
                    names, exprs = _value_exprs(spec, no)
                    cols = ", ".join(f"`{x}`" for x in names)
                    cur.execute(f"INSERT INTO `{spec.name}` ({cols}) SELECT {', '.join(exprs)} "
                                f"FROM seq_{start}_to_{start + ins - 1}")
                else:
                    cur.execute(insert_sql(spec, no, start, start + ins - 1))
                done["inserted"] += cur.rowcount
                done["tables"] += 1
        done["seconds"] = round(time.time() - t0, 2)
    finally:
        conn.close()
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=DEFAULT_URL, help=f"the database to (re)create, named bench_* (default {DEFAULT_URL})")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every table's rows (1 = ~1.7 M rows)")
    ap.add_argument("--seed", type=int, default=7, help="picks sizes, columns and keys (default 7)")
    ap.add_argument("--mutate", action="store_true", help="apply the nightly churn instead of generating")
    ap.add_argument("--pct", type=float, default=1.0, help="--mutate: percent of each chosen table's rows updated")
    ap.add_argument("--tables", type=int, default=70, help="--mutate: how many tables change")
    ap.add_argument("--round", type=int, default=0, help="--mutate: picks which rows change")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-statement timings on stderr")
    a = ap.parse_args(argv)
    try:
        if a.mutate:
            r = mutate(a.url, a.round, pct=a.pct, tables=a.tables, seed=a.seed, scale=a.scale)
            print(json.dumps(r))
            return 0
        t0 = time.time()
        rows = generate(a.url, a.scale, seed=a.seed, verbose=a.verbose)
    except (ValueError, RuntimeError) as e:
        print(f"gen_clinic: error: {e}", file=sys.stderr)
        return 1
    by_class: dict[str, list[int]] = {}
    for name, n in rows.items():
        by_class.setdefault(name.split("_")[0], []).append(n)
    print(f"generated {parse_url(a.url).redacted()} scale={a.scale:g}: {len(rows)} tables, {sum(rows.values()):,} rows "
          f"in {time.time() - t0:.1f}s")
    for c, ns in by_class.items():
        print(f"  {c:<7} {len(ns):>4} tables  {sum(ns):>10,} rows  (largest {max(ns):,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
