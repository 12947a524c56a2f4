"""Never write to production: which database each setting names, checked before anything is written.

One copy-paste mistake (ETL_REPLICA_URL naming the production database) and a full copy would
build `_etl_new_<table>` inside production, rename it over the live table and drop the original,
losing its triggers, foreign keys and any row written meanwhile. The source session is read-only;
the replica session writes wherever its URL points. So before a run (`etl run`, both runners),
`etl plan`, `etl verify --repair` and `etl blocks register` create or write anything, `check_targets`
establishes each database's identity (tasks/identity.py) and refuses, with one line naming both settings:

- **a replica that is the source**: the same server and the same database. "Same server" is
  decided by the servers, not by how a URL spells the host (tasks/identity.py: a user lock held by
  the replica session and looked for by the source session; the servers' variables where the lock
  cannot be used). Database names compare as the server does (`lower_case_table_names`).
- **an application database as the replica**: it holds tables of the source's names but none of
  the ETL's bookkeeping (`_etl_state`, `_etl_owned`). Refused unless the table config says
  `replica: {adopt: true}`; then those tables are recorded as the ETL's (tasks/owned.py).
- **an analytics schema the ETL does not own**: a schema holding tables or views the ETL did not
  create (`public` of an existing database). The ETL owns a schema it recorded in
  `etl.owned_schemas`, a schema with rows in `etl.table_state` (every existing install: our state
  present = ours) and a schema that is missing or empty (the run creates or fills it; recorded then).
  Refused unless `analytics: {adopt: true}`; `etl` and PostgreSQL's own schemas are always refused.
- **many clinics** (`check_clinics`): a clinic's replica that is another clinic's source or replica.

Recording (`claim=True`, `etl run` only) happens after every check passed. Cost: one connection
per database and a handful of small queries per run (per clinic), nothing per table.

Example:
    ```python
    from tasks.guard import check_targets

    found = check_targets(urls, pg_schema="raw")   # raises ConfigError naming both settings
    print(found.describe())
    ```
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tasks import owned
from tasks.connections import EngineUrls, connection_error, create_engine, describe_url
from tasks.errors import ConfigError, redact
from tasks.identity import (
    MysqlServer, PgDatabase, held_marker, mysql_server, pg_database, same_server, sees_markers, server_cursor,
    source_cursor,
)

log = logging.getLogger("etl.guard")

# The ETL's own replica bookkeeping: a database holding one of these is (or was) our copy.
REPLICA_MARKS = ("_etl_state", owned.OWNED)
OWNED_SCHEMAS = "etl.owned_schemas"
_PG_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))"  # the metrics DDL's lock (tasks/metrics.py)


@dataclass(frozen=True)
class Names:
    """How the messages name the three settings (environment variables, blocks, a clinic's keys)."""

    source: str = "ETL_SOURCE_URL"
    replica: str = "ETL_REPLICA_URL"
    schema: str = "ETL_ANALYTICS_SCHEMA"


@dataclass(frozen=True)
class Identities:
    """What `check_targets` found: the servers, and how the replica and the schema are the ETL's."""

    source: MysqlServer
    replica: MysqlServer
    analytics: PgDatabase
    same_server: bool
    replica_state: str
    schema_state: str

    def describe(self) -> str:
        return (f"source server {self.source.describe()}; replica server {self.replica.describe()}"
                f"{' (the same server)' if self.same_server else ''}, replica {self.replica_state}; "
                f"analytics system {self.analytics.system_identifier}/{self.analytics.database}, "
                f"schema {self.schema_state}")


def _tables(cur: Any, database: str) -> list[str]:
    """The database's table (and view) names. Names only: the server lists them without opening a
    table definition (`Skip_open_table`), so 450 tables cost a directory read, not 450 opens."""
    cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
                (database,))
    return [str(r[0]) for r in cur.fetchall()]


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# --- the checks ---------------------------------------------------------------------------------------

def check_targets(urls: EngineUrls, *, pg_schema: str, replica_adopt: bool = False, analytics_adopt: bool = False,
                  names: Names = Names(), claim: bool = False) -> Identities:
    """Refuse (ConfigError, one line naming the settings) a replica that is the source, an application
    database as the replica, an analytics schema the ETL does not own. Nothing is written unless every
    check passed and `claim` is set; then the ETL's ownership is recorded (adopted tables, the schema)."""
    source_db, replica_db = make_url(urls.source).database or "", make_url(urls.replica).database or ""
    src_where, rep_where = describe_url(urls.source), describe_url(urls.replica)
    with source_cursor(urls.source, urls.source_connect_args) as scur, \
            server_cursor("replica", urls.replica, urls.replica_connect_args) as rcur:
        src, rep = mysql_server(scur), mysql_server(rcur)
        with held_marker(rcur) as marker:
            [seen] = sees_markers(scur, [marker])
        same = same_server(seen, src, rep)
        if same and src.same_database(source_db, replica_db):
            raise ConfigError(
                f"{names.replica} names the source database itself: {rep_where} is the same server as "
                f"{names.source} ({src_where}; server {src.describe()}) and the same database {source_db!r}; "
                f"the replica must be a database of its own (e.g. {source_db}_replica). Nothing was created or written")
        replica_tables = _tables(rcur, replica_db)
        source_tables = set(_tables(scur, source_db))
        ours = bool(set(REPLICA_MARKS) & set(replica_tables))
        theirs = [t for t in replica_tables if t in source_tables and not t.startswith(owned.SCRATCH_PREFIX)]
        if theirs and not ours and not replica_adopt:
            raise ConfigError(
                f"{names.replica} ({rep_where}) holds {len(theirs)} of the source's tables ({_some(theirs)}) but "
                f"none of the ETL's state (_etl_state): it looks like an application database, not the ETL's copy "
                f"of {names.source} ({src_where}); point {names.replica} at a database of its own, or set "
                f"`replica: {{adopt: true}}` in the table config to let the ETL replace those tables. "
                f"Nothing was created or written")
        replica_state = ("ours" if ours else "missing (created by the run)" if not replica_tables
                         else "adopted" if theirs else "no source tables in it")
        if claim and replica_adopt and theirs:
            adopt = sorted(set(theirs) - owned.owned_tables(rcur, replica_db))
            if adopt:
                owned.record(rcur, adopt, how="adopted", database=replica_db)
                rcur.connection.commit()
                log.warning("replica %s: adopted %d existing table(s) (replica: {adopt: true}): %s", rep_where,
                            len(adopt), _some(adopt, 10))
    analytics, schema_state = _check_schema(urls, pg_schema, adopt=analytics_adopt, names=names, claim=claim)
    return Identities(source=src, replica=rep, analytics=analytics, same_server=same, replica_state=replica_state,
                      schema_state=schema_state)


def _check_schema(urls: EngineUrls, schema: str, *, adopt: bool, names: Names, claim: bool) -> tuple[PgDatabase, str]:
    where = describe_url(urls.analytics)
    if schema == "etl" or schema == "information_schema" or schema.startswith("pg_"):
        what = "the ETL's own bookkeeping schema" if schema == "etl" else "a PostgreSQL system schema"
        raise ConfigError(f"{names.schema}: analytics schema {schema!r} ({where}) is {what}; name another schema "
                          f"(default raw). Nothing was created or written")
    engine = create_engine("analytics", urls.analytics, pool_size=1, connect_args=urls.analytics_connect_args)
    try:
        with engine.connect() as conn:
            pg = conn.connection.driver_connection
            cur = pg.cursor()
            ident = pg_database(cur)
            state, record = _schema_state(cur, schema)
            if state == "foreign":
                cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                            "AND c.relname NOT LIKE '\\_etl\\_%%' ORDER BY c.relname", (schema,))
                foreign = [str(r[0]) for r in cur.fetchall()]
                if not adopt:
                    pg.rollback()
                    raise ConfigError(
                        f"{names.schema}: analytics schema {schema!r} ({where}) already holds {len(foreign)} "
                        f"table(s) or view(s) the ETL did not create ({_some(foreign)}) and is not recorded as the "
                        f"ETL's ({OWNED_SCHEMAS}); name a schema of its own (default raw), or set "
                        f"`analytics: {{adopt: true}}` in the table config to load into it (its tables of the "
                        f"source's names are then replaced). Nothing was created or written")
                state, record = "adopted", "adopted"
            if claim and record:
                cur.execute(_PG_DDL_LOCK)
                cur.execute("CREATE SCHEMA IF NOT EXISTS etl")
                cur.execute(f"CREATE TABLE IF NOT EXISTS {OWNED_SCHEMAS} (schema_name text PRIMARY KEY, "
                            "how text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())")
                cur.execute(f"INSERT INTO {OWNED_SCHEMAS} (schema_name, how) VALUES (%s, %s) "
                            "ON CONFLICT (schema_name) DO NOTHING", (schema, record))
            pg.commit()
            return ident, state
    except sa.exc.DBAPIError as e:
        raise connection_error("analytics", urls.analytics, e) from None
    finally:
        engine.dispose()


def _schema_state(cur: Any, schema: str) -> tuple[str, str | None]:
    """(how the schema is the ETL's, what to record): recorded / state / empty / foreign."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL, to_regclass('etl.table_state') IS NOT NULL",
                (OWNED_SCHEMAS,))
    has_owned, has_state = cur.fetchone()
    if has_owned:
        cur.execute(f"SELECT how FROM {OWNED_SCHEMAS} WHERE schema_name = %s", (schema,))
        row = cur.fetchone()
        if row:
            return f"recorded ({row[0]})", None
    if has_state:
        cur.execute("SELECT 1 FROM etl.table_state WHERE target_schema = %s LIMIT 1", (schema,))
        if cur.fetchone():
            return "ours (etl.table_state)", "state"
    cur.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                "AND c.relname NOT LIKE '\\_etl\\_%%'", (schema,))
    if cur.fetchone()[0] == 0:
        return "empty or missing (created by the run)", "created"
    return "foreign", None


# --- wiring: one call per command ------------------------------------------------------------------------

def names_for(settings: Any, *, source: str | None = None, blocks: Any = None) -> Names:
    """The names messages use: ETL_*; the blocks'; or the clinic's keys in the sources file."""
    if source is not None:
        from config.sources import sources_from_settings

        file = sources_from_settings(settings)
        clinic = file.get(source) if file is not None else None
        where = f"{file.path if file is not None else 'sources file'}: sources.{source}"
        if clinic is not None and clinic.blocks is not None:
            return Names(f"{where}.blocks.source (block {clinic.blocks.source})",
                         f"{where}.blocks.replica (block {clinic.blocks.replica})", f"{where}.analytics_schema")
        return Names(f"{where}.source_url", f"{where}.replica_url", f"{where}.analytics_schema")
    if blocks is not None:
        return Names(f"block {blocks.source}", f"block {blocks.replica}", "ETL_ANALYTICS_SCHEMA")
    return Names()


def check_run(settings: Any, cfg: Any, urls: EngineUrls, *, source: str | None = None, blocks: Any = None,
              claim: bool = False) -> Identities:
    """`check_targets` with the table config's `adopt` options and the settings' names."""
    found = check_targets(urls, pg_schema=settings.analytics_schema, replica_adopt=cfg.replica.adopt,
                          analytics_adopt=cfg.analytics.adopt, names=names_for(settings, source=source, blocks=blocks),
                          claim=claim)
    log.debug("targets checked: %s", found.describe())
    return found


def check_clinics(settings: Any, file: Any, chosen: list[Any], *, blocks: Any = None) -> dict[str, str]:
    """{clinic: one-line error} for every chosen clinic whose replica database is another clinic's source
    or replica database. Every clinic's source is asked (its own pair is `check_targets`' business);
    a clinic that cannot be reached is left to its own run, which reports it."""
    from blocks.connectors import urls_for_source

    def names(s: Any) -> Names:
        return names_for(settings, source=s.name)

    urls: dict[str, EngineUrls] = {}
    for s in file.sources:
        try:
            urls[s.name] = urls_for_source(s, settings, blocks)
        except Exception as e:  # noqa: BLE001 - its own run reports it
            log.debug("clinic %s: no URLs for the cross-check: %s", s.name, redact(str(e)))
    refused: dict[str, str] = {}
    with ExitStack() as stack:
        replicas: dict[str, tuple[Any, MysqlServer, str | None]] = {}
        for s in chosen:
            if s.name not in urls:
                continue
            try:
                cur = stack.enter_context(server_cursor("replica", urls[s.name].replica,
                                                         urls[s.name].replica_connect_args))
                replicas[s.name] = (cur, mysql_server(cur), stack.enter_context(held_marker(cur)))
            except Exception as e:  # noqa: BLE001 - unreachable: its own run says so
                log.debug("clinic %s: replica not reachable for the cross-check: %s", s.name, redact(str(e)))
        order = list(replicas)
        markers = [replicas[n][2] for n in order]

        def check(other: str, role: str, cur: Any, server: MysqlServer, db: str, where: str) -> None:
            for name, seen in zip(order, sees_markers(cur, markers)):
                if name == other or name in refused:
                    continue
                rep_db = make_url(urls[name].replica).database or ""
                if same_server(seen, server, replicas[name][1]) and server.same_database(db, rep_db):
                    refused[name] = (
                        f"{names(replicas_source[name]).replica} ({describe_url(urls[name].replica)}) is clinic "
                        f"{other}'s {role} database ({where}); give clinic {name} a replica database of its own. "
                        f"Nothing was created or written")

        replicas_source = {s.name: s for s in file.sources}
        for s in file.sources:
            if s.name not in urls:
                continue
            u = urls[s.name]
            try:
                with source_cursor(u.source, u.source_connect_args) as scur:
                    check(s.name, "source", scur, mysql_server(scur), make_url(u.source).database or "",
                          f"{names(s).source}: {describe_url(u.source)}")
            except Exception as e:  # noqa: BLE001 - unreachable: its own run says so
                log.debug("clinic %s: source not reachable for the cross-check: %s", s.name, redact(str(e)))
        for name in order:
            cur, server, _ = replicas[name]
            check(name, "replica", cur, server, make_url(urls[name].replica).database or "",
                  f"{names(replicas_source[name]).replica}: {describe_url(urls[name].replica)}")
    return refused
