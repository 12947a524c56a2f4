"""Which watermark a run may save so that no row is ever left behind it.

A run reads MAX(change column) before its first row and saves a watermark the next run starts at
(`>=`). Three things make MAX alone unsafe, and each is handled here, for the incremental window
(`read_window`, used by tasks/replica_merge and tasks/analytics_merge) and for the maxima a full refresh saves (tasks/sync) alike:

- Late commits. ON UPDATE CURRENT_TIMESTAMP (and NOW() in an INSERT) stamps a row when the
  statement runs, not when its transaction commits. A transaction still open when MAX is read
  commits later a row stamped before MAX. The saved watermark therefore never passes the start
  of the oldest transaction open on the source that has written or is running a statement
  (information_schema.INNODB_TRX, read right after MAX; its rows can only carry stamps at or after
  that start), less LATE_COMMIT_MARGIN. TIMESTAMP columns are capped at that instant in UTC;
  DATE/DATETIME columns hold some local time we cannot convert, so they are held back by the
  transaction's age below their MAX (a row stamped at local time L(start) >= L(now) - age >=
  MAX - age). INTEGER columns (auto-increment ids are handed out at INSERT, committed in any
  order): MAX is saved only once no transaction that started before MAX was read is still open;
  the run waits up to INT_SETTLE_SECONDS for them and otherwise keeps the previous watermark.
  Reading INNODB_TRX needs the PROCESS privilege; without it a time column is held back
  FALLBACK_LOOKBACK below its MAX (transactions open longer than that can still be missed, which
  `etl plan` says), and an integer column is not protected (`etl plan` says so, and to grant PROCESS).
- Local-time DATETIME columns. A DATETIME holds the writer session's local time; when daylight
  saving ends the hour repeats, and edits in the second pass are stamped up to an hour before the
  saved MAX. The server cannot tell which zone a session wrote in (an application sets its own
  time_zone), so every DATETIME watermark is held DST_SHIFT (1 h, the largest shift in the tz
  database but Lord Howe's 30 min) below MAX: each run re-reads the last hour, which the merge makes
  harmless. DATE columns are not held back (a fall-back repeats an hour within the same date).
- Retries. A Prefect retry calls the same task again with resume=True; the window it would read
  now has a later MAX than the one read before the first attempt copied its first rows, and a
  resumed full copy does not re-read the rows it had already committed. The window is therefore
  captured once (`Window`), persisted in the replica (tasks/state.mysql_save_pending) before the
  first row is read, and a resumed attempt uses it instead of reading a new MAX.
"""
from __future__ import annotations

import datetime as dt
import difflib
import time
from dataclasses import dataclass, field
from typing import Any

import pymysql

from config.models import LookbackWindow, parse_lookback_seconds
from tasks.errors import SchemaError
from tasks.identifiers import execute, mysql_ident, readable
from tasks.state import as_datetime
from tasks.type_mapping import is_time_type

DST_SHIFT = dt.timedelta(hours=1)
LATE_COMMIT_MARGIN = dt.timedelta(seconds=1)
FALLBACK_LOOKBACK = dt.timedelta(minutes=15)
INT_SETTLE_SECONDS = 2.0

# Transactions that may commit a stamped row later: not our own session, not an autocommit read, not
# READ ONLY, and one that has written or locked rows or is running a statement now (an idle
# transaction that has written nothing stamps its future rows after now, above any saved watermark).
OPEN_WRITERS = ("trx_mysql_thread_id <> CONNECTION_ID() AND trx_autocommit_non_locking = 0 AND trx_is_read_only = 0 "
            "AND (trx_rows_modified > 0 OR trx_rows_locked > 0 OR trx_query IS NOT NULL)")
NO_PRIVILEGE_CODES = {1227, 1142, 1044, 1045}  # access denied (PROCESS missing) in its MySQL/MariaDB spellings


@dataclass(frozen=True)
class Pass:
    """One change column's window."""

    column: str
    low: Any  # inclusive; None = from the beginning
    high: Any  # inclusive

    def condition(self) -> tuple[str, list[Any]]:
        q = mysql_ident(self.column)
        if self.low is None:
            return f"{q} <= %s", [self.high]
        return f"{q} >= %s AND {q} <= %s", [self.low, self.high]


@dataclass
class Window:
    """What one run of one table reads and saves, captured once before its first row is read."""

    passes: list[Pass] = field(default_factory=list)
    save: dict[str, Any] = field(default_factory=dict)
    protection: list[str] = field(default_factory=list)  # what held the watermark back, for notes and plan


@dataclass(frozen=True)
class OpenTransactions:
    readable: bool
    oldest_age: dt.timedelta | None  # age of the oldest writing transaction; None = none open
    why_unreadable: str | None = None


def column_max(cur: Any, table_sql: str, column: str) -> Any:
    execute(cur, f"SELECT MAX({mysql_ident(column)}) FROM {table_sql}")
    v = cur.fetchone()[0]
    # An all-zero DATETIME column comes back as a string; it has no usable maximum.
    if isinstance(v, str):
        return None
    return as_datetime(v)


def now_caps(cur: Any) -> tuple[dt.datetime, dt.datetime]:
    """Latest plausible TIMESTAMP (UTC now) and DATETIME (now in any time zone) on the server."""
    cur.execute("SELECT UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 14 HOUR")
    a, b = cur.fetchone()
    return a, b


def open_transactions(cur: Any) -> OpenTransactions:
    """The oldest transaction open on the server that may still commit stamped rows.

    Its age is measured on the server (NOW(6) against trx_started, both in this session's zone),
    so no time zone conversion is involved; trx_started is truncated to the second, which only
    makes the age longer (safe)."""
    try:
        cur.execute(f"SELECT MAX(TIMESTAMPDIFF(MICROSECOND, trx_started, NOW(6))) FROM information_schema.INNODB_TRX "
                    f"WHERE {OPEN_WRITERS}")
    except (pymysql.err.OperationalError, pymysql.err.ProgrammingError, pymysql.err.InternalError) as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        if code not in NO_PRIVILEGE_CODES:
            raise
        return OpenTransactions(False, None, "information_schema.INNODB_TRX is not readable (grant PROCESS)")
    v = cur.fetchone()[0]
    return OpenTransactions(True, None if v is None else dt.timedelta(microseconds=max(0, int(v))))


def _writers_started_by(cur: Any, at: dt.datetime) -> int:
    cur.execute(f"SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE {OPEN_WRITERS} AND trx_started <= %s", (at,))
    return int(cur.fetchone()[0])


def _int_settled(cur: Any, read_at: dt.datetime, trx: OpenTransactions) -> bool:
    """True once no transaction that started by `read_at` (session time) is still open."""
    if trx.oldest_age is None:
        return True
    deadline = time.monotonic() + INT_SETTLE_SECONDS
    while True:
        if _writers_started_by(cur, read_at) == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def capture(cur: Any, table_sql: str, columns: tuple[str, ...], types: dict[str, str], previous: dict[str, Any], *,
            late_commits: bool = True) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(maxima, watermarks safe to save, protections applied) for `columns`, read now.

    `late_commits=False` skips INNODB_TRX: for a database only this pipeline writes, and whose
    writes are committed before it is read (the replica, in the analytics phase)."""
    ts_cap, dt_cap = now_caps(cur)
    cur.execute("SELECT NOW(6)")
    read_at = cur.fetchone()[0]
    maxima = {c: column_max(cur, table_sql, c) for c in columns}
    # Read right after MAX: a transaction open when MAX was read is either still listed here, or has
    # committed since and its rows are visible to the passes, which read after this.
    trx = open_transactions(cur) if late_commits else OpenTransactions(True, None)
    save: dict[str, Any] = {}
    notes: list[str] = []
    for c in columns:
        high, old = maxima[c], previous.get(c)
        if high is None:
            if old is not None:
                save[c] = old  # an emptied table keeps its watermark: nothing below it can reappear
            continue
        kind = types.get(c, "")
        if isinstance(high, dt.datetime):
            s = min(high, ts_cap if kind == "timestamp" else dt_cap)
            base = s
            if kind == "datetime":
                s = _minus(base, DST_SHIFT)
                notes.append(f"{c}: DATETIME held {_fmt(DST_SHIFT)} below MAX (a DST fall-back repeats local times)")
            if late_commits and not trx.readable:
                s = min(s, _minus(base, FALLBACK_LOOKBACK))
                notes.append(f"{c}: held {_fmt(FALLBACK_LOOKBACK)} below MAX: {trx.why_unreadable}; transactions "
                             f"open longer than that can be missed")
            elif trx.oldest_age is not None:
                back = trx.oldest_age + LATE_COMMIT_MARGIN
                s = min(s, _minus(ts_cap, back)) if kind == "timestamp" else min(s, _minus(base, back))
                notes.append(f"{c}: held at the start of the oldest open transaction ({_fmt(trx.oldest_age)} ago)")
            if kind == "date":
                s = dt.datetime.combine(s.date(), dt.time())
            if s == dt.datetime.min:
                s = None  # held back past year 1: no watermark, the next run reads from the beginning
        else:
            s = high
            if late_commits and not trx.readable:
                notes.append(f"{c}: integer watermark not protected against late commits: {trx.why_unreadable}")
            elif not _int_settled(cur, read_at, trx):
                s = old
                notes.append(f"{c}: transactions open since before MAX was read: watermark kept at {old}")
        if s is None:
            if old is not None:
                save[c] = old
            continue
        # Never backwards: the previous watermark was safe when it was saved and stays so.
        save[c] = s if old is None or s >= old else old
    return maxima, save, notes


def _minus(d: dt.datetime, delta: dt.timedelta) -> dt.datetime:
    try:
        return d - delta
    except OverflowError:  # a DATETIME in year 1 (bad data): nothing can be held back below it
        return dt.datetime.min


def _fmt(d: dt.timedelta) -> str:
    s = d.total_seconds()
    if s >= 3600 and s % 3600 == 0:
        return f"{int(s // 3600)} h"
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)} min"
    return f"{s:.0f} s" if s >= 1 else f"{s:.3f} s"


def describe_protection(trx: OpenTransactions, kinds: dict[str, str]) -> str:
    """One line for `etl plan`: which protection applies to a table's change columns."""
    parts = []
    times = [c for c, k in kinds.items() if is_time_type(k)]
    ints = [c for c, k in kinds.items() if c not in times]
    if trx.readable:
        if times:
            parts.append(f"late commits: {', '.join(times)} held at the oldest open transaction (INNODB_TRX)")
        if ints:
            parts.append(f"late commits: {', '.join(ints)} waits for transactions open at MAX (INNODB_TRX)")
    else:
        if times:
            parts.append(f"late commits: {trx.why_unreadable}; {', '.join(times)} held "
                         f"{_fmt(FALLBACK_LOOKBACK)} below MAX (longer transactions can be missed)")
        if ints:
            parts.append(f"late commits: {', '.join(ints)} NOT protected ({trx.why_unreadable})")
    dts = [c for c, k in kinds.items() if k == "datetime"]
    if dts:
        parts.append(f"DATETIME {', '.join(dts)} held {_fmt(DST_SHIFT)} below MAX (DST fall-back)")
    return "; ".join(parts) or "-"


# --- the change window of one run: one pass per change column (see tasks/replica_merge.py) ---------

def read_window(cur: Any, table_sql: str, columns: tuple[str, ...], saved: dict[str, Any],
                lookback: str | LookbackWindow | None, types: dict[str, str] | None = None, *,
                late_commits: bool = True) -> Window:
    """The passes to read now and the watermarks to save once they are merged (`capture` holds the
    saved watermark back so no late-committed or DST-repeated row falls behind).

    A saved watermark never passes the server's clock: a row stamped in the future (bad data, a
    skewed application clock) would otherwise push it ahead and hide every real change until then.
    Such rows are simply read again each run until the clock catches up.

    `lookback` as a duration moves each change column's window start back by it; as date columns
    with a window it adds one pass per date column over [now - window, MAX(column)], re-reading rows
    edited without touching a change column. Those passes save no watermark.
    """
    back = dt.timedelta(seconds=parse_lookback_seconds(lookback)) if isinstance(lookback, str) else None
    types = types or {}
    maxima, save, notes = capture(cur, table_sql, columns, types, saved, late_commits=late_commits)
    passes: list[Pass] = []
    for c in columns:
        high, low = maxima[c], saved.get(c)
        if high is None:
            continue
        if low is not None and back is not None and isinstance(low, dt.datetime):
            low = low - back
        if low is not None and isinstance(low, dt.datetime) and low.year < 1:
            low = None
        passes.append(Pass(c, low, high))
    if isinstance(lookback, LookbackWindow):
        ts_cap, _ = now_caps(cur)
        passes.extend(date_window_passes(cur, table_sql, lookback, types, utc_now=ts_cap))
    return Window(passes=passes, save=save, protection=notes)


def change_window(cur: Any, table_sql: str, columns: tuple[str, ...], saved: dict[str, Any],
                  lookback: str | LookbackWindow | None,
                  types: dict[str, str] | None = None) -> tuple[list[Pass], dict[str, Any]]:
    """(passes, watermarks to save): `read_window` as a pair."""
    w = read_window(cur, table_sql, columns, saved, lookback, types)
    return w.passes, w.save


def date_window_passes(cur: Any, table_sql: str, lookback: LookbackWindow, types: dict[str, str], *,
                       utc_now: dt.datetime) -> list[Pass]:
    """One pass per lookback date column: rows dated within the window up to the column's maximum.

    TIMESTAMP columns are read in UTC, so their window starts at UTC now - window. DATE and DATETIME
    hold the application's local time, which may be up to 12 hours behind UTC: their window starts
    12 hours earlier, and DATE windows start at midnight. Re-reading a little more is harmless.
    """
    span = dt.timedelta(seconds=parse_lookback_seconds(lookback.window))
    out: list[Pass] = []
    for c in lookback.columns:
        kind = check_window_column(readable(table_sql), c, types)
        low = utc_now - span if kind == "timestamp" else utc_now - span - dt.timedelta(hours=12)
        if kind == "date":
            low = dt.datetime.combine(low.date(), dt.time())
        high = column_max(cur, table_sql, c)
        if high is not None and high >= low:
            out.append(Pass(c, low, high))
    return out


def check_window_column(where: str, column: str, types: dict[str, str], *, fix: str = "lookback.columns") -> str:
    """The column's type for a lookback window, or a SchemaError naming `where`, the column and `fix`."""
    kind = types.get(column)
    if kind is None:
        m = difflib.get_close_matches(column, list(types), n=1)
        hint = f" (did you mean {m[0]!r}?)" if m else ""
        raise SchemaError(f"{where}: lookback column {column!r} does not exist{hint}; fix {fix}")
    if not is_time_type(kind):
        raise SchemaError(f"{where}: lookback column {column!r} is {kind}; a lookback window needs a DATE, "
                          f"DATETIME or TIMESTAMP column; fix {fix}")
    return kind
