"""Never write to production (issue 16), on the real servers: tasks/guard.py and tasks/owned.py.

Plain functions and the plain runner only (no Prefect): the same checks run in `etl run`'s flow,
`etl plan`, `etl verify --repair` and `etl blocks register` (one function, tasks/guard.check_run).
"""
from __future__ import annotations

import secrets
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy.engine import make_url

from config.settings import Settings
from config.sources import load_sources
from tasks import owned
from tasks.connections import EngineUrls
from tasks.errors import ConfigError, SchemaError
from tasks.guard import check_clinics, check_targets
from tasks.identity import MysqlServer, held_marker, sees_markers
from tests.conftest import MYSQL, _mysql_url, mysql_connect

CONFIG = """
tables:
  patient: {primary_key: [PatNum]}
  claim: {primary_key: [ClaimNum]}
"""
PRODUCTION = """
CREATE TABLE patient (PatNum INT PRIMARY KEY, LName VARCHAR(20), Edits INT NOT NULL DEFAULT 0);
CREATE TABLE claim (ClaimNum INT PRIMARY KEY, PatNum INT NOT NULL,
                    CONSTRAINT fk_claim_patient FOREIGN KEY (PatNum) REFERENCES patient (PatNum));
CREATE TRIGGER patient_edits BEFORE UPDATE ON patient FOR EACH ROW SET NEW.Edits = OLD.Edits + 1;
INSERT INTO patient (PatNum, LName) VALUES (1, 'Ames'), (2, 'Bo');
INSERT INTO claim VALUES (10, 1), (11, 2);
"""


def _catalog(db: str) -> dict:
    """Tables, triggers, foreign keys and rows of a MySQL database (what must stay exactly as it was)."""
    conn = mysql_connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY 1", (db,))
            tables = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s", (db,))
            triggers = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT CONSTRAINT_NAME, REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS "
                        "WHERE CONSTRAINT_SCHEMA = %s", (db,))
            fks = sorted(cur.fetchall())
            rows = {}
            for t in tables:
                cur.execute(f"SELECT * FROM `{t}` ORDER BY 1")
                rows[t] = cur.fetchall()
        return {"tables": tables, "triggers": triggers, "fks": fks, "rows": rows}
    finally:
        conn.close()


def _pg_schemas(env) -> set[str]:  # noqa: ANN001
    with env.pg() as pg, pg.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'")
        return {r[0] for r in cur.fetchall()}


def _database_exists(db: str) -> bool:
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,))
            return cur.fetchone() is not None
    finally:
        conn.close()


@pytest.fixture
def password_user(etl_env) -> Iterator[str]:  # noqa: ANN001
    """A MySQL account with a password (root has none here), allowed on the test's databases."""
    user, password = f"etlt_{secrets.token_hex(3)}", f"pw{secrets.token_hex(6)}"
    conn = mysql_connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cur.execute(f"GRANT ALL ON `{etl_env.prefix}\\_%`.* TO '{user}'@'%'")
    try:
        yield f"{user}:{password}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        conn.close()


def test_same_url_for_source_and_replica_is_refused_and_nothing_is_created(
        etl_env, password_user, monkeypatch, capsys) -> None:  # noqa: ANN001
    etl_env.source_sql(PRODUCTION)
    etl_env.write_config(CONFIG)
    before = _catalog(etl_env.source_db)
    url = f"mysql+pymysql://{password_user}@{MYSQL['host']}:{MYSQL['port']}/{etl_env.source_db}"
    monkeypatch.setenv("ETL_SOURCE_URL", url)
    monkeypatch.setenv("ETL_REPLICA_URL", url)

    assert etl_env.run() == 2
    err = capsys.readouterr().err
    assert "ETL_REPLICA_URL names the source database itself" in err and "ETL_SOURCE_URL" in err
    assert "Nothing was created or written" in err and len(err.strip().splitlines()) == 1
    assert password_user.split(":")[1] not in err
    # Production exactly as it was: its two tables, trigger, foreign key and rows; no _etl_* table.
    assert _catalog(etl_env.source_db) == before
    assert before["triggers"] == ["patient_edits"] and before["fks"] == [("fk_claim_patient", "patient")]
    # Nothing in analytics either: no schema raw, no metrics schema.
    assert not {"raw", "etl"} & _pg_schemas(etl_env)
    # `etl plan`, `etl verify --repair` and `etl blocks register` refuse it the same way (exit 2, one
    # line, before any block is saved), and write nothing.
    for command in (["plan"], ["verify", "--repair"], ["blocks", "register"]):
        assert etl_env.etl(*command) == 2, command
        err = capsys.readouterr().err
        assert "names the source database itself" in err and len(err.strip().splitlines()) == 1, (command, err)
    assert _catalog(etl_env.source_db) == before
    assert not {"raw", "etl"} & _pg_schemas(etl_env)


class _Forwarder:
    """A TCP port forwarding to the MySQL server: another address of the same server."""

    def __init__(self, port: int) -> None:
        self.target = (MYSQL["host"], port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def _socket_path() -> str | None:
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@socket")
            path = cur.fetchone()[0]
    finally:
        conn.close()
    return path if path and Path(path).exists() else None


def _urls(env, replica: str) -> EngineUrls:  # noqa: ANN001
    return EngineUrls(source=env.source_url, replica=replica, analytics=env.analytics_url)


def test_a_replica_url_spelled_differently_is_the_same_server(etl_env) -> None:  # noqa: ANN001
    etl_env.source_sql(PRODUCTION)
    user = MYSQL["user"] + (f":{MYSQL['password']}" if MYSQL["password"] else "")
    forwarder = _Forwarder(MYSQL["port"])
    spellings = {
        "localhost": f"mysql+pymysql://{user}@localhost:{MYSQL['port']}/{{db}}",
        "127.0.0.1": f"mysql+pymysql://{user}@127.0.0.1:{MYSQL['port']}/{{db}}",
        "forwarded port": f"mysql+pymysql://{user}@127.0.0.1:{forwarder.port}/{{db}}",
    }
    sock = _socket_path()
    if sock:
        spellings["socket"] = f"mysql+pymysql://{user}@localhost/{{db}}?unix_socket={sock}"
    try:
        for how, template in spellings.items():
            with pytest.raises(ConfigError, match="names the source database itself") as e:
                check_targets(_urls(etl_env, template.format(db=etl_env.source_db)), pg_schema="raw")
            assert "ETL_REPLICA_URL" in str(e.value) and "ETL_SOURCE_URL" in str(e.value), how
            # Another database on the same server is a replica of its own (the demo's setup): accepted.
            found = check_targets(_urls(etl_env, template.format(db=etl_env.replica_db)), pg_schema="raw")
            assert found.same_server, how
    finally:
        forwarder.close()
    assert _catalog(etl_env.source_db)["tables"] == ["claim", "patient"]
    assert not _database_exists(etl_env.replica_db)


def test_the_marker_decides_and_the_variables_stand_in() -> None:
    """The lock marker is seen by every session of its server and by no other; without it the
    servers' variables decide (server_uuid where MySQL has one, else server_id, hostname, port, datadir)."""
    a, b = mysql_connect(), mysql_connect()
    try:
        with a.cursor() as ca, b.cursor() as cb:
            with held_marker(ca) as name:
                assert name and sees_markers(cb, [name, None]) == [True, None]
            assert sees_markers(cb, [name]) == [False]  # released: a session elsewhere sees no such lock
    finally:
        a.close()
        b.close()
    maria = MysqlServer(None, 1, "vm", 3306, "/var/lib/mysql/", 0)
    assert maria.same_as(MysqlServer(None, 1, "vm", 3306, "/var/lib/mysql/", 0))
    assert not maria.same_as(MysqlServer(None, 1, "vm", 3307, "/var/lib/mysql2/", 0))
    mysql8 = MysqlServer("u-1", 1, "db", 3306, "/var/lib/mysql/", 0)
    assert not mysql8.same_as(MysqlServer("u-2", 1, "db", 3306, "/var/lib/mysql/", 0))
    assert MysqlServer(None, 1, "h", 1, "d", 1).same_database("Clinic", "clinic")
    assert not maria.same_database("Clinic", "clinic")


def _app_database(env) -> None:  # noqa: ANN001
    """The replica URL names an existing application database holding the source's tables."""
    conn = mysql_connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{env.replica_db}`")
        cur.execute(f"USE `{env.replica_db}`")
        cur.execute("CREATE TABLE patient (PatNum INT PRIMARY KEY, LName VARCHAR(20), Edits INT NOT NULL DEFAULT 0)")
        cur.execute("CREATE TRIGGER app_trigger BEFORE UPDATE ON patient FOR EACH ROW SET NEW.Edits = OLD.Edits + 1")
        cur.execute("INSERT INTO patient (PatNum, LName) VALUES (99, 'App')")
    conn.close()


def test_an_application_database_as_replica_is_refused_unless_adopted(etl_env, capsys) -> None:  # noqa: ANN001
    etl_env.source_sql(PRODUCTION)
    etl_env.write_config(CONFIG)
    _app_database(etl_env)
    app = _catalog(etl_env.replica_db)

    assert etl_env.run() == 2
    err = capsys.readouterr().err
    assert "ETL_REPLICA_URL" in err and "application database" in err and "patient" in err
    assert "replica: {adopt: true}" in err and len(err.strip().splitlines()) == 1
    assert _catalog(etl_env.replica_db) == app  # untouched: no _etl_* table, the trigger still there
    assert not {"raw", "etl"} & _pg_schemas(etl_env)

    etl_env.write_config(CONFIG + "replica: {adopt: true}\n")
    etl_env.run_plain()
    after = _catalog(etl_env.replica_db)
    assert after["rows"]["patient"] == _catalog(etl_env.source_db)["rows"]["patient"]
    conn = mysql_connect(etl_env.replica_db)
    with conn.cursor() as cur:
        cur.execute("SELECT table_name, how FROM _etl_owned ORDER BY 1")
        assert cur.fetchall() == (("claim", "created"), ("patient", "adopted"))
    conn.close()


def test_an_analytics_schema_holding_other_tables_is_refused_unless_adopted(
        etl_env, monkeypatch, capsys) -> None:  # noqa: ANN001
    etl_env.source_sql(PRODUCTION)
    etl_env.write_config(CONFIG)
    with etl_env.pg() as pg, pg.cursor() as cur:
        cur.execute("CREATE TABLE public.invoices (id int PRIMARY KEY)")
        cur.execute("INSERT INTO public.invoices VALUES (7)")
    monkeypatch.setenv("ETL_ANALYTICS_SCHEMA", "public")

    assert etl_env.run() == 2
    err = capsys.readouterr().err
    assert "ETL_ANALYTICS_SCHEMA" in err and "'public'" in err and "invoices" in err
    assert "analytics: {adopt: true}" in err
    assert not _database_exists(etl_env.replica_db)  # refused before the replica database was created
    assert "etl" not in _pg_schemas(etl_env)

    monkeypatch.setenv("ETL_ANALYTICS_SCHEMA", "etl")
    assert etl_env.run() == 2
    assert "bookkeeping schema" in capsys.readouterr().err

    monkeypatch.setenv("ETL_ANALYTICS_SCHEMA", "public")
    etl_env.write_config(CONFIG.replace("tables:", "analytics: {adopt: true}\ntables:"))
    etl_env.run_plain()
    with etl_env.pg() as pg, pg.cursor() as cur:
        cur.execute("SELECT id FROM public.invoices")
        assert cur.fetchall() == [(7,)]
        cur.execute('SELECT "patnum" FROM public.patient ORDER BY 1')
        assert cur.fetchall() == [(1,), (2,)]
        cur.execute("SELECT schema_name, how FROM etl.owned_schemas")
        assert cur.fetchall() == [("public", "adopted")]


def test_the_replica_leg_never_replaces_a_table_it_does_not_own(etl_env, capsys) -> None:  # noqa: ANN001
    etl_env.source_sql(PRODUCTION)
    etl_env.write_config("tables:\n  patient: {primary_key: [PatNum]}\n")
    etl_env.run_plain()  # the replica database is ours now
    # Someone keeps a table of their own in it; the source gets a table of that name, the config too.
    conn = mysql_connect(etl_env.replica_db)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE claim (ClaimNum INT PRIMARY KEY, PatNum INT NOT NULL, Mine INT)")
        cur.execute("INSERT INTO claim VALUES (1, 1, 42)")
    conn.close()
    etl_env.write_config(CONFIG)
    result = etl_env.run_plain(check=False)
    assert result.failed == ["claim"]
    [error] = [o.error for o in result.outcomes if o.table == "claim"]
    assert f"replica table {etl_env.replica_db}.claim was not created by the ETL" in error
    assert "replica: {adopt: true}" in error
    assert _catalog(etl_env.replica_db)["rows"]["claim"] == ((1, 1, 42),)  # not replaced, not dropped

    # Upgrade path: a replica from before _etl_owned still owns its tables through _etl_state.
    conn = mysql_connect(etl_env.replica_db)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE _etl_owned")
        assert owned.owns(cur, etl_env.replica_db, "patient") and not owned.owns(cur, etl_env.replica_db, "claim")
        with pytest.raises(SchemaError, match="only its own"):
            owned.drop_scratch(cur, "patient")
    conn.close()
    etl_env.run_plain(tables=["patient"], full_refresh=True)  # replaces its own table as before

    etl_env.write_config(CONFIG + "replica: {adopt: true}\n")
    etl_env.run_plain()
    assert _catalog(etl_env.replica_db)["rows"]["claim"] == ((10, 1), (11, 2))


def test_an_existing_install_is_ours_without_the_new_records(etl_env) -> None:  # noqa: ANN001
    """Installs from before the guard: our state present = ours (replica _etl_state, etl.table_state)."""
    etl_env.source_sql(PRODUCTION)
    etl_env.write_config(CONFIG)
    etl_env.run_plain()
    with etl_env.pg() as pg, pg.cursor() as cur:
        cur.execute("DROP TABLE etl.owned_schemas")
    conn = mysql_connect(etl_env.replica_db)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE _etl_owned")
    conn.close()
    etl_env.run_plain(full_refresh=True)
    with etl_env.pg() as pg, pg.cursor() as cur:
        cur.execute("SELECT schema_name, how FROM etl.owned_schemas")
        assert cur.fetchall() == [("raw", "state")]


def test_a_clinics_replica_that_is_another_clinics_source_is_refused(etl_env, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    north, south, east = (f"{etl_env.prefix}_{n}" for n in ("north", "south", "east"))
    conn = mysql_connect()
    with conn.cursor() as cur:
        for db in (north, south, east):
            cur.execute(f"CREATE DATABASE `{db}`")
    conn.close()
    localhost = _mysql_url(north).replace(f"@{MYSQL['host']}:", "@localhost:")
    path = tmp_path / "sources.yml"
    path.write_text(f"""version: 1
sources:
  - {{name: north, source_url: "{_mysql_url(north)}", replica_url: "{_mysql_url(north + '_rep')}"}}
  - {{name: south, source_url: "{_mysql_url(south)}", replica_url: "{localhost}"}}
  - {{name: east, source_url: "{_mysql_url(east)}", replica_url: "{_mysql_url(east + '_rep')}"}}
""", encoding="utf-8")
    monkeypatch.setenv("ETL_SOURCES", str(path))
    try:
        file = load_sources(path)
        refused = check_clinics(Settings(), file, list(file.sources))
        assert list(refused) == ["south"]
        assert "sources.south.replica_url" in refused["south"] and "clinic north's source" in refused["south"]
        assert "sources.north.source_url" in refused["south"]
        # Two clinics sharing one replica database: both refused.
        path.write_text(path.read_text().replace(localhost, _mysql_url(east + "_rep")), encoding="utf-8")
        file = load_sources(path)
        refused = check_clinics(Settings(), file, list(file.sources))
        assert sorted(refused) == ["east", "south"] and "clinic east's replica" in refused["south"]
    finally:
        conn = mysql_connect()
        with conn.cursor() as cur:
            for db in (north, south, east):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        conn.close()
    assert make_url(localhost).host == "localhost"
