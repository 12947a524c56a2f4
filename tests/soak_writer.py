"""The writer of the soak test: a separate process that keeps changing the source while runs go on.

    python -m tests.soak_writer --db etlt_xxx_src --stop-file /tmp/stop [--seed 6] [--pause 0.01] [--max-seconds 1800]

It holds one autocommit connection of its own to the source database and, until the stop file
appears, picks one change at a time at random: inserts (auto-increment keys), updates that bump the
server-maintained change column, bursts of updates inside one second, updates that set the change
column to the table's current maximum exactly (a row arriving with the watermark's own timestamp),
updates of the application-written change column only, and a few deletes. Every statement is one
short transaction, so stopping between two of them leaves nothing half-done.

Protocol on stdout, one JSON object per line: first `{"connection_id": N}` once connected (the test
leaves that session out when it counts connections), last the counters of what was done.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter

import pymysql

from tests.conftest import MYSQL


def _max_key(cur, table: str, key: str) -> int:  # noqa: ANN001
    cur.execute(f"SELECT COALESCE(MAX(`{key}`), 0) FROM `{table}`")
    return int(cur.fetchone()[0])


class Writer:
    """One change per `step()`; `done` counts them by kind."""

    def __init__(self, conn: pymysql.connections.Connection, rng: random.Random):
        self.conn = conn
        self.cur = conn.cursor()
        self.rng = rng
        self.done: Counter[str] = Counter()
        self.max_visit = _max_key(self.cur, "visit", "id")
        self.max_patient = _max_key(self.cur, "patient", "PatNum")
        self.max_payment = _max_key(self.cur, "payment", "PayNum")
        self.next_code = 100_000

    def _exec(self, kind: str, sql: str, params: tuple = ()) -> int:
        n = self.cur.execute(sql, params)
        self.done[kind] += 1
        self.done[f"{kind} rows"] += n
        return n

    def step(self) -> None:
        r = self.rng
        kind = r.choices(
            ["visit insert", "visit update", "visit burst", "visit tie", "visit delete",
             "patient update", "patient app edit", "patient insert",
             "payment insert", "payment update",
             "code insert", "code update", "code delete"],
            weights=[10, 14, 3, 4, 1, 6, 3, 2, 5, 5, 2, 3, 1])[0]
        v = r.randint(1, self.max_visit)
        if kind == "visit insert":
            n = r.randint(1, 5)
            self._exec(kind, "INSERT INTO visit (patient_id, status, fee, note) VALUES "
                       + ", ".join(["(%s, 'booked', %s, %s)"] * n),
                       tuple(x for _ in range(n) for x in (r.randint(1, self.max_patient), r.randint(1, 99999) / 100,
                                                          f"w{r.random():.6f} ünï")))
            self.max_visit = self.cur.lastrowid + n - 1  # a multi-row insert returns its first id
        elif kind == "visit update":
            self._exec(kind, "UPDATE visit SET fee = fee + 1, status = %s WHERE id = %s",
                       (r.choice(["seen", "billed", "paid", "cancelled"]), v))
        elif kind == "visit burst":
            # Several updates inside the same second: whichever of them a run's MAX() read lands
            # between, the rest share the saved watermark's timestamp.
            for i in range(8):
                self._exec(kind, "UPDATE visit SET fee = fee + 0.01 WHERE id = %s", (r.randint(1, self.max_visit),))
        elif kind == "visit tie":
            # The change column set to the table's current maximum exactly: a row arriving later with
            # the watermark's own timestamp (the next run reads `>=` it).
            self._exec(kind, "UPDATE visit SET note = %s, changed = (SELECT m FROM (SELECT MAX(changed) AS m "
                       "FROM visit) AS x) WHERE id = %s", (f"tie {r.random():.6f}", v))
        elif kind == "visit delete":
            self._exec(kind, "DELETE FROM visit WHERE id = %s", (v,))
        elif kind == "patient update":
            self._exec(kind, "UPDATE patient SET Balance = Balance + %s WHERE PatNum = %s",
                       (r.randint(1, 500) / 4, r.randint(1, self.max_patient)))
        elif kind == "patient app edit":
            # The application-written DATETIME column, sometimes with a clock a few minutes behind;
            # the row changes, so the server-maintained column moves too.
            self._exec(kind, "UPDATE patient SET LName = %s, DateTEdit = NOW(6) - INTERVAL %s MINUTE "
                       "WHERE PatNum = %s", (f"Name{r.randint(1, 10**6)}", r.choice([0, 0, 5]),
                                             r.randint(1, self.max_patient)))
        elif kind == "patient insert":
            self._exec(kind, "INSERT INTO patient (LName, FName, Birthdate, Balance, DateTEdit) "
                       "VALUES (%s, 'New', '1990-02-03', 0, NOW(6))", (f"Late{r.randint(1, 10**6)}",))
            self.max_patient = self.cur.lastrowid
        elif kind == "payment insert":
            self._exec(kind, "INSERT INTO payment (PatNum, Amount, Memo) VALUES (%s, %s, %s)",
                       (r.randint(1, self.max_patient), r.randint(-5000, 100000) / 100, "writer\tmemo"))
            self.max_payment = self.cur.lastrowid
        elif kind == "payment update":
            self._exec(kind, "UPDATE payment SET Amount = Amount - 1, Memo = %s WHERE PayNum = %s",
                       (f"edit {r.randint(1, 999)}", r.randint(1, self.max_payment)))
        elif kind == "code insert":
            self.next_code += 1
            self._exec(kind, "INSERT INTO codes (code, descr, fee) VALUES (%s, 'writer code', 12.50)",
                       (f"W{self.next_code}",))
        elif kind == "code update":
            self._exec(kind, "UPDATE codes SET fee = fee + 1 WHERE code = %s", (f"D{r.randint(1, 400):04d}",))
        elif kind == "code delete":
            self._exec(kind, "DELETE FROM codes WHERE code = %s", (f"D{r.randint(1, 400):04d}",))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--pause", type=float, default=0.01, help="seconds between two changes")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="stop on its own after this long (safety net)")
    args = p.parse_args(argv)
    conn = pymysql.connect(**MYSQL, database=args.db, charset="utf8mb4", autocommit=True)
    writer = Writer(conn, random.Random(args.seed))
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        print(json.dumps({"connection_id": cur.fetchone()[0]}), flush=True)
    started = time.monotonic()
    try:
        while not os.path.exists(args.stop_file) and time.monotonic() - started < args.max_seconds:
            writer.step()
            time.sleep(args.pause)
    finally:
        conn.close()
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), **writer.done}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
