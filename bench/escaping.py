"""Cost of printing text with many line breaks as a COPY / LOAD DATA field (issue 10 item 15).

MariaDB's REPLACE moves the rest of the string for every replacement whose length differs, so
the old escaping (nested REPLACE(text, LF, backslash + n) ...) is quadratic in the number of line
breaks. The current one (tasks/type_mapping.py `_placeholders`) swaps the four special bytes for
placeholder bytes of the same length, in place, and the reader expands them with bytes.replace
(tasks/streaming.py `decode_text_bytes`). This script times both on 1, 4 and 16 MB values with a
line break every 50 bytes (plus tabs, CRs and backslashes), server side (SELECT LENGTH(expr), so
nothing is sent) and, for the current one, the reader's decode of the fetched value, and checks
the decoded field equals the value escaped in Python.

    python bench/escaping.py --mysql-url mysql://root@127.0.0.1:3306/ [--sizes 1,4,16] [--old-max-mb 1]

The old escaping is only run up to --old-max-mb (1 MB takes ~18 s of server CPU on the shared
box, 4 MB would take minutes). Only the database bench_escaping is created and dropped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.mysql_schema import Column  # noqa: E402
from tasks.streaming import decode_text_bytes  # noqa: E402
from tasks.type_mapping import copy_text_expr, load_data_column  # noqa: E402

DB = "bench_escaping"
OLD_COPY = ("REPLACE(REPLACE(REPLACE(REPLACE(CONVERT(`note` USING utf8mb4),'\\\\','\\\\\\\\'),"
            "'\\t','\\\\t'),'\\n','\\\\n'),'\\r','\\\\r')")
LINE = "x" * 45 + "\\\t\r\n"  # 49 characters: 4 special ones, a line break every 49 bytes


def connect(url: str, db: str | None = None):
    u = urlparse(url)
    return pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
                           password=u.password or "", database=db, charset="utf8mb4", autocommit=True)


def timed(cur, sql: str, params=()) -> tuple[float, object]:
    t0 = time.monotonic()
    cur.execute(sql, params)
    row = cur.fetchone()
    return time.monotonic() - t0, row[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mysql-url", default="mysql://root@127.0.0.1:3306/")
    ap.add_argument("--sizes", default="1,4,16", help="value sizes in MB")
    ap.add_argument("--old-max-mb", type=float, default=1, help="run the old quadratic escaping up to this size")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]

    conn = connect(args.mysql_url)
    cur = conn.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS {DB}")
    cur.execute(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
    cur.execute(f"USE {DB}")
    cur.execute("SET SESSION sql_mode = 'NO_ENGINE_SUBSTITUTION'")
    cur.execute("CREATE TABLE notes (id INT PRIMARY KEY, note LONGTEXT NOT NULL)")
    col = Column("note", "longtext", "longtext", False, None, None, None, None, "utf8mb4", "", None)
    new_copy = copy_text_expr(col)
    new_load = load_data_column(col, 0).select_expr
    old_per_mb2: float | None = None  # seconds / MB^2 of the old escaping, measured at the first size
    print(f"{'size':>6} {'lines':>8} {'escaping':<28} {'server s':>9} {'decode s':>9}  exact")
    try:
        for i, mb in enumerate(sizes):
            n = int(mb * 1_000_000 / len(LINE))
            cur.execute("INSERT INTO notes VALUES (%s, REPEAT(%s, %s))", (i, LINE, n))
            value = LINE * n
            expected = (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                        .replace("\r", "\\r")).encode()
            for name, expr in (("placeholders (COPY)", new_copy), ("placeholders (LOAD DATA)", new_load)):
                s, length = timed(cur, f"SELECT LENGTH({expr}) FROM notes WHERE id = %s", (i,))
                assert int(length) == len(value.encode()), (name, length)
                _, raw = timed(cur, f"SELECT CAST({expr} AS BINARY) FROM notes WHERE id = %s", (i,))
                t0 = time.monotonic()
                field = decode_text_bytes(raw, strip_nul=name.endswith("(COPY)"))
                d = time.monotonic() - t0
                print(f"{mb:>5g}M {n:>8} {name:<28} {s:>9.3f} {d:>9.3f}  {field == expected}")
            if mb <= args.old_max_mb:
                s, length = timed(cur, f"SELECT LENGTH({OLD_COPY}) FROM notes WHERE id = %s", (i,))
                assert int(length) == len(expected)
                old_per_mb2 = old_per_mb2 or s / (mb * mb)
                print(f"{mb:>5g}M {n:>8} {'nested REPLACE (before)':<28} {s:>9.3f} {'-':>9}  True")
            elif old_per_mb2:
                print(f"{mb:>5g}M {n:>8} {'nested REPLACE (before)':<28} {'skipped':>9} {'-':>9}  (quadratic: "
                      f"~{old_per_mb2 * mb * mb:.0f} s estimated)")
    finally:
        cur.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
