"""The run's one reader of the source's binary log: from the saved cursor to the end read at the start.

`capture` runs once per source per run, before any table (tasks/run.py `capture_binlog`, the flow's
`capture-binlog` task). It records *which keys* changed, not the values: every row event of a
binlog-mode table adds its key(s) to the replica table `_etl_binlog_changes` (a sequence number per
key, in commit order; an UPDATE that changes the key adds the old and the new key), a TRUNCATE adds
a marker, and so does a DROP, RENAME or CREATE OR REPLACE of the table (`ddl_markers`). The cursor
(`_etl_binlog_cursor`: server id, file, offset) moves in the same replica transaction as the keys
of the transactions it passed, so a crash re-reads at most the last transaction and a key logged
twice is harmless: the apply (tasks/binlog_apply.py) re-reads keys from the source. Rolled-back InnoDB transactions never reach the log.

Values are never taken from the log: the apply re-reads the rows by key through the same typed
paths as a full copy, so JSON, BIT, TIME, TIMESTAMP, zero dates and latin1 bytes stay exact.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url

from config.errors import SchemaError
from tasks import binlog_rows, binlog_source, faults, locks
from tasks.binlog_source import Position
from tasks.connections import Engines
from tasks.identifiers import execute, mysql_ident

log = logging.getLogger("etl.binlog")

CHANGES = "_etl_binlog_changes"
CURSOR = "_etl_binlog_cursor"
ER_BAD_DB_ERROR = 1049  # MySQL "Unknown database": the replica database is not created yet
FLUSH_KEYS = 5_000  # keys buffered before they are written (bounded memory in a huge transaction)
READER_SERVER_ID = 4_100_000_001  # the id our reader announces; must differ from every real replica's

_IDENT = r"(?:`(?:[^`]|``)+`|[\w$]+)"
_NAME = re.compile(rf"({_IDENT})(?:\s*\.\s*({_IDENT}))?")
_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*|#[^\n]*", re.S)
_DDL = re.compile(r"^\s*(TRUNCATE(?:\s+TABLE)?|DROP\s+TABLES?(?:\s+IF\s+EXISTS)?|RENAME\s+TABLES?|"
                  r"CREATE\s+OR\s+REPLACE\s+TABLE|ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE)\s+(.*)$", re.I | re.S)
_ALTER_RENAME = re.compile(rf"\bRENAME\s+(?!(?:COLUMN|INDEX|KEY)\b)(?:TO\s+|AS\s+)?({_IDENT}(?:\s*\.\s*{_IDENT})?)",
                           re.I)


class BinlogGone(SchemaError):
    """The saved position can no longer be read (purged, server restored, another server answering)."""


@dataclass
class CaptureResult:
    start: Position | None
    end: Position
    events: int = 0
    keys: int = 0
    bytes_read: int = 0
    notes: list[str] = field(default_factory=list)
    resnapshot: list[str] = field(default_factory=list)  # tables whose state was reset (log gone, by config)


def ensure_tables(cur: Any) -> None:
    cur.execute(f"CREATE TABLE IF NOT EXISTS {mysql_ident(CHANGES)} (seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
                "table_name VARCHAR(64) NOT NULL, op CHAR(1) NOT NULL, key_json LONGTEXT NULL, "
                "KEY (table_name, seq)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
    cur.execute(f"CREATE TABLE IF NOT EXISTS {mysql_ident(CURSOR)} (source_db VARCHAR(64) NOT NULL PRIMARY KEY, "
                "server_id BIGINT NOT NULL, file VARCHAR(255) NOT NULL, log_offset BIGINT NOT NULL, "
                "updated_at DATETIME(6) NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")


def load_cursor(cur: Any, source_db: str) -> tuple[int, Position] | None:
    cur.execute(f"SELECT server_id, file, log_offset FROM {mysql_ident(CURSOR)} WHERE source_db = %s", (source_db,))
    row = cur.fetchone()
    return (int(row[0]), Position(str(row[1]), int(row[2]))) if row else None


def save_cursor(cur: Any, source_db: str, sid: int, at: Position, *, only_if_missing: bool = False) -> None:
    verb = "INSERT IGNORE" if only_if_missing else "REPLACE"
    cur.execute(f"{verb} INTO {mysql_ident(CURSOR)} (source_db, server_id, file, log_offset, updated_at) "
                "VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))", (source_db, sid, at.file, at.offset))


def encode_key(values: list[Any]) -> str:
    """A key as JSON text, exact: bytes as hex, decimals/dates/times as their SQL text."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, (bytes, bytearray)):
            out.append({"x": bytes(v).hex()})
        elif isinstance(v, (decimal.Decimal, dt.date, dt.datetime, dt.timedelta, float)):
            out.append({"s": str(v)})
        else:
            out.append(v)
    return json.dumps(out, ensure_ascii=False)


def _unquote(ident: str) -> str:
    return ident[1:-1].replace("``", "`") if ident.startswith("`") else ident


def _names(text: str, default_db: str) -> list[tuple[str, str]]:
    out = []
    for m in _NAME.finditer(text):
        a, b = m.group(1), m.group(2)
        out.append((_unquote(a), _unquote(b)) if b else (default_db, _unquote(a)))
    return out


def ddl_markers(query: str, default_db: str) -> list[tuple[str, str, str]]:
    """(database, table, op) for each table a statement of the log empties (op 't': TRUNCATE) or drops,
    renames or replaces (op 'd': DROP TABLE, RENAME TABLE, ALTER TABLE .. RENAME, CREATE OR REPLACE).
    A table that was dropped or renamed away can only come back as another table (re-created,
    or renamed into its place as online schema tools do): its copies can no longer be kept by key."""
    m = _DDL.match(_COMMENT.sub(" ", query or ""))
    if not m:
        return []
    verb, rest = m.group(1).split()[0].upper(), m.group(2)
    if verb == "TRUNCATE":
        return [(db, t, "t") for db, t in _names(rest, default_db)[:1]]
    if verb == "DROP":
        rest = re.split(r"\b(?:RESTRICT|CASCADE|WAIT|NOWAIT)\b", rest, flags=re.I)[0]
        return [(db, t, "d") for db, t in _names(rest, default_db)]
    if verb == "RENAME":  # a TO b, c TO d: every name on either side
        rest = re.split(r"\b(?:WAIT|NOWAIT)\b", rest, flags=re.I)[0]
        return [(db, t, "d") for db, t in _names(re.sub(r"\bTO\b", " ", rest, flags=re.I), default_db)]
    first = _names(rest, default_db)[:1]
    if verb == "CREATE":
        return [(db, t, "d") for db, t in first]
    r = _ALTER_RENAME.search(rest)  # ALTER TABLE: only a rename replaces the table
    return [(db, t, "d") for db, t in first + _names(r.group(1), default_db)] if r else []


def decode_key(text: str) -> tuple[Any, ...]:
    return tuple(bytes.fromhex(v["x"]) if isinstance(v, dict) and "x" in v else
                 v["s"] if isinstance(v, dict) else v for v in json.loads(text))


def gone_message(table_names: list[str], saved: Position, oldest: str, why: str) -> str:
    names = ", ".join(table_names) or "(none)"
    return (f"binlog: the log from the saved position {saved} is gone ({why}; oldest available: {oldest}) for "
            f"tables {names}; run `etl run --full-refresh --tables {' '.join(table_names)}` to copy them again and "
            f"restart from the current position (or set binlog.on_log_gone: resnapshot to do it automatically)")


def capture(engines: Engines, *, source_db: str, replica_db: str, tables: dict[str, tuple[str, ...]],
            on_log_gone: str = "stop") -> CaptureResult:
    """Read the log for `tables` ({name: key columns}) up to the end position read now; see the module docstring."""
    with engines.source.connect() as sc:
        scur = sc.connection.driver_connection.cursor()
        missing = binlog_source.missing_settings(scur)
        if missing:
            raise SchemaError(f"binlog mode: the source cannot serve it: {'; '.join(missing)}")
        sid = binlog_source.server_id(scur)
        end = binlog_source.current_position(scur)
        files = binlog_source.log_files(scur)
        sc.rollback()
    with locks.replica_lock(engines, replica_db, "_etl_binlog_capture"), engines.replica.connect() as rc:
        rep = rc.connection.driver_connection
        cur = rep.cursor()
        execute(cur, f"USE {mysql_ident(replica_db)}")
        ensure_tables(cur)
        saved = load_cursor(cur, source_db)
        rep.commit()
        if saved is None:
            save_cursor(cur, source_db, sid, end)
            rep.commit()
            return CaptureResult(start=None, end=end, notes=[f"binlog: reading starts at {end}"])
        saved_sid, start = saved
        why = None
        if saved_sid != sid:
            why = f"the server answering has server_id {sid}, the saved position is of server_id {saved_sid}"
        elif not binlog_source.still_available(files, start):
            why = "purged or the server was restored"
        if why:
            oldest = f"{files[0][0]}:4" if files else "none"
            msg = gone_message(sorted(tables), start, oldest, why)
            if on_log_gone != "resnapshot":
                raise BinlogGone(msg)
            from tasks import state
            state.mysql_ensure(cur)
            for t in sorted(tables):
                # No binlog sequence: the table copies in full; the next generation makes analytics reload too.
                old = state.mysql_load(cur, t)
                if old is not None:
                    state.mysql_save(cur, t, state.TableState(generation=old.generation, run_count=old.run_count,
                                                              source_time_zone=old.source_time_zone))
            execute(cur, f"DELETE FROM {mysql_ident(CHANGES)}")
            save_cursor(cur, source_db, sid, end)
            rep.commit()
            log.warning("%s; re-snapshotting them now (binlog.on_log_gone: resnapshot)", msg)
            return CaptureResult(start=start, end=end, notes=[msg], resnapshot=sorted(tables))
        result = CaptureResult(start=start, end=end)
        if start.key() >= end.key():
            return result
        _read(engines, cur, rep, source_db=source_db, sid=sid, start=start, end=end, tables=tables, result=result)
        result.bytes_read = bytes_between(files, start, end)
    return result


def bytes_between(files: list[tuple[str, int]], start: Position, end: Position) -> int:
    total = 0
    for name, size in files:
        p = Position(name, 0)
        if start.number <= p.number <= end.number:
            lo = start.offset if p.number == start.number else 0
            hi = end.offset if p.number == end.number else size
            total += max(0, hi - lo)
    return total


def _read(engines: Engines, cur: Any, rep: Any, *, source_db: str, sid: int, start: Position, end: Position,
          tables: dict[str, tuple[str, ...]], result: CaptureResult) -> None:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import QueryEvent, RotateEvent, XidEvent
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

    url = make_url(engines.urls.source)
    settings = {"host": url.host or "127.0.0.1", "port": url.port or 3306, "user": url.username or "root",
                "passwd": url.password or ""}
    # Opened by file and offset, the classic way (is_mariadb / GTID positioning left off: the cursor is
    # a file and offset). resume_stream: start exactly at `offset`, not at the file's beginning.
    stream = BinLogStreamReader(connection_settings=settings, server_id=READER_SERVER_ID, log_file=start.file,
                                log_pos=start.offset, resume_stream=True, blocking=False,
                                # Only key values are used; the library misreads some charsets (utf32 as
                                # little-endian), which must not stop the capture (README: known limits).
                                ignore_decode_errors=True,
                                only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, QueryEvent,
                                             XidEvent, RotateEvent],
                                # Row events of other tables are dropped at their header, undecoded.
                                only_schemas=[source_db], only_tables=sorted(tables))
    buffer: list[tuple[str, str, str | None]] = []
    flushes = [0]

    def flush(at: Position | None) -> None:
        if buffer:
            cur.executemany(f"INSERT INTO {mysql_ident(CHANGES)} (table_name, op, key_json) VALUES (%s, %s, %s)",
                            buffer)
            result.keys += len(buffer)
            buffer.clear()
        if at is not None:
            save_cursor(cur, source_db, sid, at)
        rep.commit()
        flushes[0] += 1
        faults.check("binlog", source_db, flushes[0])

    try:
        for ev in stream:
            here = Position(stream.log_file, stream.log_pos)
            result.events += 1
            if isinstance(ev, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
                key = tables.get(ev.table) if ev.schema == source_db else None
                if key:
                    previous = None
                    for values in _image_keys(ev, key):
                        # An UPDATE that keeps its key names it twice (before and after image) in a row:
                        # logged once, as applying it twice in a row changes nothing.
                        text = encode_key(values)
                        if text != previous:
                            buffer.append((ev.table, "r", text))
                        previous = text
                    if len(buffer) >= FLUSH_KEYS:
                        flush(None)  # mid-transaction: the cursor stays, a crash re-reads the transaction
            elif isinstance(ev, QueryEvent):
                for db, name, op in ddl_markers(_text(ev.query), _text(ev.schema)):
                    if db == source_db and name in tables:  # 'd' carries where it happened, for its message
                        buffer.append((name, op, None if op == "t" else f"{_text(ev.query)[:200]} at {here}"))
                if (ev.query or "").strip().upper() != "BEGIN":
                    flush(here)  # DDL commits on its own
            elif isinstance(ev, XidEvent):
                flush(here)
            if here.key() >= end.key():
                break
        flush(None)
    finally:
        stream.close()


def _image_keys(ev: Any, key: tuple[str, ...]) -> list[tuple] | list[list]:
    """Each row image's key values: only the key columns decoded (tasks/binlog_rows.py), or, for a
    layout it does not walk, the library's full decoding."""
    keys = binlog_rows.event_keys(ev, key)
    if keys is not None:
        return keys
    return [[values[k] for k in key] for row in ev.rows
            for values in ([row["before_values"], row["after_values"]] if "after_values" in row else [row["values"]])]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v or "")


def describe_lag(source_url: str, replica_url: str) -> str | None:
    """`etl status`: how far the replica's binlog cursor is behind the source's log (bytes, and seconds
    since the cursor last moved when bytes remain); None when binlog mode is not in use or nothing has
    been synced yet (no replica database, no cursor table, no cursor row); otherwise one line naming
    the database that could not be read and the server's reason."""
    from tasks.connections import create_engine, describe_url, url_passwords
    from tasks.errors import redact

    source_db = make_url(source_url).database or ""
    src, rep = create_engine("source", source_url, pool_size=1), create_engine("replica", replica_url, pool_size=1)
    role, url = "replica", replica_url
    try:
        with rep.connect() as rc:
            cur = rc.connection.driver_connection.cursor()
            cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                        "AND TABLE_NAME = %s", (CURSOR,))
            if not cur.fetchone()[0]:
                return None
            saved = load_cursor(cur, source_db)
            cur.execute(f"SELECT TIMESTAMPDIFF(SECOND, updated_at, UTC_TIMESTAMP(6)) FROM {mysql_ident(CURSOR)} "
                        "WHERE source_db = %s", (source_db,))
            row = cur.fetchone()
            rc.rollback()
        if saved is None or row is None:
            return None
        role, url = "source", source_url
        with src.connect() as sc:
            scur = sc.connection.driver_connection.cursor()
            now = binlog_source.current_position(scur)
            files = binlog_source.log_files(scur)
            sc.rollback()
        behind = bytes_between(files, saved[1], now)
        seconds = int(row[0]) if behind else 0
        return f"binlog lag of {source_db}: {behind} bytes, {seconds} s (read up to {saved[1]}, server at {now})"
    except Exception as e:  # noqa: BLE001 - status still shows the runs
        root = getattr(e, "orig", None) or e
        if role == "replica" and getattr(root, "args", (None,))[0] == ER_BAD_DB_ERROR:
            return None  # the first run creates the replica database: nothing synced yet
        text = str(root).splitlines()[0] if str(root) else type(root).__name__
        return (f"binlog lag of {source_db}: unknown, reading the {role} database at {describe_url(url)} "
                f"failed: {redact(text, url_passwords(source_url, replica_url))}")
    finally:
        src.dispose()
        rep.dispose()
