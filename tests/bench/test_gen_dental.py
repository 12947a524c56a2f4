"""Tests for bench/gen_dental.py (needs the MariaDB server; skipped if it is unreachable).

Server: $GEN_DENTAL_TEST_URL (no database part), default mysql+pymysql://root@127.0.0.1:3306.
Every database (gen_test_<hex>) and user this module creates is dropped afterwards.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pymysql
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Load by path so a tests/bench package (or any other "bench" on sys.path) can't shadow it.
_spec = importlib.util.spec_from_file_location("gen_dental", ROOT / "bench" / "gen_dental.py")
gd = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gd  # dataclasses look the module up while it executes
_spec.loader.exec_module(gd)

SERVER_URL = os.environ.get("GEN_DENTAL_TEST_URL", "mysql+pymysql://root@127.0.0.1:3306").rstrip("/")
SCALE = 0.0005
BIG = 2 ** 63


def _root_conn(db=None):
    p = gd.parse_url(f"{SERVER_URL}/{db or 'mysql'}")
    return pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                           database=db, charset="utf8mb4", autocommit=True,
                           unix_socket=p.unix_socket)


def _q(db, sql, args=None):
    conn = _root_conn(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server():
    try:
        _root_conn().close()
    except pymysql.err.OperationalError as e:
        pytest.skip(f"MariaDB not reachable at {gd.parse_url(SERVER_URL + '/x').redacted()}: {e}")


@pytest.fixture(scope="module")
def new_db(server):
    """Factory: a fresh unique database URL; all of them are dropped at module teardown."""
    created = []

    def make():
        name = f"gen_test_{secrets.token_hex(6)}"
        created.append(name)
        return f"{SERVER_URL}/{name}"

    try:
        yield make
    finally:
        conn = _root_conn()
        try:
            with conn.cursor() as cur:
                for name in created:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def tiny(new_db):
    url = new_db()
    rows = gd.generate(url, SCALE)
    return url, gd.parse_url(url).database, rows


# --------------------------------------------------------------------------- pure functions

def test_parse_url_percent_encoded_password_and_defaults():
    pw = "p@ss:w/o%rd#?&+ 'x\""
    p = gd.parse_url(f"mysql+pymysql://app%20user:{quote(pw, safe='')}@db.example:3307/shop")
    assert (p.user, p.password, p.host, p.port, p.database) == ("app user", pw, "db.example", 3307, "shop")
    assert pw not in repr(p) and pw not in p.redacted()
    assert p.redacted() == "mysql+pymysql://app user:***@db.example:3307/shop"

    d = gd.parse_url("mysql+pymysql://root@127.0.0.1")
    assert (d.user, d.password, d.port, d.database) == ("root", "", 3306, "clinic")
    assert "***" not in d.redacted()
    assert gd.parse_url("mariadb://u@h/x?unix_socket=/run/mysqld/mysqld.sock").unix_socket \
        == "/run/mysqld/mysqld.sock"

    with pytest.raises(ValueError):
        gd.parse_url("postgresql://u@h/db")
    with pytest.raises(ValueError):
        gd.parse_url("mysql://u@h/bad`name")


def test_plan_rows_tiny_scale_has_rows_everywhere():
    n = gd.plan_rows(SCALE)
    assert list(n) == list(gd.TABLES)
    assert min(n.values()) >= 5
    assert gd.plan_rows(1)["procedurelog"] == 2_000_000
    assert gd.plan_rows(1)["claim"] == 150_000
    with pytest.raises(ValueError):
        gd.plan_rows(0)


def test_refuses_system_database():
    with pytest.raises(ValueError):
        gd.generate("mysql+pymysql://root@127.0.0.1/mysql", SCALE)


# --------------------------------------------------------------------------- database

def test_every_table_has_the_reported_rows(tiny):
    _, db, rows = tiny
    assert set(rows) == set(gd.TABLES)
    tables = {r[0] for r in _q(db, "SHOW TABLES")}
    assert tables == set(gd.TABLES)
    for t, n in rows.items():
        assert n > 0
        assert _q(db, f"SELECT COUNT(*) FROM `{t}`")[0][0] == n, t


def test_deterministic_same_scale_same_data(tiny, new_db):
    _, db_a, rows_a = tiny
    url_b = new_db()
    db_b = gd.parse_url(url_b).database
    assert gd.generate(url_b, SCALE) == rows_a
    for t in gd.TABLES:
        (_, ca), = _q(db_a, f"CHECKSUM TABLE `{t}`")
        (_, cb), = _q(db_b, f"CHECKSUM TABLE `{t}`")
        assert ca == cb and ca is not None, t
        assert _q(db_a, f"SHOW CREATE TABLE `{t}`")[0][1] == _q(db_b, f"SHOW CREATE TABLE `{t}`")[0][1]


def test_edge_values_present(tiny):
    _, db, _ = tiny

    def count(sql):
        return _q(db, sql)[0][0]

    # zero dates in NOT NULL columns, and year 1
    assert count("SELECT COUNT(*) FROM provider WHERE DateTerm = '0000-00-00'") > 0
    assert count("SELECT COUNT(*) FROM patient WHERE DateFirstVisit = '0000-00-00'") > 0
    assert count("SELECT COUNT(*) FROM appointment WHERE AptDateTime = '0000-00-00 00:00:00'") > 0
    assert count("SELECT COUNT(*) FROM claim WHERE DateService = '0000-00-00'") > 0
    assert count("SELECT COUNT(*) FROM patient WHERE Birthdate = '0001-01-01'") > 0
    # BIGINT UNSIGNED above 2^63 (DocNum 1 always has one)
    assert count(f"SELECT COUNT(*) FROM document WHERE FileHash > {BIG}") >= 1
    (fh,), = _q(db, "SELECT FileHash FROM document WHERE DocNum = 1")
    assert fh > BIG
    # text: tab, newline, backslash + literal \N, the string 'NULL', NULL, 4-byte utf8mb4
    tab = _q(db, "SELECT BillingNote FROM procedurelog WHERE BillingNote LIKE %s LIMIT 1", ("%\t%",))
    assert tab and "\t" in tab[0][0]
    assert count("SELECT COUNT(*) FROM payment WHERE PayNote LIKE '%\\t%'") > 0
    assert count("SELECT COUNT(*) FROM patient WHERE FamFinUrgNote LIKE '%\\n%'") > 0
    notes = [r[0] for r in _q(db, "SELECT FamFinUrgNote FROM patient WHERE FamFinUrgNote LIKE 'Path%'")]
    assert notes and all("\\N" in s and "C:\\OpenDental\\" in s for s in notes)
    assert count("SELECT COUNT(*) FROM patient WHERE FamFinUrgNote = 'NULL'") > 0
    assert count("SELECT COUNT(*) FROM patient WHERE FamFinUrgNote IS NULL") > 0
    emoji = _q(db, "SELECT PayNote FROM payment WHERE PayNote LIKE 'Paid in full%' LIMIT 1")
    assert emoji and "\U0001F9B7" in emoji[0][0]
    # JSON (longtext + json_valid), ENUM, SET
    assert count("SELECT COUNT(*) FROM patient WHERE JSON_VALID(Preferences)") > 0
    assert count("SELECT COUNT(*) FROM provider WHERE FIND_IN_SET('weekend', SchedFlags)") > 0
    # paysplit rows agree with their payment (same patient and date)
    assert count("SELECT COUNT(*) FROM paysplit s JOIN payment p USING (PayNum) "
                 "WHERE s.PatNum <> p.PatNum OR s.DatePay <> p.PayDate") == 0


def test_schema_types_and_constraints(tiny):
    _, db, _ = tiny
    cols = {(t, c): (ct, extra) for t, c, ct, extra in _q(
        None, "SELECT table_name, column_name, column_type, extra FROM information_schema.columns "
              "WHERE table_schema = %s", (db,))}
    assert cols[("document", "FileHash")][0] == "bigint(20) unsigned"
    assert cols[("claim", "ClaimStatus")][0] == "char(1)"
    assert cols[("claim", "ClaimFee")][0] == "decimal(10,2)"
    assert cols[("claim", "InsPayAmt")][0] == "double"
    assert cols[("payment", "PayAmt")][0] == "decimal(10,2)"
    assert cols[("paysplit", "SplitAmt")][0] == "decimal(10,2)"
    for t, c in [("procedurelog", "SecDateTEdit"), ("claim", "DateTStamp"), ("claim", "SecDateTEdit"),
                 ("payment", "SecDateTEdit"), ("paysplit", "SecDateTEdit")]:
        ct, extra = cols[(t, c)]
        assert ct == "timestamp" and "on update" in extra.lower(), (t, c)
    fks = {r[0] for r in _q(None, "SELECT constraint_name FROM information_schema.referential_constraints "
                                  "WHERE constraint_schema = %s", (db,))}
    assert {"fk_proc_pat", "fk_proc_code", "fk_claim_pat", "fk_pay_pat", "fk_split_pay"} <= fks
    # FKs hold for the generated data
    assert _q(db, "SELECT COUNT(*) FROM paysplit s LEFT JOIN payment p USING (PayNum) "
                  "WHERE p.PayNum IS NULL")[0][0] == 0
    assert _q(db, "SELECT COUNT(*) FROM claim c LEFT JOIN provider v ON v.ProvNum = c.ProvTreat "
                  "WHERE v.ProvNum IS NULL")[0][0] == 0


def test_mutate_updates_and_inserts_one_percent(new_db):
    url = new_db()
    db = gd.parse_url(url).database
    rows = gd.generate(url, SCALE)
    n = rows["procedurelog"]
    (start,), = _q(db, "SELECT NOW()")
    r = gd.mutate(url, 1)
    assert r["inserted"] == n // 100 and r["first_new_id"] == n + 1 and r["last_new_id"] == n + n // 100
    assert r["updated"] == n // 100  # ProcNum % 100 == 38
    assert _q(db, "SELECT COUNT(*) FROM procedurelog")[0][0] == n + n // 100
    # touched rows got a server-clock SecDateTEdit (generated ones are all before mid-2025)
    recent = _q(db, "SELECT COUNT(*) FROM procedurelog WHERE SecDateTEdit >= %s", (start,))[0][0]
    assert recent == r["updated"] + r["inserted"]
    r2 = gd.mutate(url, 2)
    assert r2["first_new_id"] == r["last_new_id"] + 1


def test_mutate_recent_updates_every_fifth_of_the_newest_keys(new_db):
    url = new_db()
    db = gd.parse_url(url).database
    n = gd.generate(url, SCALE)["procedurelog"]
    k = n // 100
    before = dict(_q(db, "SELECT ProcNum, ProcFee FROM procedurelog"))
    (start,), = _q(db, "SELECT NOW()")
    r = gd.mutate(url, 3, spread="recent")
    # the same number of rows as "uniform", all among the newest 5 * k keys: 3 = round 3 % 5
    want = {i for i in range(n - 5 * k + 1, n + 1) if i % 5 == 3}
    assert len(want) == k and r["updated"] == k and r["spread"] == "recent"
    assert r["inserted"] == k and r["first_new_id"] == n + 1
    touched = {i for (i,) in _q(db, "SELECT ProcNum FROM procedurelog WHERE SecDateTEdit >= %s AND ProcNum <= %s",
                                (start, n))}
    assert touched == want
    after = dict(_q(db, "SELECT ProcNum, ProcFee FROM procedurelog WHERE ProcNum <= %s", (n,)))
    assert {i for i in before if after[i] != before[i]} == want
    assert all(after[i] == before[i] + 1 for i in want)
    assert _q(db, "SELECT COUNT(*) FROM procedurelog WHERE ProcNum > %s AND SecDateTEdit >= %s", (n, start))[0][0] == k
    # the next round picks other rows among the (moved) newest keys
    r2 = gd.mutate(url, 4, spread="recent")
    lo, hi, step, rest = r2["updated_ids"]
    assert (hi, step, rest) == (n + k, 5, 4) and lo == n + k - 5 * (n + k) // 100 + 1
    with pytest.raises(ValueError, match="uniform, recent"):
        gd.mutate(url, 1, spread="everywhere")


def test_job_error_is_raised(tiny):
    url, _, _ = tiny
    with pytest.raises(RuntimeError, match="broken"):
        gd._run_jobs(gd.parse_url(url), [("x", "broken", "SELEC 1")], {}, 2, False)


def test_cli_with_special_password_never_prints_it(new_db):
    url = new_db()
    db = gd.parse_url(url).database
    user = "gen_u_" + secrets.token_hex(4)
    pw = "Pa%s:w@rd/#?&+ x" + secrets.token_hex(2)
    p = gd.parse_url(SERVER_URL + "/x")
    conn = _root_conn()
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (pw,))
            except pymysql.MySQLError as e:
                pytest.skip(f"cannot create a test user: {e}")
            cur.execute(f"GRANT ALL ON `{db.replace('_', chr(92) + '_')}`.* TO '{user}'@'%'")
        cli_url = f"mysql+pymysql://{user}:{quote(pw, safe='')}@{p.host}:{p.port}/{db}"
        cmd = [sys.executable, str(ROOT / "bench" / "gen_dental.py"), "--url", cli_url,
               "--scale", str(SCALE), "-v"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert pw not in out.stdout + out.stderr
        assert quote(pw, safe="") not in out.stdout + out.stderr
        assert f"{user}:***@" in out.stdout
        assert "paysplit" in out.stdout
        assert _q(db, "SELECT COUNT(*) FROM claim")[0][0] == gd.plan_rows(SCALE)["claim"]

        mut = subprocess.run(cmd[:-1] + ["--mutate", "--round", "3"], capture_output=True,
                             text=True, timeout=300)
        assert mut.returncode == 0, mut.stderr
        assert "mutated" in mut.stdout and pw not in mut.stdout + mut.stderr

        bad_url = cli_url.replace(quote(pw, safe=""), quote(pw + "wrong", safe=""))
        bad = subprocess.run(cmd[:3] + [bad_url, "--scale", str(SCALE)], capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 1
        assert pw not in bad.stdout + bad.stderr and "Access denied" in bad.stderr
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        conn.close()
