"""Running a table, a group and a whole run as plain functions: no Prefect needed.

The flows in `flows/pipeline.py` add orchestration around the same steps (task runs per phase with
retries, a subflow per group, artifacts); tests and tools that need none of it call these directly:

    run_table(ctx, table)            replica phase, analytics phase, count check, one metrics row
    run_batch(ctx, tables)           small tables one after another, their metrics rows and probes one write
    run_group(ctx, tables, workers)  a priority group's tables, `workers` at a time (small ones in batches)
    run_pipeline(settings, cfg)      engines, every group in order, the run's metrics rows

Example:
    ```python
    from config.models import load_pipeline_config
    from config.settings import Settings
    from tasks.run import run_pipeline

    result = run_pipeline(Settings(), load_pipeline_config("config/tables.yml"))
    print(result.failed, sum(o.analytics_rows for o in result.outcomes))
    ```
"""
from __future__ import annotations

import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field
from sqlalchemy.engine import make_url

from config.models import ColumnCase, PipelineConfig, ResolvedTable
from config.settings import Settings
from tasks import decide, guard, probe, skips, sync
from tasks.connections import Engines, EngineUrls, lookup, open_engines, open_metrics_engine
from tasks.errors import EtlError, LoadError, redact
from tasks.job import PhaseStats, TableJob, build_job
from tasks.metrics import MetricsWriter
from tasks.mysql_schema import server_identity
from tasks.outcomes import TableOutcome, failed_outcome, failed_tables
from tasks.reports import run_report
from tasks.verify import count_check

ReplicaMethod = Literal["server", "stream"]
Dispatch = Literal["local", "deployment"]


@dataclass(frozen=True)
class RunContext:
    """What every table of one run shares: the engines, the databases, the run's options."""

    engines: Engines
    run_id: str
    source_db: str
    replica_db: str
    pg_schema: str
    column_case: ColumnCase
    replica_method: ReplicaMethod
    full_refresh: bool = False
    loaded_at_column: str | None = "_etl_loaded_at"
    source: str | None = None  # the clinic of the sources file; None: the one source of ETL_SOURCE_URL

    @property
    def metrics(self) -> MetricsWriter:
        return MetricsWriter(self.engines.analytics, self.run_id, self.engines.urls.secrets(), source=self.source)

    def job(self, table: ResolvedTable) -> TableJob:
        """The table's facts for this run (tasks/job.py): read from the source the first time a phase
        asks, then the same for every later phase and retry of the run. The flows build a context
        per task run; they share the run's engines, and so the run's jobs."""
        return JobCache.of(self.engines, self.run_id).get(table.name, lambda: build_job(
            self.engines, table, source_db=self.source_db, replica_db=self.replica_db, pg_schema=self.pg_schema,
            column_case=self.column_case, loaded_at_column=self.loaded_at_column))


def _of_run(registry: dict, lock: threading.Lock, engines: Engines, run_id: str, make: Callable[[], Any]) -> Any:
    """The object a run keeps in `registry` (keyed by its engines and run id), made on first use and
    dropped with the engines, so a later object at the same address starts empty."""
    key = (id(engines), run_id)
    with lock:
        obj = registry.get(key)
        if obj is None:
            obj = registry[key] = make()
            weakref.finalize(engines, registry.pop, key, None)
        return obj


class JobCache:
    """One TableJob per table name, built once even when phases of several tables run in threads.

    `JobCache.of(engines, run_id)`: the run's cache. It lives as long as the run's engines (a run
    opens its own), so nothing read in one run is used in another."""

    _runs: dict[tuple[int, str], JobCache] = {}
    _runs_lock = threading.Lock()

    @classmethod
    def of(cls, engines: Engines, run_id: str) -> JobCache:
        return _of_run(cls._runs, cls._runs_lock, engines, run_id, cls)

    def __init__(self) -> None:
        self._jobs: dict[str, TableJob] = {}
        self._lock = threading.Lock()

    def get(self, name: str, build: Callable[[], TableJob]) -> TableJob:
        with self._lock:
            found = self._jobs.get(name)
        if found is not None:
            return found
        job = build()  # outside the lock: other tables' phases need not wait for this read
        with self._lock:
            return self._jobs.setdefault(name, job)


class RunOptions(BaseModel):
    """A run's context as plain data (what a flow's table subflows and tasks get, so Prefect can record
    it); `context()` turns it back into the RunContext, with the engines registered under `run_key`."""

    run_key: str = Field(description="Key of this run's engines in the process registry (tasks/connections.register).")
    run_id: str = Field(description="Pipeline run id (the Prefect flow run id) used in metrics.")
    source_db: str = Field(description="Source database name.")
    replica_db: str = Field(description="Replica database name.")
    pg_schema: str = Field(description="Analytics schema.")
    column_case: ColumnCase = Field(description="`lower` or `preserve` (analytics.column_case).")
    replica_method: ReplicaMethod = Field(description="`server` (INSERT..SELECT) or `stream` (LOAD DATA).")
    full_refresh: bool = Field(default=False, description="Reload from scratch.")
    dispatch: Dispatch = Field(
        default="local", description="`local` (subflows in this process) or `deployment` (runs of etl-table/table).")
    source_limit: str | None = Field(default=None, description="Global concurrency limit held while reading the source.")
    config_path: str | None = Field(default=None, description="Table config path passed on to dispatched table runs.")
    blocks: dict | None = Field(default=None, description="Connector block names passed on to dispatched table runs.")
    loaded_at_column: str | None = Field(default="_etl_loaded_at", description="Load-time column of analytics tables.")
    source: str | None = Field(default=None, description="The clinic (ETL_SOURCES) this run loads; None: the one source.")

    @classmethod
    def for_run(cls, *, run_key: str, run_id: str, urls: EngineUrls, cfg: PipelineConfig, pg_schema: str,
                replica_method: ReplicaMethod, full_refresh: bool, **extra: Any) -> RunOptions:
        """The options of a run on `urls` with table config `cfg` (extra: dispatch, source_limit, ...)."""
        return cls(run_key=run_key, run_id=run_id, source_db=database_of(urls.source),
                   replica_db=database_of(urls.replica), pg_schema=pg_schema, column_case=cfg.analytics.column_case,
                   replica_method=replica_method, full_refresh=full_refresh,
                   loaded_at_column=cfg.analytics.loaded_at_column, **extra)

    def context(self) -> RunContext:
        return RunContext(
            engines=lookup(self.run_key), run_id=self.run_id, source_db=self.source_db, replica_db=self.replica_db,
            pg_schema=self.pg_schema, column_case=self.column_case, replica_method=self.replica_method,
            full_refresh=self.full_refresh, loaded_at_column=self.loaded_at_column, source=self.source)


def replicate_phase(ctx: RunContext, table: ResolvedTable, *, attempt: int = 1,
                    progress: Callable[[int], None] | None = None) -> PhaseStats:
    """Source -> replica; an attempt after the first resumes after the last committed chunk."""
    try:
        return sync.replicate(ctx.engines, table, source_db=ctx.source_db, replica_db=ctx.replica_db,
                              method=ctx.replica_method, full_refresh=ctx.full_refresh, resume=attempt > 1,
                              progress=progress, job=ctx.job(table))
    except Exception as e:
        ctx.metrics.error(table=table.name, phase="replica", exc=e, attempt=attempt)
        raise


def load_phase(ctx: RunContext, table: ResolvedTable, *, attempt: int = 1,
               progress: Callable[[int], None] | None = None) -> PhaseStats:
    """Replica -> analytics; an attempt after the first resumes after the last committed chunk."""
    try:
        return sync.load(ctx.engines, table, replica_db=ctx.replica_db, pg_schema=ctx.pg_schema,
                         column_case=ctx.column_case, full_refresh=ctx.full_refresh, resume=attempt > 1,
                         progress=progress, loaded_at_column=ctx.loaded_at_column, job=ctx.job(table))
    except Exception as e:
        ctx.metrics.error(table=table.name, phase="analytics", exc=e, attempt=attempt)
        raise


def verify_phase(ctx: RunContext, table: ResolvedTable) -> float:
    """Replica and analytics row counts must agree; returns the seconds it took."""
    t0 = time.monotonic()
    check = count_check(ctx.engines, table.name, source_db=None, replica_db=ctx.replica_db, pg_schema=ctx.pg_schema)
    if not check.ok:
        raise LoadError(f"verification failed: {check.describe()}", table=table.name, phase="verify")
    return time.monotonic() - t0


@dataclass(frozen=True)
class Phases:
    """How run_table calls each phase. The flows pass task-run versions (with retries); the default
    calls the plain functions once."""

    replicate: Callable[[ResolvedTable], PhaseStats]
    load: Callable[[ResolvedTable], PhaseStats]
    verify: Callable[[ResolvedTable], float]
    probe: Callable[[ResolvedTable], Look] | None = None  # default: probe_phase, called plainly

    @classmethod
    def plain(cls, ctx: RunContext, *, attempt: int = 1) -> Phases:
        """`attempt` > 1: a retry of the whole table, each phase resuming after what it committed."""
        return cls(replicate=lambda t: replicate_phase(ctx, t, attempt=attempt),
                   load=lambda t: load_phase(ctx, t, attempt=attempt), verify=lambda t: verify_phase(ctx, t))


# --- fixed cost: the probe decides "nothing to do" before any DDL, state, checkpoint or lock work ---

@dataclass(frozen=True)
class Look:
    """What the probe found for one table: skip it (`skip` says why) or run it and record `probe` after."""

    probe: probe.Probe | None
    skip: str | None = None
    seconds: float = 0.0


class _RunBook:
    """Once per run (engines + run id): the probe table made sure of, the replica's tables listed."""

    _runs: dict[tuple[int, str], _RunBook] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, engines: Engines, run_id: str) -> _RunBook:
        return _of_run(cls._runs, cls._lock, engines, run_id, cls)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pg_ready = False
        self.replica_tables: set[str] | None = None
        self.looks: dict[str, Look] = {}  # probed before the tables ran (tasks/skips.py), taken once each


def probe_book(ctx: RunContext) -> _RunBook:
    book = _RunBook.of(ctx.engines, ctx.run_id)
    with book.lock:
        if not book.pg_ready:
            with ctx.engines.analytics.connect() as pc:
                cur = pc.connection.driver_connection.cursor()
                probe.pg_ensure(cur)
                pc.connection.driver_connection.commit()
            book.pg_ready = True
        if book.replica_tables is None:
            with ctx.engines.replica.connect() as rc:
                cur = rc.connection.driver_connection.cursor()
                cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                            "AND TABLE_TYPE = 'BASE TABLE'", (ctx.replica_db,))
                book.replica_tables = {r[0] for r in cur.fetchall()}
                rc.rollback()
    return book


def probe_phase(ctx: RunContext, table: ResolvedTable) -> Look:
    """One read on the source, one in analytics: is there anything to do for this table?"""
    from tasks.identifiers import pg_regclass

    book = probe_book(ctx)
    with book.lock:
        ready = book.looks.pop(table.name, None)
    if ready is not None:  # probed with the run's other tables before any table ran (tasks/skips.py)
        return ready
    t0 = time.monotonic()
    try:
        job = ctx.job(table)
    except EtlError:
        # The table cannot be read as configured (gone from the source, no key...): no probe; the
        # replica phase raises the same error where it is retried, recorded and reported.
        return Look(probe=None)
    if not probe.probed(job):
        return Look(probe=None)
    with ctx.engines.source.connect() as sc:
        found = probe.read_probe(sc.connection.driver_connection.cursor(), job)
        sc.rollback()
    with ctx.engines.analytics.connect() as pc:
        recorded, live = probe.pg_recorded(pc.connection.driver_connection.cursor(), ctx.pg_schema, job.pg_name,
                                           pg_regclass(ctx.pg_schema, job.pg_name))
        pc.rollback()
    skip = decide.probe_skips(full_refresh=ctx.full_refresh, probe_same=found.same_as(recorded),
                              replica_live=table.name in (book.replica_tables or ()), analytics_live=live)
    return Look(probe=found, skip=skip, seconds=time.monotonic() - t0)


def record_probe(ctx: RunContext, table: ResolvedTable, look: Look) -> None:
    """After a table finished and was verified: what its next run compares against (an untrusted
    probe is recorded too: it never matches, so the next run syncs the table)."""
    if look.probe is None:
        return
    if ctx.metrics.record_probe(ctx.pg_schema, ctx.job(table).pg_name, look.probe):  # a batch: written at its end
        return
    with ctx.engines.analytics.connect() as pc:
        pg = pc.connection.driver_connection
        probe.pg_record(pg.cursor(), ctx.pg_schema, ctx.job(table).pg_name, look.probe)
        pg.commit()


def run_table(ctx: RunContext, table: ResolvedTable, *, phases: Phases | None = None,
              source_slot: Callable[[], AbstractContextManager] = nullcontext) -> TableOutcome:
    """One table start to finish with its metrics row. Raises what a phase raised (recorded first)."""
    phases = phases or Phases.plain(ctx)
    metrics = ctx.metrics
    metrics.table_started(table.name, priority=table.priority, mode=table.mode)
    t0 = time.monotonic()
    try:
        look = (phases.probe or (lambda t: probe_phase(ctx, t)))(table)  # fixed cost: nothing to do?
        if look.skip:
            metrics.table_finished(table.name, {"status": "ok", "mode": "unchanged", "replica_rows": 0,
                                                "analytics_rows": 0, "notes": look.skip})
            return TableOutcome(table=table.name, status="ok", seconds=time.monotonic() - t0, notes=[look.skip])
        with source_slot():
            rep = phases.replicate(table)
        ana = phases.load(table)
        verify_seconds = phases.verify(table)
        record_probe(ctx, table, look)
    except Exception as e:
        metrics.table_finished(table.name, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    seconds = time.monotonic() - t0
    notes = [*rep.notes, *ana.notes]
    metrics.table_finished(table.name, {
        "status": "ok", "replica_seconds": rep.seconds, "analytics_seconds": ana.seconds,
        "verify_seconds": verify_seconds, "replica_rows": rep.rows, "analytics_rows": ana.rows,
        "bytes": ana.bytes, "rows_per_second": ana.rows / seconds if seconds else None,
        "replica_method": rep.method, "verified": True, "notes": "; ".join(notes) or None,
        "mode": rep.mode, "watermark_before": rep.watermark_before, "watermark_after": rep.watermark_after,
        "note_list": notes,
    })
    return TableOutcome(table=table.name, status="ok", replica_rows=rep.rows, analytics_rows=ana.rows,
                        seconds=seconds, notes=notes)


def run_batch(ctx: RunContext, tables: list[ResolvedTable], *,
              run_one: Callable[[ResolvedTable], TableOutcome] | None = None) -> list[TableOutcome]:
    """Small tables one after another (tasks/batches.py); a failing table does not stop the others.

    Each table's data and sync state still commit together, table by table; what is written once for
    the batch is the bookkeeping that describes finished tables: their metrics rows and recorded probes
    (MetricsWriter.batched). `run_one` (default: run_table) is how the flow wraps a table in its task run."""
    run_one = run_one or (lambda t: run_table(ctx, t))
    outcomes: list[TableOutcome] = []
    with ctx.metrics.batched():
        for t in tables:
            try:
                outcomes.append(run_one(t))
            except Exception as e:  # noqa: BLE001 - recorded per table; the batch goes on
                outcomes.append(failed_outcome(t.name, e))
    return outcomes


def run_group(ctx: RunContext, tables: list[ResolvedTable], *, workers: int,
              light: set[str] | None = None) -> list[TableOutcome]:
    """A priority group's tables, largest first, `workers` at a time; a failing table does not stop the
    others. Small tables and `light` ones (last synced incrementally) go in batches, as in the flow."""
    from tasks.batches import deal_batches, split_batched

    alone, small = split_batched(tables, light=light or set(), dispatch="local")

    def one(t: ResolvedTable) -> TableOutcome:
        try:
            return run_table(ctx, t)
        except Exception as e:  # noqa: BLE001 - recorded per table; the run goes on
            return failed_outcome(t.name, e)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="etl-table") as pool:
        singles = pool.map(one, alone)
        batches = pool.map(lambda b: run_batch(ctx, b), deal_batches(small, workers=workers))
        return [*singles, *(o for b in batches for o in b)]


def choose_replica_method(requested: str, engines: Engines) -> ReplicaMethod:
    """`auto` becomes `server` when source and replica are the same server, else `stream`."""
    if requested == "server" or requested == "stream":
        return requested
    with engines.source.connect() as s, engines.replica.connect() as r:
        return "server" if server_identity(s).same_server(server_identity(r)) else "stream"


def select_tables(cfg: PipelineConfig, tables: list[str] | None, groups: list[str] | None) -> list[ResolvedTable]:
    """The run's tables: named ones (or every enabled one), narrowed to `groups`."""
    from tasks.errors import ConfigError

    chosen = cfg.resolved_tables(tables)
    if groups:
        unknown = [g for g in groups if g not in {p.name for p in cfg.priorities}]
        if unknown:
            raise ConfigError(f"priority group {unknown[0]!r} is not defined under `priorities:` in the table config")
        chosen = [t for t in chosen if t.priority in groups]
    return chosen


def leaked_connections(engines: Engines) -> dict[str, int]:
    """Connections still open per database after the engines were disposed (always empty unless a bug)."""
    return {role: u["still_open"] for role, u in engines.usage().items() if u["still_open"]}


def capture_binlog(ctx: RunContext, cfg: PipelineConfig, *, attempts: int = 3) -> dict[str, str]:
    """The run's one read of the source's binary log (tasks/binlog_reader.py), before any table.

    Every enabled binlog-mode table of the config is captured, not only this run's: the cursor is
    one per source, so a table left out would lose its changes. Returns {table: error} for the
    binlog tables that cannot run (the log is gone, the server cannot serve binlog mode); a lost
    connection is retried (the capture resumes at its last committed transaction)."""
    from tasks import binlog_reader
    from tasks.errors import is_retriable

    keys: dict[str, tuple[str, ...]] = {}
    for t in cfg.resolved_tables(None):
        if t.mode != "binlog":
            continue
        try:
            job = ctx.job(t)
        except Exception:  # noqa: BLE001 - the table's own run reports it
            # Still read for it (no keys without its schema): a DROP or RENAME in the log while the table
            # is gone must stop it once it comes back, not leave its old rows in the copies.
            keys[t.name] = ()
            continue
        if job.mode == "binlog":
            keys[t.name] = job.key
    if not keys:
        return {}
    for attempt in range(1, attempts + 1):
        try:
            binlog_reader.capture(ctx.engines, source_db=ctx.source_db, replica_db=ctx.replica_db, tables=keys,
                                  on_log_gone=cfg.binlog.on_log_gone)
            return {}
        except Exception as e:  # noqa: BLE001 - retried or reported per table
            if attempt < attempts and is_retriable(e):
                time.sleep(attempt)
                continue
            ctx.metrics.error(table="(binlog)", phase="replica", exc=e, attempt=attempt)
            return {name: f"{type(e).__name__}: {e}" for name in keys}
    return {}


def warn_leaks(engines: Engines, warn: Callable[..., Any], *, after: str = "the run") -> None:
    """Call after the engines are disposed: warns when a connection outlived them."""
    leaked = leaked_connections(engines)
    if leaked:
        warn("connections still open after %s: %s", after, leaked)


def finish_run(urls: EngineUrls, run_id: str, outcomes: list[TableOutcome], usage: dict, *, keep_days: int = 0,
               report: bool = False, logger: Any = None, source: str | None = None) -> dict | None:
    """End-of-run bookkeeping on a fresh connection (the run's engines are gone): the run row, then
    history older than `keep_days` (0: none removed), then with `report` the run's rows for the run
    report (None when they cannot be read; a warning says why). Neither step fails the run."""
    secrets = urls.secrets()
    failed = failed_tables(outcomes)
    with open_metrics_engine(urls.analytics, urls.analytics_connect_args) as final:
        writer = MetricsWriter(final, run_id, secrets, source=source)
        writer.pipeline_finished(
            status="failed" if failed else "ok", tables_ok=len(outcomes) - len(failed), failed=failed,
            rows_replica=sum(o.replica_rows for o in outcomes),
            rows_analytics=sum(o.analytics_rows for o in outcomes),
            connection_usage=usage,
        )
        if keep_days > 0:
            try:
                removed = writer.cleanup_old_metrics(keep_days)
                if removed:
                    logger.info("metrics retention: removed %d pipeline runs older than %d days", removed, keep_days)
            except Exception as e:  # noqa: BLE001 - history cleanup must not fail a run that loaded its tables
                logger.warning("metrics retention failed: %s", redact(str(e), secrets))
        if not report:
            return None
        try:
            return run_report(final, run_id)
        except Exception as e:  # noqa: BLE001 - the report then says what the outcomes say
            logger.warning("could not read the run's table rows for the report: %s", redact(str(e), secrets))
            return None


def finish_table_run(urls: EngineUrls, run_id: str, table: str, usage: dict, *, standalone: bool,
                     outcome: TableOutcome | None, error: BaseException | None, source: str | None = None) -> None:
    """After a table ran as a flow of its own (its own engines): its connection counters on its row and,
    when it was not part of a pipeline run, the run row of its one-table run."""
    with open_metrics_engine(urls.analytics, urls.analytics_connect_args) as final:
        writer = MetricsWriter(final, run_id, urls.secrets(), source=source)
        writer.table_connection_usage(table, usage)
        if standalone:
            writer.pipeline_finished(
                status="failed" if error else "ok", tables_ok=0 if error else 1, failed=[table] if error else [],
                rows_replica=outcome.replica_rows if outcome else 0,
                rows_analytics=outcome.analytics_rows if outcome else 0, connection_usage=usage)


@dataclass
class RunResult:
    run_id: str
    outcomes: list[TableOutcome]
    connection_usage: dict

    @property
    def failed(self) -> list[str]:
        return failed_tables(self.outcomes)


def settings_and_urls(source: str | None, blocks: Any = None) -> tuple[Settings, EngineUrls]:
    """A run's settings and URLs: the environment's (or its connector blocks'), or (`source`) those of that
    clinic of ETL_SOURCES (its own URLs, analytics schema and table config)."""
    from blocks.connectors import urls_for_source, urls_from_blocks, urls_from_settings
    from config.sources import sources_from_settings
    from tasks.errors import ConfigError

    settings = Settings()
    if source is None:
        return settings, urls_from_blocks(blocks) if blocks else urls_from_settings(settings)
    sources = sources_from_settings(settings)
    if sources is None:
        raise ConfigError(f"source {source!r} given but ETL_SOURCES is not set on this machine (the worker's "
                          f"environment needs it too)")
    clinic = sources.get(source)
    return clinic.settings(settings), urls_for_source(clinic, settings, blocks)


def database_of(url) -> str:  # noqa: ANN001 - a sqlalchemy URL or its string
    return make_url(url).database or ""


def run_pipeline(settings: Settings, cfg: PipelineConfig, *, tables: list[str] | None = None,
                 groups: list[str] | None = None, full_refresh: bool = False, run_id: str | None = None,
                 urls: EngineUrls | None = None, source: str | None = None) -> RunResult:
    """A whole run without Prefect: every group in priority order, the same metrics rows as the flow."""
    from blocks.connectors import urls_from_settings
    from tasks.batches import light_tables

    chosen = select_tables(cfg, tables, groups)
    urls = urls or urls_from_settings(settings)
    run_id = run_id or str(uuid.uuid4())
    # Never write to production (tasks/guard.py), before anything is written. Its connections, source
    # first, are also the reachability check (the same one-line errors as check_reachable).
    guard.check_run(settings, cfg, urls, source=source, claim=True)
    workers = max((g.workers for g in cfg.priorities), default=1)
    outcomes: list[TableOutcome] = []
    with open_engines(urls, workers=workers, max_source_connections=settings.max_source_queries) as engines:
        method = choose_replica_method(settings.replica_method, engines)
        ctx = RunContext(engines=engines, run_id=run_id, source_db=database_of(urls.source),
                         replica_db=database_of(urls.replica), pg_schema=settings.analytics_schema,
                         column_case=cfg.analytics.column_case, replica_method=method, full_refresh=full_refresh,
                         loaded_at_column=cfg.analytics.loaded_at_column, source=source)
        metrics = ctx.metrics
        metrics.ensure_schema()
        metrics.pipeline_started(tables_total=len(chosen), full_refresh=full_refresh, replica_method=method)
        blocked = capture_binlog(ctx, cfg)  # binlog mode: once per source per run
        outcomes.extend(failed_outcome(t.name, blocked[t.name]) for t in chosen if t.name in blocked)
        skipped, chosen = skips.sort_out(ctx, [t for t in chosen if t.name not in blocked],
                                         workers=skips.probe_workers(ctx))  # unchanged tables: one write for all
        outcomes.extend(skipped)
        light = light_tables(engines, ctx.replica_db, full_refresh=full_refresh, dispatch="local")
        for group in cfg.groups_in_order():
            members = [t for t in cfg.tables_in_group(group.name, chosen) if t.name not in blocked]
            if members:
                outcomes.extend(run_group(ctx, members, workers=group.workers, light=light))
    usage = engines.usage()
    finish_run(urls, run_id, outcomes, usage, source=source)
    return RunResult(run_id=run_id, outcomes=outcomes, connection_usage=usage)
