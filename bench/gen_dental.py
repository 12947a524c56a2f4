#!/usr/bin/env python3
"""Deterministic "dental practice" dataset generator for the ETL source database.

**Needs MariaDB** (10.3+; tested with 10.11): rows are produced server-side with
``INSERT ... SELECT`` over MariaDB's SEQUENCE engine tables (``seq_1_to_N``), which
Oracle MySQL doesn't have (there you'd need a numbers table instead).

Creates (drops and recreates) the database named in ``--url`` with a small
OpenDental-like schema that exercises realistic MySQL types: int/bigint (signed and
unsigned) PKs, tinyint(1) flags, ENUM, SET, DECIMAL, DOUBLE, DATE/DATETIME with
``'0000-00-00'`` zero dates in NOT NULL columns and ``'0001-01-01'``, several
``TIMESTAMP ... ON UPDATE CURRENT_TIMESTAMP`` change-tracking columns (``claim`` has
two), TIME, TEXT with tabs/newlines/backslashes/a literal ``\\N``/the literal string
``'NULL'``, utf8mb4 text (accents and a 4-byte emoji), JSON (MariaDB: LONGTEXT +
CHECK json_valid), BLOB, LONGTEXT, ``BIGINT UNSIGNED`` values above 2^63, and real
FK constraints.

Tables and rows at ``--scale 1`` (about 3M rows; every scaled table gets at least
5 rows, so tiny scales like 0.0005 still work):

    definition 300, provider 50, procedurecode 1,500 (fixed sizes)
    patient 100k, appointment 400k, procedurelog 2M, document 10k,
    claim 150k, payment 120k, paysplit 200k

Values come from CRC32/SHA2 of the row number, so the same ``--scale`` always gives
identical table contents (except rows that ``--mutate`` touches, whose TIMESTAMP
columns use the server clock like a real application). Tables are created with only
their primary key and loaded in parallel (one connection per thread, ``--jobs``);
each table's secondary indexes are built as soon as it is loaded, and the FKs are
added at the end.

Only the standard library and PyMySQL are used, and the file is self-contained.

  python bench/gen_dental.py --url mysql+pymysql://root@127.0.0.1:3306/clinic --scale 0.01
  python bench/gen_dental.py --url ... --mutate --round 1   # 1% updates + 1% inserts (procedurelog)
  python bench/gen_dental.py --url ... --mutate --spread recent   # the updates among the newest 5% of keys

In Python: ``generate(url, scale)`` returns rows per table; ``mutate(url, round_no)``
returns what it changed. A password in the URL must be percent-encoded (as in
SQLAlchemy URLs); it is never printed.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys
import threading
import time
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/clinic"
DEFAULT_DB = "clinic"

BASE = {  # rows at --scale 1
    "patient": 100_000,
    "appointment": 400_000,
    "procedurelog": 2_000_000,
    "document": 10_000,
    "claim": 150_000,
    "payment": 120_000,
    "paysplit": 200_000,
}
N_PROV = 50
N_CODE = 1500
N_DEF = 300
MIN_ROWS = 5  # floor for every scaled table, so tiny scales still have a few rows

# All tables, parents first; also the key order of the dict generate() returns.
TABLES = ("definition", "provider", "procedurecode", "patient", "appointment",
          "procedurelog", "document", "claim", "payment", "paysplit")

# unique_checks stays 1 on purpose: with unique_checks=0 AND foreign_key_checks=0, MariaDB
# (10.6+, MDEV-515/MDEV-24818) turns an INSERT into an *empty* InnoDB table into a
# table-locked bulk insert. Two chunks of the same table starting together then deadlock
# (both hold IX, both wait for X; seen ~1 run in 30 at tiny scales), and even without the
# deadlock that path serialises the chunks and was slower here (10 s vs 6 s per 500k rows).
SESSION = ("SET SESSION sql_mode='', time_zone='+00:00', foreign_key_checks=0, "
           "innodb_lock_wait_timeout=600")
# mutate() behaves like an application: FK checks stay on.
MUTATE_SESSION = "SET SESSION sql_mode='', time_zone='+00:00', innodb_lock_wait_timeout=600"

_SYSTEM_DBS = {"mysql", "information_schema", "performance_schema", "sys"}
_DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")


# --------------------------------------------------------------------------- connection

@dataclasses.dataclass(frozen=True)
class ConnParams:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = dataclasses.field(default="", repr=False)  # never shown
    database: str = DEFAULT_DB
    unix_socket: str | None = None
    scheme: str = "mysql+pymysql"

    def redacted(self) -> str:
        """The URL with the password masked (safe to print or log)."""
        auth = self.user + (":***" if self.password else "")
        return f"{self.scheme}://{auth}@{self.host}:{self.port}/{self.database}"


def parse_url(url: str) -> ConnParams:
    """Parse a SQLAlchemy-style URL: ``mysql+pymysql://user:pass@host:port/db``.

    User and password are percent-decoded (``%40`` -> ``@``; ``+`` stays ``+``). The
    database defaults to ``clinic``. ``?unix_socket=/path`` is honoured; other query
    parameters (e.g. ``charset``) are ignored: the generator always uses utf8mb4.
    """
    u = urlsplit(url)
    if u.scheme.split("+", 1)[0].lower() not in ("mysql", "mariadb"):
        raise ValueError(f"not a mysql/mariadb URL (scheme {u.scheme!r})")
    db = unquote(u.path.lstrip("/")) or DEFAULT_DB
    if not _DB_NAME_RE.match(db):
        raise ValueError(f"unsupported database name {db!r} (letters, digits, _ $ - only)")
    q = parse_qs(u.query)
    return ConnParams(
        host=u.hostname or "127.0.0.1",
        port=u.port or 3306,
        user=unquote(u.username) if u.username else "root",
        password=unquote(u.password) if u.password is not None else "",
        database=db,
        unix_socket=q["unix_socket"][-1] if q.get("unix_socket") else None,
        scheme=u.scheme,
    )


def _connect(p: ConnParams, db: str | None = None, session: str = SESSION):
    kw = dict(user=p.user, password=p.password, database=db, charset="utf8mb4",
              autocommit=True, connect_timeout=30, init_command=session)
    if p.unix_socket:
        kw["unix_socket"] = p.unix_socket
    else:
        kw.update(host=p.host, port=p.port)
    return pymysql.connect(**kw)


def _exec(conn, stmts, label="", verbose=False):
    """Run one statement or a list of statements; return the last result set."""
    t = time.time()
    rows = None
    with conn.cursor() as cur:
        for sql in [stmts] if isinstance(stmts, str) else stmts:
            try:
                cur.execute(sql)  # no args: '%' in the SQL is not interpreted
            except pymysql.MySQLError as e:
                raise RuntimeError(f"SQL failed ({label}): {e}\n--- sql ---\n{sql[:1500]}") from e
            rows = cur.fetchall() if cur.description else None
    if verbose:
        print(f"  {label:<30} {time.time() - t:7.2f}s", file=sys.stderr)
    return rows


def _run_jobs(p: ConnParams, loads, followups, n_threads: int, verbose: bool):
    """Run load jobs on ``n_threads`` threads (one connection each).

    ``loads`` is a list of (table, label, statements), run in order. ``followups`` maps a
    table to (label, statements) that run as soon as all of that table's loads are done
    (its secondary indexes); a follow-up jumps the queue, so index builds overlap with
    loading the remaining tables. The first error stops the scheduling (statements
    already running finish) and is re-raised.
    """
    pending: dict[str, int] = {}
    for table, _, _ in loads:
        pending[table] = pending.get(table, 0) + 1
    ready = collections.deque((label, stmts, table) for table, label, stmts in loads)
    ready.extend((label, stmts, None) for table, (label, stmts) in followups.items()
                 if table not in pending)
    cond = threading.Condition()
    state = {"running": 0, "error": None}

    def worker():
        conn = None
        try:
            while True:
                with cond:
                    while not ready and state["running"] and state["error"] is None:
                        cond.wait()
                    if state["error"] is not None or not ready:
                        return
                    label, stmts, table = ready.popleft()
                    state["running"] += 1
                try:
                    if conn is None:
                        conn = _connect(p, p.database)
                    _exec(conn, stmts, label, verbose)
                except BaseException as e:  # noqa: BLE001 - re-raised by the caller
                    with cond:
                        state["error"] = state["error"] or e
                        state["running"] -= 1
                        cond.notify_all()
                    return
                with cond:
                    state["running"] -= 1
                    if table is not None:
                        pending[table] -= 1
                        if pending[table] == 0 and table in followups:
                            ready.appendleft((*followups[table], None))
                    cond.notify_all()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, name=f"gen_dental-{i}", daemon=True)
               for i in range(max(1, n_threads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if state["error"] is not None:
        raise state["error"]


# --------------------------------------------------------------------------- SQL

def h(salt, col="seq"):
    """deterministic 32-bit pseudo-random value derived from the row number"""
    return f"CRC32(CONCAT('{salt}',{col}))"


def hx(salt, col="seq"):
    """Like h(), but with a multiplicative mix, used by the tables added in this project.

    CRC32 is linear: for row numbers with the same digit count, h('a') XOR h('b') is a
    constant, so h('a') % 8 fully determines h('b') % 8 (any power-of-two modulus). The
    original tables keep h() so their data stays identical to the shared benchmark
    generator's; the multiply-and-shift here breaks that correlation.
    """
    return f"((CRC32(CONCAT('{salt}',{col})) * 2654435761) >> 16 & 4294967295)"


DDL = [
    """CREATE TABLE definition (
  DefNum bigint(20) NOT NULL AUTO_INCREMENT,
  Category tinyint(3) unsigned NOT NULL DEFAULT 0,
  ItemOrder smallint(5) unsigned NOT NULL DEFAULT 0,
  ItemName varchar(255) NOT NULL DEFAULT '',
  ItemValue varchar(255) NOT NULL DEFAULT '',
  ItemColor int(11) NOT NULL DEFAULT 0,
  IsHidden tinyint(1) NOT NULL DEFAULT 0,
  PRIMARY KEY (DefNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE provider (
  ProvNum int(11) NOT NULL AUTO_INCREMENT,
  Abbr varchar(255) NOT NULL DEFAULT '',
  LName varchar(100) NOT NULL DEFAULT '',
  FName varchar(100) NOT NULL DEFAULT '',
  Specialty enum('General','Hygienist','Endodontics','Orthodontics','Periodontics',
                 'Prosthodontics','Oral Surgery','Pediatric') NOT NULL DEFAULT 'General',
  IsSecondary tinyint(1) NOT NULL DEFAULT 0,
  IsHidden tinyint(1) NOT NULL DEFAULT 0,
  NationalProvID varchar(255) DEFAULT NULL,
  HourlyProdGoal decimal(10,2) NOT NULL DEFAULT 0.00,
  ProvColor int(11) NOT NULL DEFAULT 0,
  SchedFlags set('am','pm','weekend','oncall') DEFAULT NULL,
  DateTerm date NOT NULL DEFAULT '0000-00-00',
  DateTStamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (ProvNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE procedurecode (
  CodeNum bigint(20) NOT NULL AUTO_INCREMENT,
  ProcCode varchar(15) NOT NULL,
  Descript varchar(255) NOT NULL DEFAULT '',
  AbbrDesc varchar(50) NOT NULL DEFAULT '',
  ProcCat bigint(20) NOT NULL DEFAULT 0,
  TreatArea tinyint(3) unsigned NOT NULL DEFAULT 0,
  IsProsth tinyint(1) NOT NULL DEFAULT 0,
  DefaultFee decimal(10,2) NOT NULL DEFAULT 0.00,
  Attributes json DEFAULT NULL,
  DateTStamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (CodeNum),
  UNIQUE KEY ProcCode (ProcCode)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE patient (
  PatNum int(11) NOT NULL AUTO_INCREMENT,
  Guarantor int(11) NOT NULL DEFAULT 0,
  LName varchar(100) NOT NULL DEFAULT '',
  FName varchar(100) NOT NULL DEFAULT '',
  MiddleI varchar(100) DEFAULT NULL,
  Preferred varchar(100) NOT NULL DEFAULT '',
  PatStatus enum('Patient','NonPatient','Inactive','Archived','Deleted','Deceased','Prospective')
            NOT NULL DEFAULT 'Patient',
  Gender tinyint(3) unsigned NOT NULL DEFAULT 0,
  Position tinyint(3) unsigned NOT NULL DEFAULT 0,
  Birthdate date NOT NULL DEFAULT '0001-01-01',
  SSN varchar(100) DEFAULT NULL,
  Address varchar(100) NOT NULL DEFAULT '',
  City varchar(100) NOT NULL DEFAULT '',
  State varchar(100) NOT NULL DEFAULT '',
  Zip varchar(100) NOT NULL DEFAULT '',
  HmPhone varchar(30) NOT NULL DEFAULT '',
  Email varchar(100) DEFAULT NULL,
  EstBalance decimal(10,2) NOT NULL DEFAULT 0.00,
  BalTotal double NOT NULL DEFAULT 0,
  PriProv int(11) NOT NULL DEFAULT 0,
  IsActive tinyint(1) NOT NULL DEFAULT 1,
  HasIns tinyint(1) NOT NULL DEFAULT 0,
  PreferContactMethod tinyint(3) unsigned NOT NULL DEFAULT 0,
  DateFirstVisit date NOT NULL DEFAULT '0000-00-00',
  SecDateEntry datetime DEFAULT NULL,
  DateTStamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  FamFinUrgNote text,
  Preferences json DEFAULT NULL,
  PRIMARY KEY (PatNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE appointment (
  AptNum bigint(20) NOT NULL AUTO_INCREMENT,
  PatNum int(11) NOT NULL,
  AptStatus enum('Scheduled','Complete','UnschedList','ASAP','Broken','Planned','PtNote',
                 'PtNoteCompleted') NOT NULL DEFAULT 'Scheduled',
  Pattern varchar(255) NOT NULL DEFAULT '',
  Confirmed bigint(20) NOT NULL DEFAULT 0,
  Op bigint(20) unsigned NOT NULL DEFAULT 0,
  Note text,
  ProvNum int(11) NOT NULL DEFAULT 0,
  ProvHyg int(11) DEFAULT NULL,
  AptDateTime datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  DateTimeArrived datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  DateTimeDismissed datetime DEFAULT NULL,
  IsNewPatient tinyint(1) NOT NULL DEFAULT 0,
  ProcDescript varchar(255) NOT NULL DEFAULT '',
  ColorOverride int(11) NOT NULL DEFAULT 0,
  Priority tinyint(4) NOT NULL DEFAULT 0,
  SecDateTEntry datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  DateTStamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (AptNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE procedurelog (
  ProcNum bigint(20) NOT NULL AUTO_INCREMENT,
  PatNum int(11) NOT NULL,
  AptNum bigint(20) DEFAULT NULL,
  CodeNum bigint(20) NOT NULL,
  ProvNum int(11) NOT NULL DEFAULT 0,
  ProcDate date NOT NULL DEFAULT '0001-01-01',
  ProcFee decimal(10,2) NOT NULL DEFAULT 0.00,
  Discount double NOT NULL DEFAULT 0,
  ProcStatus tinyint(3) unsigned NOT NULL DEFAULT 0,
  Priority bigint(20) unsigned NOT NULL DEFAULT 0,
  ToothNum varchar(10) NOT NULL DEFAULT '',
  Surf varchar(10) NOT NULL DEFAULT '',
  ToothRange varchar(100) DEFAULT NULL,
  DiagnosticCode varchar(255) NOT NULL DEFAULT '',
  BillingNote varchar(255) DEFAULT NULL,
  UnitQty int(11) NOT NULL DEFAULT 1,
  BaseUnits int(10) unsigned NOT NULL DEFAULT 0,
  IsLocked tinyint(1) NOT NULL DEFAULT 0,
  ProcTime time NOT NULL DEFAULT '00:00:00',
  DateEntryC date NOT NULL DEFAULT '0000-00-00',
  DateComplete datetime DEFAULT NULL,
  SecDateEntry datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  SecDateTEdit timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (ProcNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE document (
  DocNum bigint(20) NOT NULL AUTO_INCREMENT,
  PatNum int(11) NOT NULL,
  FileName varchar(255) NOT NULL DEFAULT '',
  DateCreated datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
  Description varchar(255) DEFAULT NULL,
  ImgType tinyint(4) NOT NULL DEFAULT 0,
  FileHash bigint(20) unsigned NOT NULL DEFAULT 0,
  Thumbnail blob,
  RawBase64 longtext,
  DateTStamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (DocNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    # claim has two auto-updating TIMESTAMP columns on purpose (MariaDB/MySQL >= 5.6 allow it).
    """CREATE TABLE claim (
  ClaimNum bigint(20) NOT NULL AUTO_INCREMENT,
  PatNum int(11) NOT NULL,
  ProvTreat int(11) NOT NULL DEFAULT 0,
  DateService date NOT NULL DEFAULT '0000-00-00',
  ClaimStatus char(1) NOT NULL DEFAULT '',
  ClaimFee decimal(10,2) NOT NULL DEFAULT 0.00,
  InsPayAmt double NOT NULL DEFAULT 0,
  DateTStamp timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  SecDateTEdit timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (ClaimNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE payment (
  PayNum bigint(20) NOT NULL AUTO_INCREMENT,
  PatNum int(11) NOT NULL,
  PayDate date NOT NULL DEFAULT '0001-01-01',
  PayAmt decimal(10,2) NOT NULL DEFAULT 0.00,
  PayType bigint(20) NOT NULL DEFAULT 0,
  PayNote text,
  DateEntry date NOT NULL DEFAULT '0000-00-00',
  SecDateTEdit timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (PayNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE paysplit (
  SplitNum bigint(20) NOT NULL AUTO_INCREMENT,
  PayNum bigint(20) NOT NULL,
  PatNum int(11) NOT NULL,
  ProcNum bigint(20) NOT NULL DEFAULT 0,
  SplitAmt decimal(10,2) NOT NULL DEFAULT 0.00,
  DatePay date NOT NULL DEFAULT '0001-01-01',
  SecDateTEdit timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (SplitNum)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
]

# Secondary indexes, built after the load (one ALTER per table, run in parallel,
# biggest first) ...
POST_INDEXES = [
    # fk_proc_code is the index InnoDB would otherwise create implicitly (and slowly) for the FK
    ("procedurelog", "ALTER TABLE procedurelog ADD KEY idx_pat (PatNum), ADD KEY idx_apt (AptNum), "
                     "ADD KEY idx_tedit (SecDateTEdit), ADD KEY fk_proc_code (CodeNum)"),
    ("patient", "ALTER TABLE patient ADD KEY idx_name (LName, FName), ADD KEY idx_guar (Guarantor), "
                "ADD KEY idx_tstamp (DateTStamp)"),
    ("appointment", "ALTER TABLE appointment ADD KEY idx_pat (PatNum), ADD KEY idx_aptdt (AptDateTime)"),
    ("document", "ALTER TABLE document ADD KEY idx_pat (PatNum)"),
    ("claim", "ALTER TABLE claim ADD KEY idx_pat (PatNum), ADD KEY idx_prov (ProvTreat), "
              "ADD KEY idx_tstamp (DateTStamp), ADD KEY idx_tedit (SecDateTEdit)"),
    ("payment", "ALTER TABLE payment ADD KEY idx_pat (PatNum), ADD KEY idx_tedit (SecDateTEdit)"),
    ("paysplit", "ALTER TABLE paysplit ADD KEY idx_pay (PayNum), ADD KEY idx_pat (PatNum), "
                 "ADD KEY idx_proc (ProcNum), ADD KEY idx_tedit (SecDateTEdit)"),
]
# ... then the FKs. With foreign_key_checks=0 and an index already on every FK column,
# these are metadata-only (no table scan or index build).
# paysplit.ProcNum has no FK: 0 means "not attached to a procedure", as in OpenDental.
POST_FKS = [
    "ALTER TABLE appointment ADD CONSTRAINT fk_apt_pat FOREIGN KEY (PatNum) REFERENCES patient (PatNum)",
    "ALTER TABLE procedurelog ADD CONSTRAINT fk_proc_pat FOREIGN KEY (PatNum) REFERENCES patient (PatNum), "
    "ADD CONSTRAINT fk_proc_code FOREIGN KEY (CodeNum) REFERENCES procedurecode (CodeNum)",
    "ALTER TABLE document ADD CONSTRAINT fk_doc_pat FOREIGN KEY (PatNum) REFERENCES patient (PatNum)",
    "ALTER TABLE claim ADD CONSTRAINT fk_claim_pat FOREIGN KEY (PatNum) REFERENCES patient (PatNum), "
    "ADD CONSTRAINT fk_claim_prov FOREIGN KEY (ProvTreat) REFERENCES provider (ProvNum)",
    "ALTER TABLE payment ADD CONSTRAINT fk_pay_pat FOREIGN KEY (PatNum) REFERENCES patient (PatNum)",
    "ALTER TABLE paysplit ADD CONSTRAINT fk_split_pay FOREIGN KEY (PayNum) REFERENCES payment (PayNum), "
    "ADD CONSTRAINT fk_split_pat FOREIGN KEY (PatNum) REFERENCES patient (PatNum)",
]


def sql_small():
    return [f"""
INSERT INTO definition SELECT seq, seq % 40, seq % 25, CONCAT('Def item ', seq),
  IF(seq % 3 = 0, '', CONCAT('v', seq)), -CAST({h('dc')} % 16777216 AS SIGNED), seq % 11 = 0
  FROM seq_1_to_{N_DEF}""", f"""
INSERT INTO provider SELECT seq, CONCAT('DOC', seq),
  ELT(1 + {h('pl')} % 6, 'Adams','Baker','Clark','Dubois','Evans','Fischer'),
  ELT(1 + {h('pf')} % 6, 'Amy','Ben','Carl','Dana','Émile','Fay'),
  ELT(1 + seq % 8, 'General','Hygienist','Endodontics','Orthodontics','Periodontics',
      'Prosthodontics','Oral Surgery','Pediatric'),
  seq % 5 = 0, seq % 17 = 0, IF(seq % 4 = 0, NULL, LPAD(seq * 7919, 10, '0')),
  ({h('pg')} % 50000) / 100, {h('pc')} % 16777216,
  ELT(1 + seq % 5, 'am', 'am,pm', 'pm,weekend', '', NULL),
  IF(seq % 10 = 0, DATE_ADD('2018-01-01', INTERVAL seq * 13 DAY), '0000-00-00'),
  FROM_UNIXTIME(1420070400 + {h('pt')} % 330000000)
  FROM seq_1_to_{N_PROV}""", f"""
INSERT INTO procedurecode SELECT seq, CONCAT('D', LPAD(seq, 4, '0')),
  CONCAT('Procedure ', seq, ' - ', ELT(1 + seq % 5, 'exam', 'filling, composite', 'crown "porcelain"', 'root canal', 'extraction')),
  CONCAT('Proc', seq), seq % 30, seq % 7, seq % 13 = 0, ({h('cf')} % 200000) / 100,
  IF(seq % 4 = 0, NULL, JSON_OBJECT('cat', seq % 30, 'taxable', seq % 2 = 1, 'tags', JSON_ARRAY('a', seq % 3))),
  FROM_UNIXTIME(1420070400 + {h('ct')} % 330000000)
  FROM seq_1_to_{N_CODE}"""]


def sql_patient(n):
    return f"""
INSERT INTO patient SELECT seq,
  IF({h('g')} % 3 = 0, seq, GREATEST(1, CAST(seq AS SIGNED) - CAST(1 + {h('g')} % 3 AS SIGNED))),
  ELT(1 + {h('ln')} % 24, 'Smith','Johnson','Williams','Brown','Jones','García','Miller','Davis',
      'Rodríguez','Martínez','Hernández','López','Gonzalez','Wilson','Anderson','Thomas','Taylor',
      'Moore','Jackson','Martin','Lee','O''Brien','Müller','Nguyễn'),
  ELT(1 + {h('fn')} % 20, 'James','Mary','Robert','Patricia','John','Jennifer','Michael','Linda',
      'David','Elizabeth','William','Barbara','Richard','Susan','José','Zoë','Chloé','Björn',
      'Łukasz','Siobhán'),
  IF({h('mi')} % 4 = 0, NULL, CHAR(65 + {h('mi')} % 26)),
  IF({h('pr')} % 5 = 0, ELT(1 + {h('pr')} % 3, 'Jim', 'Bob', 'Liz'), ''),
  ELT(1 + {h('st')} % 20, 'Patient','Patient','Patient','Patient','Patient','Patient','Patient',
      'Patient','Patient','Patient','Patient','Patient','NonPatient','Inactive','Inactive',
      'Archived','Deleted','Deceased','Prospective','Prospective'),
  {h('gd')} % 3, {h('ps')} % 5,
  IF({h('bd')} % 100 = 0, '0001-01-01', DATE_ADD('1930-01-01', INTERVAL {h('bd')} % 30000 DAY)),
  IF({h('ss')} % 3 = 0, NULL, LPAD({h('ss')} % 1000000000, 9, '0')),
  CONCAT({h('ad')} % 9999, ' ', ELT(1 + {h('ad')} % 5, 'Main St', 'Oak Ave', 'Elm Rd', 'Pine Ct', 'Maple Blvd')),
  ELT(1 + {h('ci')} % 6, 'Portland', 'Salem', 'Eugene', 'Bend', 'Medford', 'Corvallis'),
  ELT(1 + {h('ci')} % 3, 'OR', 'WA', 'CA'),
  LPAD({h('zp')} % 99999, 5, '0'),
  IF({h('ph')} % 10 = 0, '', CONCAT('(503)', LPAD({h('ph')} % 10000000, 7, '0'))),
  IF({h('em')} % 4 = 0, NULL, CONCAT('pt', seq, '@example.com')),
  ({h('eb')} % 500000) / 100 - 500,
  ({h('bt')} % 1000000) / 100,
  1 + {h('pp')} % {N_PROV},
  {h('ia')} % 10 <> 0, {h('hi')} % 2,
  {h('pc')} % 5,
  IF({h('fv')} % 10 < 3, '0000-00-00', DATE_ADD('2000-01-01', INTERVAL {h('fv')} % 9000 DAY)),
  IF({h('se')} % 50 = 0, NULL, FROM_UNIXTIME(1262304000 + {h('se')} % 470000000)),
  FROM_UNIXTIME(1420070400 + {h('ts')} % 330000000),
  CASE {h('nt')} % 10
    WHEN 4 THEN ''
    WHEN 5 THEN CONCAT('Line one\\nLine two, pt #', seq)
    WHEN 6 THEN CONCAT('Tab\\tseparated\\tnote ', seq)
    WHEN 7 THEN CONCAT('Path C:\\\\OpenDental\\\\', seq, ' and a literal \\\\N')
    WHEN 8 THEN 'NULL'
    WHEN 9 THEN CONCAT('Pays monthly; ', REPEAT('dolor sit amet ', 1 + {h('nt')} % 20))
    ELSE NULL END,
  IF({h('pf')} % 3 = 0, NULL, JSON_OBJECT('lang', ELT(1 + {h('pf')} % 3, 'en', 'es', 'fr'),
     'sms', {h('pf')} % 2 = 1, 'reminderDays', {h('pf')} % 7))
  FROM seq_1_to_{n}"""


def sql_appointment(lo, hi, n_pat):
    return f"""
INSERT INTO appointment SELECT seq, 1 + {h('ap')} % {n_pat},
  ELT(1 + {h('as')} % 10, 'Complete','Complete','Complete','Complete','Scheduled','Scheduled',
      'Broken','UnschedList','Planned','ASAP'),
  CONCAT(REPEAT('/', {h('pt')} % 3), REPEAT('X', 1 + {h('pt')} % 6), REPEAT('/', {h('pt')} % 2)),
  {h('cf')} % 20, 1 + {h('op')} % 12,
  CASE {h('nt')} % 8 WHEN 0 THEN CONCAT('Pt called\\nwill be late ', seq)
    WHEN 1 THEN 'needs premed'  WHEN 2 THEN CONCAT('Ins: "Delta" \\t group ', {h('nt')} % 9999)
    ELSE NULL END,
  1 + {h('pv')} % {N_PROV},
  IF({h('hy')} % 5 < 2, NULL, 1 + {h('hy')} % {N_PROV}),
  IF({h('as')} % 10 IN (7, 8), '0000-00-00 00:00:00',
     DATE_ADD(DATE_ADD('2012-01-01', INTERVAL {h('dt')} % 5000 DAY), INTERVAL (28 + {h('dt')} % 36) * 15 MINUTE)),
  IF({h('ar')} % 10 < 6, '0000-00-00 00:00:00',
     DATE_ADD(DATE_ADD('2012-01-01', INTERVAL {h('dt')} % 5000 DAY), INTERVAL (28 + {h('dt')} % 36) * 15 + {h('ar')} % 20 MINUTE)),
  IF({h('ar')} % 10 < 6, NULL,
     DATE_ADD(DATE_ADD('2012-01-01', INTERVAL {h('dt')} % 5000 DAY), INTERVAL (28 + {h('dt')} % 36) * 15 + 60 MINUTE)),
  {h('np')} % 12 = 0,
  ELT(1 + {h('pd')} % 5, 'PA, BWX, Pro', 'CompF-MOD', 'Cr-PFM #3', '', 'SRP-UR, SRP-UL'),
  IF({h('co')} % 20 = 0, -16776961, 0),
  {h('pi')} % 3,
  FROM_UNIXTIME(1325376000 + {h('en')} % 430000000),
  FROM_UNIXTIME(1420070400 + {h('ts')} % 330000000)
  FROM seq_{lo}_to_{hi}"""


def sql_procedurelog(lo, hi, n_pat, n_apt, tedit="FROM_UNIXTIME(1420070400 + {h7} % 330000000)"):
    tedit = tedit.format(h7=h('te'))
    return f"""
INSERT INTO procedurelog SELECT seq, 1 + {h('pa')} % {n_pat},
  IF({h('an')} % 10 < 3, NULL, 1 + {h('an')} % {n_apt}),
  1 + {h('cd')} % {N_CODE}, 1 + {h('cd')} % {N_PROV},
  DATE_ADD('2010-01-01', INTERVAL {h('dt')} % 5800 DAY),
  ({h('fe')} % 300000) / 100,
  IF({h('dc')} % 10 = 0, ({h('dc')} % 5000) / 100, 0),
  1 + {h('st')} % 7,
  {h('pr')} % 1000,
  IF({h('tn')} % 3 = 0, '', CAST(1 + {h('tn')} % 32 AS CHAR)),
  ELT(1 + {h('sf')} % 7, '', 'MOD', 'O', 'B', 'L', 'DL', 'MO'),
  IF({h('tr')} % 20 = 0, '2,3,4,5', NULL),
  IF({h('dg')} % 4 = 0, 'K02.52', ''),
  IF({h('bn')} % 10 = 0, CONCAT('Billing: see note\\t#', seq), NULL),
  1, {h('bu')} % 4, {h('lk')} % 7 = 0,
  SEC_TO_TIME({h('tm')} % 86400),
  IF({h('ec')} % 20 = 0, '0000-00-00', DATE_ADD('2010-01-01', INTERVAL {h('dt')} % 5800 DAY)),
  IF(1 + {h('st')} % 7 = 2,
     DATE_ADD(DATE_ADD('2010-01-01', INTERVAL {h('dt')} % 5800 DAY), INTERVAL {h('tm')} % 86400 SECOND), NULL),
  IF({h('sd')} % 50 = 0, '0000-00-00 00:00:00', FROM_UNIXTIME(1262304000 + {h('sd')} % 470000000)),
  {tedit}
  FROM seq_{lo}_to_{hi}"""


def sql_document(lo, hi, n_pat, safe_unsigned):
    # 1 row in 1000 (DocNum 1, 1001, 2001, ...) holds a BIGINT UNSIGNED value > 2^63;
    # DocNum 1 has it so that even tiny scales include one.
    big = "seq % 1000 = 1" if not safe_unsigned else "FALSE"
    return f"""
INSERT INTO document SELECT seq, 1 + {h('dp')} % {n_pat},
  CONCAT('img_', seq, ELT(1 + seq % 3, '.jpg', '.png', '.pdf')),
  FROM_UNIXTIME(1262304000 + {h('dd')} % 470000000),
  IF({h('ds')} % 4 = 0, NULL, CONCAT('Scan ', seq, ' – pano')),
  {h('it')} % 4,
  IF({big}, 18446744073709551615 - seq, CAST(CONV(LEFT(SHA2(CONCAT('fh', seq), 256), 15), 16, 10) AS UNSIGNED)),
  IF({h('tb')} % 10 = 0, NULL, REPEAT(UNHEX(SHA2(CONCAT('t', seq), 256)), 16 + {h('tb')} % 32)),
  IF({h('rb')} % 5 = 0, NULL, TO_BASE64(REPEAT(UNHEX(SHA2(CONCAT('r', seq), 512)), 20 + {h('rb')} % 40))),
  FROM_UNIXTIME(1420070400 + {h('ts')} % 330000000)
  FROM seq_{lo}_to_{hi}"""


def sql_claim(lo, hi, n_pat):
    # ClaimStatus (OpenDental): U unsent, H hold, W waiting, S sent, R received, I preauth.
    # Received claims get a paid amount computed in floating point (a DOUBLE with decimals).
    return f"""
INSERT INTO claim (ClaimNum, PatNum, ProvTreat, DateService, ClaimStatus, ClaimFee, InsPayAmt,
                   DateTStamp, SecDateTEdit)
SELECT seq, 1 + {hx('kp')} % {n_pat}, 1 + {hx('kv')} % {N_PROV},
  IF({hx('kd')} % 40 = 0, '0000-00-00', DATE_ADD('2010-01-01', INTERVAL {hx('kd')} % 5800 DAY)),
  ELT(1 + {hx('ks')} % 8, 'R', 'R', 'R', 'S', 'W', 'U', 'H', 'I'),
  ({hx('kf')} % 400000) / 100,
  IF({hx('ks')} % 8 < 3, ({hx('kf')} % 400000) / 100 * ((40 + {hx('ki')} % 61) / 100e0), 0),
  FROM_UNIXTIME(1420070400 + {hx('kt')} % 330000000),
  FROM_UNIXTIME(1420070400 + {hx('kt')} % 330000000 + {hx('ke')} % 86400)
  FROM seq_{lo}_to_{hi}"""


# payment.PatNum / PayDate are pure functions of PayNum, so paysplit rows (generated in
# parallel, without a join) carry the same patient and date as their payment.
def _pay_patnum(col, n_pat):
    return f"1 + {hx('yp', col)} % {n_pat}"


def _pay_date(col):
    return f"DATE_ADD('2010-01-01', INTERVAL {hx('yd', col)} % 5800 DAY)"


def sql_payment(lo, hi, n_pat):
    # PayType points at a definition row of category 10 (payment types: DefNum 10, 50, ...,
    # 290); 0 = income transfer. PayNote covers tab, newline, backslash, \N, 'NULL', emoji.
    return f"""
INSERT INTO payment (PayNum, PatNum, PayDate, PayAmt, PayType, PayNote, DateEntry, SecDateTEdit)
SELECT seq, {_pay_patnum('seq', n_pat)}, {_pay_date('seq')},
  IF({hx('yg')} % 50 = 0, -1, 1) * (({hx('ya')} % 200000) / 100),
  IF({hx('yt')} % 50 = 0, 0, 10 + 40 * ({hx('yt')} % 8)),
  CASE {hx('yn')} % 12
    WHEN 0 THEN ''
    WHEN 1 THEN 'Paid in full 🦷 thanks!'
    WHEN 2 THEN CONCAT('Check #', {hx('yk')} % 100000, '\\tBank of Oregon')
    WHEN 3 THEN CONCAT('Card ending ', LPAD({hx('yc')} % 10000, 4, '0'), '\\nauth ', HEX({hx('yc')}))
    WHEN 4 THEN 'NULL'
    WHEN 5 THEN CONCAT('Refund to C:\\\\Payments\\\\', seq, ' (was \\\\N)')
    WHEN 6 THEN 'Paiement reçu – merci'
    ELSE NULL END,
  IF({hx('ye')} % 20 = 0, '0000-00-00', DATE_ADD({_pay_date('seq')}, INTERVAL {hx('ye')} % 3 DAY)),
  FROM_UNIXTIME(1420070400 + {hx('yu')} % 330000000)
  FROM seq_{lo}_to_{hi}"""


def sql_paysplit(lo, hi, n_pat, n_pay, n_proc):
    # ProcNum 0 = unattached split (prepayment / income transfer), as in OpenDental.
    return f"""
INSERT INTO paysplit (SplitNum, PayNum, PatNum, ProcNum, SplitAmt, DatePay, SecDateTEdit)
SELECT s.seq, s.pay, {_pay_patnum('s.pay', n_pat)},
  IF({hx('zr', 's.seq')} % 10 < 3, 0, 1 + {hx('zr', 's.seq')} % {n_proc}),
  IF({hx('zg', 's.seq')} % 33 = 0, -1, 1) * (({hx('za', 's.seq')} % 100000) / 100),
  {_pay_date('s.pay')},
  FROM_UNIXTIME(1420070400 + {hx('zu', 's.seq')} % 330000000)
  FROM (SELECT seq, 1 + {hx('zn')} % {n_pay} AS pay FROM seq_{lo}_to_{hi}) s"""


# --------------------------------------------------------------------------- generate

def plan_rows(scale: float) -> dict[str, int]:
    """Exact row count of every table for a scale (what generate() will insert)."""
    if not scale > 0:
        raise ValueError("scale must be > 0")
    n = {k: max(MIN_ROWS, int(v * scale)) for k, v in BASE.items()}
    n.update(definition=N_DEF, provider=N_PROV, procedurecode=N_CODE)
    return {t: n[t] for t in TABLES}


def chunks(n, parts):
    step = -(-n // max(1, parts))
    return [(lo, min(n, lo + step - 1)) for lo in range(1, n + 1, step)]


def generate(url: str, scale: float, *, verbose: bool = False, jobs: int = 2,
             safe_unsigned: bool = False) -> dict[str, int]:
    """Drop and recreate the database named in ``url`` and fill it at ``scale``.

    Returns the number of rows in each table (in load order). ``jobs`` = parallel
    INSERT..SELECT sessions; ``safe_unsigned`` keeps document.FileHash below 2^63.
    """
    p = parse_url(url)
    if p.database.lower() in _SYSTEM_DBS:
        raise ValueError(f"refusing to drop system database {p.database!r}")
    n = plan_rows(scale)
    db = f"`{p.database}`"
    t0 = time.time()
    conn = _connect(p)
    try:
        _exec(conn, [f"DROP DATABASE IF EXISTS {db}",
                     f"CREATE DATABASE {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
                     f"USE {db}"] + DDL, "ddl", verbose)

        # Concurrent INSERT..SELECTs into one table serialise on InnoDB's table-level
        # AUTO-INC lock unless innodb_autoinc_lock_mode=2 (MariaDB's default is 1), so
        # the parallelism is across tables: a table's chunks run back to back in one job,
        # except in mode 2 where they are separate jobs. Biggest table first; each table's
        # secondary indexes start as soon as it is loaded (see _run_jobs).
        interleaved = _exec(conn, "SELECT @@innodb_autoinc_lock_mode")[0][0] == 2
        chunked = {
            "procedurelog": [sql_procedurelog(lo, hi, n["patient"], n["appointment"])
                             for lo, hi in chunks(n["procedurelog"], 4)],
            "appointment": [sql_appointment(lo, hi, n["patient"])
                            for lo, hi in chunks(n["appointment"], 2)],
        }
        loads = []
        for table, stmts in chunked.items():
            if interleaved:
                loads += [(table, f"{table} {i + 1}/{len(stmts)}", sql) for i, sql in enumerate(stmts)]
            else:
                loads.append((table, table, stmts))
        loads += [
            ("paysplit", "paysplit",
             sql_paysplit(1, n["paysplit"], n["patient"], n["payment"], n["procedurelog"])),
            ("patient", "patient", sql_patient(n["patient"])),
            ("claim", "claim", sql_claim(1, n["claim"], n["patient"])),
            ("payment", "payment", sql_payment(1, n["payment"], n["patient"])),
            ("document", "document", sql_document(1, n["document"], n["patient"], safe_unsigned)),
            ("small tables", "small tables", sql_small()),
        ]
        _run_jobs(p, loads, {t: (f"indexes {t}", sql) for t, sql in POST_INDEXES}, jobs, verbose)
        t1 = time.time()
        _exec(conn, POST_FKS, "foreign keys", verbose)
        _exec(conn, "ANALYZE TABLE " + ", ".join(TABLES), "analyze", verbose)
        t2 = time.time()
        if verbose:
            print(f"generated {p.redacted()} scale={scale} rows={sum(n.values())} "
                  f"load+indexes={t1 - t0:.1f}s fks+analyze={t2 - t1:.1f}s total={t2 - t0:.1f}s",
                  file=sys.stderr)
    finally:
        conn.close()
    return n


def table_sizes(url: str) -> dict[str, tuple[int, int]]:
    """(data_length, data_length + index_length) in bytes per table, from information_schema."""
    p = parse_url(url)
    conn = _connect(p)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name, data_length, data_length + index_length "
                        "FROM information_schema.tables WHERE table_schema = %s", (p.database,))
            return {t: (int(d), int(s)) for t, d, s in cur.fetchall()}
    finally:
        conn.close()


# --------------------------------------------------------------------------- mutate

Spread = Literal["uniform", "recent"]
SPREADS: tuple[str, ...] = ("uniform", "recent")
RECENT_STEP = 5  # spread="recent": every 5th key of the newest 5% (at pct=1) of the key space


def update_keys(max_id: int, k: int, mod: int, round_no: int, spread: Spread) -> tuple[int, int, int, int]:
    """Which procedurelog keys ``mutate`` updates: ``(lo, hi, step, rest)`` = every ProcNum in
    [lo, hi] with ProcNum % step == rest.

    ``uniform``: every ``mod``-th key of the whole table (one row on every data page).
    ``recent``: the same number of rows (``k``) among the newest keys, as a clinic edits today's
    procedures: every 5th key of the last ``5 * k`` keys (fewer keys apart when the table is too
    small for that). ``round_no`` picks the residue, so successive rounds touch different rows.
    """
    if spread == "uniform":
        return 1, max_id, mod, (37 + round_no) % mod
    if spread != "recent":
        raise ValueError(f"spread must be one of {', '.join(SPREADS)}, not {spread!r}")
    step = max(1, min(RECENT_STEP, max_id // max(k, 1)))
    return max(1, max_id - k * step + 1), max_id, step, round_no % step


def mutate(url: str, round_no: int, *, pct: float = 1.0, spread: Spread = "uniform",
           verbose: bool = False) -> dict:
    """Incremental change set on procedurelog: update ``pct``% of the rows (ProcFee + 1,
    ProcStatus = 2, so SecDateTEdit moves via ON UPDATE CURRENT_TIMESTAMP) and insert
    ``pct``% new rows (SecDateTEdit = NOW()). ``spread`` says where the updated rows are
    (see ``update_keys``): ``uniform`` (ProcNum % (100/pct) == (37 + round_no) % (100/pct),
    spread over every page) or ``recent`` (every 5th of the newest keys). ``round_no`` picks
    which rows get updated, so successive rounds touch different rows. At least one row is
    inserted.
    """
    if not 0 < pct <= 100:
        raise ValueError("pct must be in (0, 100]")
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {', '.join(SPREADS)}, not {spread!r}")
    p = parse_url(url)
    conn = _connect(p, p.database, session=MUTATE_SESSION)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*), COALESCE(MAX(ProcNum), 0) FROM procedurelog")
            n_rows, max_id = (int(x) for x in cur.fetchone())
            cur.execute("SELECT COALESCE(MAX(PatNum), 0) FROM patient")
            n_pat = int(cur.fetchone()[0])
            cur.execute("SELECT COALESCE(MAX(AptNum), 0) FROM appointment")
            n_apt = int(cur.fetchone()[0])
        if n_pat < 1 or n_apt < 1:
            raise RuntimeError(f"{p.redacted()}: no patients/appointments; run generate() first")
        k = max(1, int(n_rows * pct / 100))
        mod = max(1, int(round(100 / pct)))
        lo, hi, step, rest = update_keys(max_id, k, mod, round_no, spread)
        t0 = time.time()
        with conn.cursor() as cur:
            cur.execute("UPDATE procedurelog SET ProcFee = ProcFee + 1.00, ProcStatus = 2 "
                        "WHERE ProcNum BETWEEN %s AND %s AND ProcNum %% %s = %s", (lo, hi, step, rest))
            updated = cur.rowcount
        _exec(conn, sql_procedurelog(max_id + 1, max_id + k, n_pat, n_apt, tedit="NOW()"),
              "insert", verbose)
        secs = time.time() - t0
    finally:
        conn.close()
    return {"database": p.database, "table": "procedurelog", "round": round_no, "spread": spread,
            "updated": updated, "updated_ids": (lo, hi, step, rest), "inserted": k, "first_new_id": max_id + 1,
            "last_new_id": max_id + k, "seconds": round(secs, 3)}


# --------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=DEFAULT_URL,
                    help="SQLAlchemy-style URL; the database in it is dropped and recreated "
                         f"(default {DEFAULT_URL})")
    ap.add_argument("--scale", type=float, default=1.0, help="1 = ~3M rows (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel INSERT..SELECT sessions")
    ap.add_argument("--safe-unsigned", action="store_true",
                    help="keep document.FileHash < 2^63 (no unsigned-bigint overflow rows)")
    ap.add_argument("--mutate", action="store_true", help="apply the incremental change set instead")
    ap.add_argument("--pct", type=float, default=1.0, help="--mutate: percent updated and inserted")
    ap.add_argument("--round", type=int, default=0, help="--mutate: picks which 1%% gets updated")
    ap.add_argument("--spread", choices=SPREADS, default="uniform",
                    help="--mutate: which rows get updated: uniform = every 100th key of the whole table "
                         "(default), recent = every 5th key of the newest 5%% (as a clinic edits recent rows)")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-step timings on stderr")
    args = ap.parse_args(argv)
    try:
        p = parse_url(args.url)
        if args.mutate:
            r = mutate(args.url, args.round, pct=args.pct, spread=args.spread, verbose=args.verbose)
            lo, hi, step, rest = r["updated_ids"]
            print(f"mutated {p.redacted()} procedurelog: {r['updated']} updated, {r['inserted']} "
                  f"inserted (ids {r['first_new_id']}-{r['last_new_id']}) in {r['seconds']:.1f}s; "
                  f"spread {r['spread']}: updated ids {lo}-{hi} with id % {step} = {rest}")
            return 0
        t0 = time.time()
        rows = generate(args.url, args.scale, verbose=args.verbose, jobs=args.jobs,
                        safe_unsigned=args.safe_unsigned)
        secs = time.time() - t0
        sizes = table_sizes(args.url)
    except (ValueError, RuntimeError, pymysql.MySQLError) as e:
        # messages name the user/host/db, never the password
        print(f"gen_dental: error: {e}", file=sys.stderr)
        return 1
    print(f"generated {p.redacted()} scale={args.scale} rows={sum(rows.values())} in {secs:.1f}s")
    for t, r in rows.items():
        d, s = sizes.get(t, (0, 0))
        print(f"  {t:<14} {r:>10} rows  data {d / 1e6:8.1f} MB  data+idx {s / 1e6:8.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
