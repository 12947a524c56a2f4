"""Bad connection settings fail with one line naming the variable and what to change, before any
database is written, and never print a password."""
from __future__ import annotations

import pytest

from tests.conftest import MYSQL, PG, mysql_connect, pg_connect

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ETL_SOURCE_URL", "not a url at all", "ETL_SOURCE_URL: not a valid SQLAlchemy URL"),
        ("ETL_SOURCE_URL", f"mysql+mysqlconnector://etl:{SECRET}@127.0.0.1:3306/x",
         "ETL_SOURCE_URL: driver 'mysqlconnector' is not supported; use mysql+pymysql://"),
        ("ETL_SOURCE_URL", f"oracle://etl:{SECRET}@127.0.0.1/x",
         "ETL_SOURCE_URL: 'oracle' URL given, the source database must be mysql"),
        ("ETL_REPLICA_URL", f"mysql+pymysql://etl:{SECRET}@127.0.0.1:3306",
         "ETL_REPLICA_URL: the URL names no database"),
        ("ETL_ANALYTICS_URL", f"postgresql+asyncpg://etl:{SECRET}@127.0.0.1/x",
         "ETL_ANALYTICS_URL: driver 'asyncpg' is not supported; use postgresql+psycopg2://"),
        ("ETL_ANALYTICS_URL", f"mysql+pymysql://etl:{SECRET}@127.0.0.1/x",
         "ETL_ANALYTICS_URL: 'mysql' URL given, the analytics database must be postgresql"),
    ],
)
def test_bad_url_is_one_line_naming_the_variable(etl_env, prefect_harness, monkeypatch, capsys,
                                                  variable, value, expected) -> None:
    etl_env.source_sql("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);")
    etl_env.write_config("tables:\n  t: {primary_key: [id]}\n")
    monkeypatch.setenv(variable, value)
    assert etl_env.etl("run") == 2  # bad settings, as `etl plan` and the plain runner say
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("etl run:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert SECRET not in err
    # Nothing was created in the replica or analytics.
    my = mysql_connect()
    with my.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (etl_env.replica_db,))
        assert cur.fetchone()[0] == 0
    my.close()
    pg = pg_connect(etl_env.pg_db)
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'raw'")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT to_regclass('etl.pipeline_runs') IS NOT NULL")
        recorded = cur.fetchone()[0]
        if variable == "ETL_ANALYTICS_URL":
            assert not recorded  # nowhere to record it: the exit status and Prefect's state say it
        else:
            # A run that failed before any table started is on record (`etl status` shows it).
            cur.execute("SELECT status, error FROM etl.pipeline_runs")
            [(status, error)] = cur.fetchall()
            assert status == "failed" and expected in error and SECRET not in error
    pg.close()


def test_missing_url_says_which_variable(etl_env, prefect_harness, monkeypatch, capsys) -> None:
    etl_env.write_config("tables:\n  t: {primary_key: [id]}\n")
    monkeypatch.delenv("ETL_REPLICA_URL")
    assert etl_env.etl("run") == 2
    assert "ETL_REPLICA_URL is not set" in capsys.readouterr().err


def test_a_mysql_url_without_driver_says_to_write_mysql_pymysql() -> None:
    """`mysql://` is what most people write; it means MySQLdb, which is not installed (the run said
    "No module named 'MySQLdb'")."""
    from tasks.connections import create_engine
    from tasks.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        create_engine("replica", f"mysql://etl:{SECRET}@127.0.0.1:3306/x", pool_size=1)
    assert str(raised.value) == ("ETL_REPLICA_URL: driver 'mysqldb' (a URL without +driver means mysqldb) "
                                 "is not supported; use mysql+pymysql://")


def test_urls_stay_sqlalchemy_urls_whose_text_hides_the_password(monkeypatch) -> None:
    """Settings and EngineUrls hand out URL objects: printing, repr and describe never show the
    password; only the engine factory passes it to the driver (secrets() feeds the last-guard redact)."""
    from sqlalchemy.engine import URL

    from config.settings import Settings
    from tasks.connections import EngineUrls, describe_url

    pw = "Pw-t0p@s3cret"
    url = f"mysql+pymysql://etl:{pw.replace('@', '%40')}@db1:3306/clinic"
    monkeypatch.setenv("ETL_SOURCE_URL", url)
    s = Settings(_env_file=None)
    got = s.url("source")
    assert isinstance(got, URL) and got.password == pw and got.database == "clinic"
    urls = EngineUrls(source=got, replica=url, analytics="postgresql+psycopg2://a:b-pw@h/db")
    assert all(isinstance(getattr(urls, r), URL) for r in ("source", "replica", "analytics"))
    for text in (str(got), repr(got), repr(urls), str(urls), describe_url(got), urls.describe("replica"),
                 s.describe("source")):
        assert pw not in text and "t0p%40s3cret" not in text, text
    assert urls.secrets() == (pw, pw, "b-pw")
