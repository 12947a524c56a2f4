"""Engines for the three databases: created once per run, session settings fixed, usage tracked.

Every engine the pipeline uses comes from `open_engines`, which is a context manager: the engines
are disposed when the run ends, so no pool outlives the run. Pool listeners count connections
opened, checked out, returned and closed per database, so a leak shows up as "still open".

Example:
    ```python
    from tasks.connections import open_engines, EngineUrls

    urls = EngineUrls(source="mysql+pymysql://root@127.0.0.1/clinic", replica="...", analytics="...")
    with open_engines(urls, workers=2) as engines:
        with engines.source.connect() as conn:
            ...
    print(engines.usage())   # per database: opened, peak_checked_out, still_open
    ```
"""
from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from tasks.errors import ConfigError, redact
from tasks.identifiers import mysql_ident

# Session settings for every MySQL connection we open. A known sql_mode makes our SQL mean the same
# on every server: backslash escapes on (the COPY-text expressions rely on them), zero dates,
# dates outside the calendar (2024-02-30, kept by old servers) and id 0 accepted when writing the
# replica (the replica must hold what the source holds; LOAD DATA would store 0000-00-00 instead).
MYSQL_SQL_MODE = "NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO,ALLOW_INVALID_DATES"
# Streaming a big result to a slower consumer (PostgreSQL) can pause reads for a while.
MYSQL_NET_TIMEOUT = 3600
# Rows travel in GROUP_CONCAT blocks (tasks/streaming.py); the block size is bounded by
# max_allowed_packet, so the concat limit itself must not be the bound.
MYSQL_GROUP_CONCAT_MAX = 1 << 30
# A connection back in the pool for less than this is handed out again without a ping: it answered a
# moment ago. The ping (a round trip on every checkout) was ~11% of a 10-row table's work; a connection
# that sat longer is pinged as before, so one the server dropped (restart, wait_timeout, KILL) is replaced.
PING_AFTER_IDLE_SECONDS = 1.0


def as_url(url: URL | str) -> URL | str:
    """A sqlalchemy URL (its str() shows the password as ***); a string that does not parse stays
    as it is, for `create_engine` to refuse with the variable's name."""
    if isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except ArgumentError:
        return url


@dataclass(frozen=True)
class EngineUrls:
    """Resolved connection URLs as sqlalchemy URL objects: printing one shows `***` for the
    password, which only `create_engine` hands to the driver. Strings are accepted and parsed."""

    source: URL
    replica: URL
    analytics: URL
    source_connect_args: dict = field(default_factory=dict)
    replica_connect_args: dict = field(default_factory=dict)
    analytics_connect_args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ("source", "replica", "analytics"):
            object.__setattr__(self, role, as_url(getattr(self, role)))

    def describe(self, role: str) -> str:
        return describe_url(getattr(self, role))

    def secrets(self) -> tuple[str, ...]:
        """The passwords, for `redact` (the last guard on messages built elsewhere)."""
        return url_passwords(*(getattr(self, role) for role in ("source", "replica", "analytics")))


def url_passwords(*urls: URL | str | None) -> tuple[str, ...]:
    """The passwords of these URLs (parsed when given as text), for `redact`."""
    out = []
    for url in urls:
        try:
            u = url if isinstance(url, URL) or url is None else make_url(url)
        except Exception:  # noqa: BLE001 - an unparsable URL has no password to find
            continue
        if u is not None and u.password:
            out.append(str(u.password))
    return tuple(out)


def describe_url(url: URL | str) -> str:
    """host:port/database of a URL, never the password."""
    try:
        u = url if isinstance(url, URL) else make_url(url)
    except Exception:  # noqa: BLE001
        return "<unparsable URL>"
    port = u.port or {"mysql": 3306, "postgresql": 5432}.get(u.get_backend_name(), "")
    return f"{u.get_backend_name()} {u.host or 'localhost'}:{port}/{u.database or ''}"


@dataclass
class PoolUsage:
    """Connection counters for one engine (updated by pool events, read by metrics)."""

    role: str
    opened: int = 0
    closed: int = 0
    checked_out: int = 0
    checkouts: int = 0
    peak_checked_out: int = 0
    threads: set = field(default_factory=set)
    # How the pool was sized (QueuePool): at most pool_size + max_overflow connections at once.
    pool_size: int | None = None
    max_overflow: int | None = None
    workers: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def still_open(self) -> int:
        return self.opened - self.closed

    def as_dict(self) -> dict:
        return {
            "role": self.role, "opened": self.opened, "closed": self.closed,
            "still_open": self.still_open, "checkouts": self.checkouts,
            "peak_checked_out": self.peak_checked_out, "threads": len(self.threads),
            "pool_size": self.pool_size, "max_overflow": self.max_overflow, "workers": self.workers,
        }


def _track(engine: Engine, usage: PoolUsage) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record):  # noqa: ANN001
        with usage._lock:
            usage.opened += 1

    @event.listens_for(engine, "close")
    def _on_close(dbapi_conn, record):  # noqa: ANN001
        with usage._lock:
            usage.closed += 1

    @event.listens_for(engine, "close_detached")
    def _on_close_detached(dbapi_conn):  # noqa: ANN001
        with usage._lock:
            usage.closed += 1

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(dbapi_conn, record, exc):  # noqa: ANN001
        # An invalidated connection is closed by the pool; "close" does not fire for it.
        with usage._lock:
            usage.closed += 1

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, record, proxy):  # noqa: ANN001
        with usage._lock:
            usage.checked_out += 1
            usage.checkouts += 1
            usage.peak_checked_out = max(usage.peak_checked_out, usage.checked_out)
            usage.threads.add(threading.get_ident())

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn, record):  # noqa: ANN001
        with usage._lock:
            usage.checked_out = max(0, usage.checked_out - 1)


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, but only for a connection idle in the pool for PING_AFTER_IDLE_SECONDS or more."""
    idle_since: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    lock = threading.Lock()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn, record):  # noqa: ANN001
        if dbapi_conn is not None:
            with lock:
                idle_since[dbapi_conn] = time.monotonic()

    ping = engine.dialect.do_ping

    def do_ping(dbapi_conn) -> bool:  # noqa: ANN001
        with lock:
            since = idle_since.pop(dbapi_conn, None)
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return True
        return ping(dbapi_conn)

    engine.dialect.do_ping = do_ping


def _mysql_session_setup(engine: Engine, *, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record):  # noqa: ANN001
        with dbapi_conn.cursor() as cur:
            cur.execute(
                f"SET SESSION sql_mode='{MYSQL_SQL_MODE}', time_zone='+00:00', "
                f"net_write_timeout={MYSQL_NET_TIMEOUT}, net_read_timeout={MYSQL_NET_TIMEOUT}, "
                f"group_concat_max_len={MYSQL_GROUP_CONCAT_MAX}"
            )
            if read_only:
                # The source is production: this session can never write, whatever a bug tries.
                cur.execute("SET SESSION TRANSACTION READ ONLY")
        dbapi_conn.commit()


def create_engine(role: str, url: URL | str, *, pool_size: int, connect_args: dict | None = None,
                  max_overflow: int | None = None, pool_timeout: int = 120) -> Engine:
    """An engine for one database role, with our session settings. Raises ConfigError on a bad URL."""
    env = f"ETL_{role.upper()}_URL"
    try:
        u = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        raise ConfigError(f"{env}: not a valid SQLAlchemy URL (expected e.g. mysql+pymysql://user@host:3306/db)") from None
    backend = u.get_backend_name()
    expected = "postgresql" if role == "analytics" else "mysql"
    if backend not in (expected, "mariadb" if expected == "mysql" else expected):
        raise ConfigError(f"{env}: {backend!r} URL given, the {role} database must be {expected}")
    if not u.database:
        raise ConfigError(f"{env}: the URL names no database ({describe_url(url)})")
    args: dict = {}
    if expected == "mysql":
        # Only PyMySQL is installed: a plain mysql:// URL means MySQLdb, which failed later as
        # "No module named 'MySQLdb'", a line that did not say what to write instead.
        if u.get_driver_name() != "pymysql":
            plain = " (a URL without +driver means mysqldb)" if "+" not in u.drivername else ""
            raise ConfigError(f"{env}: driver {u.get_driver_name()!r}{plain} is not supported; use mysql+pymysql://")
        args = {"charset": "utf8mb4", "local_infile": role == "replica", "connect_timeout": 10}
    else:
        if u.get_driver_name() != "psycopg2":
            raise ConfigError(f"{env}: driver {u.get_driver_name()!r} is not supported; use postgresql+psycopg2://")
        args = {"options": "-c timezone=UTC -c datestyle=ISO,YMD -c client_encoding=UTF8", "connect_timeout": 10}
    args.update(connect_args or {})
    try:
        engine = sa.create_engine(
            u, pool_size=pool_size, max_overflow=pool_size if max_overflow is None else max_overflow,
            pool_pre_ping=True, pool_timeout=pool_timeout,
            pool_recycle=3600, connect_args=args,
        )
    except NoSuchModuleError:
        raise ConfigError(f"{env}: unknown driver in {describe_url(url)!r}") from None
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{env}: {redact(str(e))}") from None
    _ping_when_idle(engine)
    if expected == "mysql":
        _mysql_session_setup(engine, read_only=role == "source")
    return engine


@dataclass
class Engines:
    """The three engines of one run and their usage counters."""

    source: Engine
    replica: Engine
    analytics: Engine
    urls: EngineUrls
    usage_by_role: dict[str, PoolUsage]

    def usage(self) -> dict[str, dict]:
        return {role: u.as_dict() for role, u in self.usage_by_role.items()}

    def dispose(self) -> None:
        for e in (self.source, self.replica, self.analytics):
            e.dispose()


def ensure_replica_database(url: URL | str, connect_args: dict | None = None) -> None:
    """CREATE DATABASE IF NOT EXISTS for the replica, through a short-lived server-level connection."""
    u = make_url(url)
    engine = create_engine("replica", url, pool_size=1, connect_args=connect_args)
    server = sa.create_engine(u.set(database=""), poolclass=sa.pool.NullPool,
                              connect_args={"charset": "utf8mb4", "connect_timeout": 10, **(connect_args or {})})
    engine.dispose()
    try:
        with server.connect() as conn:
            # exec_driver_sql formats once, as mysql_ident expects (a name may hold `%` or `:x`).
            conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {mysql_ident(u.database)} "
                                 f"CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    except sa.exc.DBAPIError as e:
        raise connection_error("replica", url, e) from None
    finally:
        server.dispose()


@contextmanager
def open_engines(urls: EngineUrls, *, workers: int, create_replica: bool = True,
                 max_source_connections: int | None = None) -> Iterator[Engines]:
    """Create the three engines for one run and dispose them when it ends, whatever happens.

    With `create_replica`, the replica database is created first when it does not exist. Flows call
    `check_reachable` for every role before this (a retried task), so a run whose source is down
    creates nothing.
    `max_source_connections` caps the connections to production (no overflow): a table holds at
    most one source connection at a time, so this is the number of tables reading the source at
    once; the others wait for a slot.
    """
    created: list[Engine] = []
    usage: dict[str, PoolUsage] = {}
    try:
        if create_replica:
            ensure_replica_database(urls.replica, urls.replica_connect_args)
        built = {}
        for role in ("source", "replica", "analytics"):
            # Per table at most: a lock connection, the phase's own, and two parallel COPY streams
            # (analytics also a metrics write): 3 per worker without overflow, as many again in reserve.
            capped = role == "source" and max_source_connections is not None
            engine = create_engine(role, getattr(urls, role),
                                   pool_size=max_source_connections if capped else max(3, workers * 3),
                                   connect_args=getattr(urls, f"{role}_connect_args"),
                                   max_overflow=0 if capped else None, pool_timeout=6 * 3600 if capped else 120)
            created.append(engine)
            pool = engine.pool
            usage[role] = PoolUsage(role=role, pool_size=pool.size() if hasattr(pool, "size") else None,
                                    max_overflow=getattr(pool, "_max_overflow", None), workers=workers)
            _track(engine, usage[role])
            built[role] = engine
        engines = Engines(urls=urls, usage_by_role=usage, **built)
        yield engines
    finally:
        for e in created:
            e.dispose()


# Engines of runs in progress in this process, by run key. Subflow parameters must be plain data,
# so flows pass the key and look the engines up here.
_REGISTRY: dict[str, Engines] = {}
_REGISTRY_LOCK = threading.Lock()


def register(key: str, engines: Engines) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY[key] = engines


def unregister(key: str) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.pop(key, None)


def lookup(key: str) -> Engines:
    with _REGISTRY_LOCK:
        try:
            return _REGISTRY[key]
        except KeyError:
            raise RuntimeError(f"no open engines for run {key!r}; table flows run inside the pipeline flow") from None


def connection_error(role: str, url: URL | str, exc: BaseException) -> Exception:
    """A one-line error naming the database (host, port, name) and the server's reason, never the password."""
    from tasks.errors import LoadError, is_retriable

    root = getattr(exc, "orig", None) or exc
    text = str(root).splitlines()[0] if str(root) else type(root).__name__
    secrets = (str(make_url(url).password),) if make_url(url).password else ()
    hint = ""
    if role == "analytics" and f'database "{make_url(url).database}" does not exist' in text:
        # The replica database is created by the run; the analytics one must exist (README, Settings).
        u = make_url(url)
        hint = (f"; create it (createdb -h {u.host or '127.0.0.1'} -p {u.port or 5432} {u.database}) or point "
                f"the analytics URL at a database that exists")
    return LoadError(f"cannot reach the {role} database at {describe_url(url)}: {redact(text, secrets)}{hint}",
                     table="*", phase="connect", retriable=is_retriable(exc))


def check_reachable(role: str, url: URL | str, connect_args: dict | None = None) -> None:
    """Log in to one database and run `SELECT 1`; nothing is created or written.

    Raises a one-line LoadError naming the role, host, port and database and the server's reason,
    never the password; it is marked retriable when the reason is transient (see tasks/errors.py).
    The replica database may not exist yet (the first run creates it), so for the replica an
    unknown-database answer means reachable.
    """
    engine = create_engine(role, url, pool_size=1, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as e:  # noqa: BLE001
        code = getattr(getattr(e, "orig", None), "args", (None,))[:1]
        if role == "replica" and code == (1049,):  # ER_BAD_DB_ERROR: server and login are fine
            return
        raise connection_error(role, url, e) from None
    finally:
        engine.dispose()


@contextmanager
def open_metrics_engine(url: URL | str, connect_args: dict | None = None) -> Iterator[Engine]:
    """A one-connection analytics engine for bookkeeping outside a run's pools (not tracked)."""
    engine = create_engine("analytics", url, pool_size=1, connect_args=connect_args)
    try:
        yield engine
    finally:
        engine.dispose()
