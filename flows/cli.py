"""`etl`: the command line. Subcommands wire settings and config to flows and plain functions.

    etl discover [--output PATH]           write a table config for every source base table
    etl plan [--tables a,b]                what a run would do per table (reads metadata only)
    etl run [--tables a,b] [--full-refresh] [--blocks] [--ignore-blackout] [--dispatch local|deployment]
            [--metrics-keep-days N]
    etl status [--runs N] [--table T] [--json] [--strict] [--blocks]
    etl connections [--runs N] [--json]   connections per run and database, and pool-sizing advice
    etl dbt-sources [--output PATH]       a dbt sources.yml for the analytics schema as it is now
    etl blocks register                    save the three connector blocks from ETL_*_URL
    etl notifications setup|test           Prefect notification block + automations; a test message

Exit status: 0 ok, 1 a table or the run failed (for `status`: the latest run failed; for `plan`: a
table would fail), 2 bad config or settings, 3 refused by the blackout window (ETL_BLACKOUT; nothing
was touched). An expected failure ends with one line on stderr; `--debug` adds the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Our plain-function modules log under `etl.*`; let Prefect forward those records to the run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "etl")
# The temporary local API would try to send telemetry; clinics often run without internet access.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Without PREFECT_API_URL each command starts a temporary local API; its first start on a machine
# creates and migrates Prefect's SQLite database, which took ~25 s here, past Prefect's 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from config.settings import Settings  # noqa: E402
from tasks.errors import ConfigError, EtlError, LoadError, redact  # noqa: E402


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _clinics(args: argparse.Namespace, *, one: bool = False):  # noqa: ANN202
    """The sources file's clinics `--source` names (default: every one); None without ETL_SOURCES."""
    from config.sources import sources_from_settings

    names = _split(getattr(args, "source", None))
    sources = sources_from_settings(Settings())
    if sources is None:
        if names:
            raise ConfigError("--source needs a sources file: set ETL_SOURCES (see README, Many clinics)")
        return None
    if one and (not names or len(names) != 1):
        raise ConfigError(f"etl {args.command} with ETL_SOURCES needs one --source NAME "
                          f"(one of {', '.join(sources.names)})")
    return sources.select(names)


def _clinic_urls(settings: Settings, clinic):  # noqa: ANN001, ANN202
    from blocks.connectors import urls_for_source

    return urls_for_source(clinic, settings)


def cmd_discover(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from tasks.connections import check_reachable, create_engine, describe_url
    from tasks.discovery import discover_tables, render_config

    settings = Settings()
    clinics = _clinics(args, one=True)
    connect_args: dict | None = None
    if clinics:
        [clinic] = clinics
        urls, settings = _clinic_urls(settings, clinic), clinic.settings(settings)
        url, connect_args = urls.source, urls.source_connect_args
        check_reachable("source", url, connect_args)
    else:
        url = settings.url("source")
    engine = create_engine("source", url, pool_size=1, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            found = discover_tables(conn, make_url(url).database)
    finally:
        engine.dispose()
    text = render_config(found, source_label=describe_url(url))
    out = args.output or settings.config
    if out == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)  # never leave a half-written config behind
        print(f"wrote {len(found)} tables to {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    clinics = _clinics(args)
    if clinics is None:
        return _plan_one(Settings(), args)
    from tasks.connections import check_reachable

    status = 0
    refused = _cross_check(clinics)
    for clinic in clinics:
        print(f"== clinic {clinic.name} (schema {clinic.schema})")
        if clinic.name in refused:
            print(f"etl plan: clinic {clinic.name}: {refused[clinic.name]}", file=sys.stderr)
            status = max(status, 2)
            continue
        try:
            own = clinic.settings(Settings())
            # A clinic in connector blocks (sources file `blocks:`) has no URLs in its settings.
            urls = _clinic_urls(Settings(), clinic) if clinic.blocks else None
            for role in ("source", "replica"):  # an unreachable clinic is one line, then the next clinic
                check_reachable(role, *((getattr(urls, role), getattr(urls, f"{role}_connect_args")) if urls
                                        else (own.url(role), None)))
            status = max(status, _plan_one(own, args, urls=urls, clinic=clinic))
        except EtlError as e:  # this clinic fails alone; the others are still planned
            print(f"etl plan: clinic {clinic.name}: {_one_line(e)}", file=sys.stderr)
            status = max(status, 1)
    return status


def _cross_check(clinics) -> dict[str, str]:  # noqa: ANN001
    """Clinics whose replica is another clinic's source or replica (tasks/guard.check_clinics)."""
    from config.sources import sources_from_settings
    from tasks.guard import check_clinics

    settings = Settings()
    return check_clinics(settings, sources_from_settings(settings), clinics)


def _plan_one(settings: Settings, args: argparse.Namespace, *, urls=None, clinic=None) -> int:  # noqa: ANN001
    from blocks.connectors import urls_from_settings
    from config.models import load_pipeline_config
    from tasks.guard import check_run
    from tasks.planning import build_plan, render_plan

    cfg = load_pipeline_config(args.config or settings.config)
    # The plan writes nothing, but a plan that looks fine for a replica that is the source would mislead.
    checked = urls or (_clinic_urls(Settings(), clinic) if clinic is not None else urls_from_settings(settings))
    check_run(settings, cfg, checked, source=clinic.name if clinic is not None else None)
    plan = build_plan(settings, cfg, tables=_split(args.tables), full_refresh=args.full_refresh,
                      config_path=args.config or settings.config, urls=urls)
    print(render_plan(plan))
    bad = [p.table for p in plan.tables if p.problems]
    if bad:
        print(f"etl plan: {len(bad)} table(s) would fail: {', '.join(bad)} (see their `problems:` lines above)",
              file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if _clinics(args) is not None:
        return _run_clinics(args)
    from config.models import load_pipeline_config

    settings = Settings()
    config_path = args.config or settings.config
    # Validate the config before Prefect or any database is touched.
    cfg = load_pipeline_config(config_path)
    cfg.resolved_tables(_split(args.tables))

    api_ready = _start_temporary_api()  # starts while the flows are imported
    from blocks.connectors import BlockNames
    from flows.pipeline import etl_pipeline

    blocks = None
    if args.blocks:
        blocks = BlockNames(source=args.source_block, replica=args.replica_block, analytics=args.analytics_block)
    from tasks.schedule_guard import BlackoutRefused

    api_ready()
    with _heartbeat_for_cli_run():
        state = etl_pipeline(tables=_split(args.tables), full_refresh=args.full_refresh, config_path=config_path,
                             blocks=blocks, ignore_blackout=args.ignore_blackout, dispatch=args.dispatch,
                             metrics_keep_days=args.metrics_keep_days, dbt=not args.no_dbt, return_state=True)
    error: BaseException | None = None
    if not state.is_completed():
        try:
            state.result()
        except Exception as e:  # noqa: BLE001
            error = e
    if isinstance(error, BlackoutRefused):
        print(f"etl run: {error}", file=sys.stderr)  # nothing ran, so there is no summary to print
        return 3
    _print_last_run(settings, blocks, run_id=str(state.state_details.flow_run_id or ""))
    if state.is_completed():
        return 0
    print(f"etl run: {redact(str(error or state.message or 'failed'))}", file=sys.stderr)
    # Bad settings refused inside the flow (a bad URL, the replica is the source) exit 2 like `etl plan`
    # and the plain runner; a run that failed (a table, a database unreachable) exits 1.
    return 2 if isinstance(error, ConfigError) else 1


def _start_temporary_api():  # noqa: ANN202 - returns the wait
    """Without PREFECT_API_URL the flow starts Prefect's temporary API server (a subprocess, ~5 s) at its
    first API call; started here on a thread, it boots on the other core while this process imports the
    flows (~1.3 s). Returns the wait for it. A start that fails here is left to the flow, which starts it
    again and reports what went wrong."""
    import threading

    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return lambda: None

    def start() -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001 - see above
            pass

    thread = threading.Thread(target=start, name="etl-temporary-api", daemon=True)
    thread.start()
    return thread.join


def _heartbeat_for_cli_run():  # noqa: ANN202 - a context manager
    """A run started by `etl run` sends no flow-run heartbeat unless PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set.

    Heartbeats feed the zombie-run automation of *deployment* runs (a worker's flow runs keep theirs);
    nothing watches a run started from this command, and joining the heartbeat thread at its end (it
    sleeps in 1 s steps) cost up to a second of every `etl run`, as much as a run with nothing to do."""
    import os
    from contextlib import nullcontext

    from flows.wiring import child_without_heartbeat

    return nullcontext() if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") else child_without_heartbeat()


def _config_may_use_binlog(settings: Settings) -> bool:
    """False when the table config has no `mode: binlog` table: `etl status` then asks no binlog lag (a
    cursor left from an earlier binlog config is stale, and an unreachable replica is not this line's
    news). A config that cannot be read says nothing either way: True, the lag is asked."""
    from config.models import load_pipeline_config

    try:
        cfg = load_pipeline_config(settings.config)
        return any(cfg.resolve(name).mode == "binlog" for name in cfg.tables)
    except Exception:  # noqa: BLE001 - status still shows the runs; the lag line says what it knows
        return True


def _run_clinics(args: argparse.Namespace) -> int:
    """With ETL_SOURCES: the flow etl-all over the chosen clinics, then the clinics report."""
    from flows.etl_all import etl_all
    from tasks.clinics import render_clinics
    from tasks.schedule_guard import BlackoutRefused

    state = etl_all(sources=_split(args.source), tables=_split(args.tables), full_refresh=args.full_refresh,
                    blocks=_blocks(args), ignore_blackout=args.ignore_blackout, dispatch=args.dispatch,
                    max_sources=args.max_sources, metrics_keep_days=args.metrics_keep_days, dbt=not args.no_dbt,
                    return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BlackoutRefused):
        print(f"etl run: {result}", file=sys.stderr)
        return 3
    if isinstance(result, BaseException):
        data = getattr(result, "results", None)
        if data:
            print(render_clinics(data))
        print(f"etl run: {redact(' '.join(str(result).split()))}", file=sys.stderr)
        return 1
    print(render_clinics(result))
    return 0


def _print_last_run(settings: Settings, blocks=None, *, run_id: str | None = None) -> None:  # noqa: ANN001
    """Print the summary of run `run_id` (or the latest run). A run that failed before it wrote its
    metrics (e.g. a database unreachable) has none: nothing is printed rather than an older run."""
    from tasks.connections import create_engine
    from tasks.reports import last_runs, render_run

    try:
        if blocks is not None:
            from blocks.connectors import urls_from_blocks

            url = urls_from_blocks(blocks).analytics
        else:
            url = settings.url("analytics")
        engine = create_engine("analytics", url, pool_size=1)
        try:
            runs = last_runs(engine, runs=1)
        finally:
            engine.dispose()
        if runs and (not run_id or str(runs[0]["run_id"]) == run_id):
            print(render_run(runs[0]))
    except Exception as e:  # noqa: BLE001 - the summary is a courtesy; the exit code says what matters
        print(f"(no summary: {redact(str(e))})", file=sys.stderr)


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare every column of every row of source, replica and analytics; with --repair re-copy only the
    key ranges (integer keys) or keys (other keys) that differ."""
    from blocks.connectors import urls_from_settings

    clinics = _clinics(args)
    if clinics is not None:
        status = 0
        refused = _cross_check(clinics) if args.repair else {}
        for clinic in clinics:
            print(f"== clinic {clinic.name} (schema {clinic.schema})")
            if clinic.name in refused:
                print(f"etl verify: clinic {clinic.name}: {refused[clinic.name]}", file=sys.stderr)
                status = max(status, 2)
                continue
            try:
                status = max(status, _verify_one(clinic.settings(Settings()), args,
                                                 _clinic_urls(Settings(), clinic), clinic.name))
            except Exception as e:  # noqa: BLE001 - this clinic fails alone
                print(f"etl verify: clinic {clinic.name}: {_one_line(e)}", file=sys.stderr)
                status = 1
        return status
    settings = Settings()
    return _verify_one(settings, args, urls_from_settings(settings), None)


def _verify_one(settings: Settings, args: argparse.Namespace, urls, source: str | None) -> int:  # noqa: ANN001
    import datetime as dt

    from sqlalchemy.engine import make_url

    from config.models import load_pipeline_config
    from tasks.connections import open_engines
    from tasks.run import choose_replica_method
    from tasks.repair import repair_ranges
    from tasks.verify import render_results, store_results, verify_table

    cfg = load_pipeline_config(args.config or settings.config)
    chosen = cfg.resolved_tables(_split(args.tables))
    src_db, rep_db = make_url(urls.source).database, make_url(urls.replica).database
    run_id = "verify-" + (f"{source}-" if source else "") + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    common = dict(source_db=src_db, replica_db=rep_db, pg_schema=settings.analytics_schema,
                  column_case=cfg.analytics.column_case)
    if args.repair:  # repair writes the replica and analytics: the same checks as a run (tasks/guard.py)
        from tasks.guard import check_run

        check_run(settings, cfg, urls, source=source, claim=True)
    with open_engines(urls, workers=1, create_replica=False) as engines:
        results = [verify_table(engines, t, **common) for t in chosen]
        if args.repair:
            method = choose_replica_method(settings.replica_method, engines)
            by_name = {t.name: t for t in chosen}
            for i, r in enumerate(results):
                if r.ok:
                    continue
                if not r.differing:
                    print(f"{r.table}: row counts differ outside any checked range; run `etl run --tables {r.table}`")
                    continue
                if repair_ranges(engines, by_name[r.table], r, method=method, **common) == 0:
                    print(f"{r.table}: rows cannot be re-copied one by one (no key, or a key of a type that "
                          f"cannot be matched back); repair it with `etl run --full-refresh --tables {r.table}`")
                    continue
                results[i] = verify_table(engines, by_name[r.table], **common)
        with engines.analytics.connect() as pc:
            store_results(pc.connection.driver_connection, run_id, results)
    print(render_results(results))
    bad = [r.table for r in results if not r.ok]
    if bad:
        print(f"{len(bad)} table(s) differ: {', '.join(bad)} (stored in etl.verify_results as {run_id})", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The last runs; a monitor's exit status: 1 when the latest run did not succeed (failed, crashed,
    abandoned), with --strict also when it is still running or no run is recorded."""
    from tasks.reports import last_runs, render_run, runs_as_json

    clinics = _clinics(args)
    if clinics is not None:
        return _status_by_clinic(args, [c.name for c in clinics])
    engine = _analytics_engine(Settings(), _blocks(args))
    try:
        runs = last_runs(engine, runs=args.runs, table=args.table)
    finally:
        engine.dispose()
    if args.json:
        print(runs_as_json(runs))
    elif not runs:
        print("no runs recorded yet (etl schema is empty)")
    else:
        print("\n\n".join(render_run(r, full_errors=bool(args.table), table=args.table) for r in runs))
    if not args.json and not _blocks(args):
        from tasks.binlog_reader import describe_lag

        settings = Settings()
        lag = (describe_lag(settings.url("source"), settings.url("replica"))
               if settings.source_url and settings.replica_url and _config_may_use_binlog(settings) else None)
        if lag:
            print(lag)
    if not runs:
        return 1 if args.strict else 0
    latest = runs[0]
    if latest["status"] == "ok" or (latest["status"] == "running" and not args.strict):
        return 0
    if not args.json:
        print(f"etl status: the latest run {latest.get('prefect_run_name') or latest['run_id']} is "
              f"{latest['status']}", file=sys.stderr)
    return 1


def _status_by_clinic(args: argparse.Namespace, names: list[str]) -> int:
    """`etl status` grouped by clinic: each clinic's last runs; exit 1 when a clinic's latest run did not succeed."""
    import json

    from tasks.reports import last_runs, render_run, runs_as_json

    engine = _analytics_engine(Settings(), _blocks(args))
    try:
        by_clinic = {n: last_runs(engine, runs=args.runs, table=args.table, source=n) for n in names}
    finally:
        engine.dispose()
    bad = [n for n, runs in by_clinic.items()
           if (not runs and args.strict) or (runs and runs[0]["status"] != "ok"
                                            and not (runs[0]["status"] == "running" and not args.strict))]
    if args.json:
        print(json.dumps({n: json.loads(runs_as_json(r)) for n, r in by_clinic.items()}, indent=2))
    else:
        for n, runs in by_clinic.items():
            print(f"== clinic {n}")
            print("\n\n".join(render_run(r, full_errors=bool(args.table), table=args.table) for r in runs) if runs
                  else "no runs recorded yet")
            print()
    if bad:
        if not args.json:
            print(f"etl status: the latest run of clinic(s) {', '.join(bad)} did not succeed", file=sys.stderr)
        return 1
    return 0


def _blocks(args: argparse.Namespace):  # noqa: ANN202
    from blocks.connectors import BlockNames

    if not getattr(args, "blocks", False):
        return None
    return BlockNames(source=args.source_block, replica=args.replica_block, analytics=args.analytics_block)


def _analytics_url(settings: Settings, blocks=None) -> str:  # noqa: ANN001
    if blocks is not None:
        from blocks.connectors import urls_from_blocks

        return urls_from_blocks(blocks).analytics
    return settings.url("analytics")


def _analytics_engine(settings: Settings, blocks=None):  # noqa: ANN001, ANN202
    from tasks.connections import create_engine

    return create_engine("analytics", _analytics_url(settings, blocks), pool_size=1)


def cmd_connections(args: argparse.Namespace) -> int:
    from tasks.reports import connection_runs, render_connections, runs_as_json

    engine = _analytics_engine(Settings())
    try:
        runs = connection_runs(engine, runs=args.runs)
    finally:
        engine.dispose()
    print(runs_as_json(runs) if args.json else render_connections(runs))
    # A leak is a bug worth a non-zero status in a monitoring script.
    leaks = [a for r in runs for a in r["advice"] if "LEAK" in a]
    return 1 if leaks and args.strict else 0


def cmd_dbt_sources(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from config.models import load_pipeline_config
    from tasks.connections import create_engine, describe_url
    from tasks.dbt_sources import build_sources, read_mysql_types, read_pg_tables, read_reserved_words, render_yaml

    settings = Settings()
    schema = args.schema or settings.analytics_schema
    views = False
    if args.union:
        from config.sources import sources_from_settings

        sources = sources_from_settings(settings)
        if sources is None or not sources.union_schema:
            raise ConfigError("--union needs ETL_SOURCES with a union_schema (see README, Many clinics)")
        schema, views = args.schema or sources.union_schema, True
        # Every clinic shares the table config's loaded_at column; read it from the first clinic's config.
        settings = sources.sources[0].settings(settings)
    loaded_at = "_etl_loaded_at"
    try:
        cfg = load_pipeline_config(args.config or settings.config)
        loaded_at = getattr(cfg.analytics, "loaded_at_column", None) or loaded_at
    except EtlError as e:
        print(f"etl dbt-sources: {e}; assuming loaded_at column {loaded_at!r}", file=sys.stderr)
    engine = _analytics_engine(settings)
    try:
        with engine.connect() as c:
            raw = c.connection.driver_connection
            with raw.cursor() as cur:
                tables = read_pg_tables(cur, schema, views=views)
                reserved = read_reserved_words(cur)
            raw.rollback()
    finally:
        engine.dispose()
    if not tables:
        print(f"etl dbt-sources: schema {schema!r} has no tables in {describe_url(settings.url('analytics'))}; "
              f"run `etl run` first", file=sys.stderr)
        return 1
    mysql_types = None
    # Descriptions name the production database the rows come from; the types are read from the
    # replica (same definitions), so production is not queried.
    origin = describe_url(settings.url("source")) if settings.source_url is not None else ""
    if views:  # the union: every clinic's rows, not the first clinic's database
        origin = f"every clinic of {sources.path} ({', '.join(sources.names)}), one view row per clinic row"
    if settings.replica_url is not None and not views:
        url = settings.url("replica")
        try:
            rep = create_engine("replica", url, pool_size=1)
            try:
                with rep.connect() as c:
                    with c.connection.driver_connection.cursor() as cur:
                        mysql_types = read_mysql_types(cur, make_url(url).database)
            finally:
                rep.dispose()
        except Exception as e:  # noqa: BLE001 - the file is still useful without MySQL types
            print(f"etl dbt-sources: MySQL types not read from the replica ({redact(str(e))})", file=sys.stderr)
    doc = build_sources(tables, schema=schema, source_name=args.name, loaded_at_column=loaded_at,
                        mysql_types=mysql_types, warn_after_hours=args.warn_after_hours,
                        error_after_hours=args.error_after_hours, style=args.style, origin=origin,
                        source_column="_source" if views else None,
                        reserved=reserved)
    text = render_yaml(doc, where=f"{describe_url(settings.url('analytics'))} schema {schema}")
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.output)
    print(f"wrote {len(tables)} tables of schema {schema} to {args.output}")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    """The clinics of ETL_SOURCES: names only (for scripts, e.g. make deploy), or one line each."""
    from config.sources import sources_from_settings
    from flows.etl_all import source_limit_name
    from tasks.connections import describe_url

    sources = sources_from_settings(Settings())
    if sources is None:
        raise ConfigError("ETL_SOURCES is not set; it names the sources file (see README, Many clinics)")
    for s in sources.sources:
        if args.names:
            print(s.name)
            continue
        where = (f"blocks {s.blocks.source}/{s.blocks.replica}" if s.blocks else
                 f"{describe_url(s.source_url.get_secret_value())} -> {describe_url(s.replica_url.get_secret_value())}")
        print(f"{s.name}: {where}; schema {s.schema}; config {s.config or Settings().config}; "
              f"limit {source_limit_name(s.name)}")
    if not args.names:
        print(f"union schema: {sources.union_schema or '(off)'}")
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    from blocks.connectors import BlockNames, register_blocks

    if args.action != "register":
        raise EtlError(f"unknown blocks action {args.action!r}; use `etl blocks register`")
    names = BlockNames(source=args.source_block, replica=args.replica_block, analytics=args.analytics_block)
    settings = Settings()
    _check_block_targets(settings)
    for role, desc in register_blocks(settings, names).items():
        print(f"saved {role} block {desc}")
    return 0


def _check_block_targets(settings: Settings) -> None:
    """Blocks that name production as the replica would make every later `--blocks` run write it: the
    same checks as a run, with the table config's `adopt` options when the config file exists."""
    from blocks.connectors import urls_from_settings
    from config.models import PipelineConfig, load_pipeline_config
    from tasks.guard import check_run

    cfg = load_pipeline_config(settings.config) if os.path.exists(settings.config) else PipelineConfig()
    check_run(settings, cfg, urls_from_settings(settings))


def cmd_notifications(args: argparse.Namespace) -> int:
    """setup: the Prefect notification block and automations (a server: PREFECT_API_URL); test: one
    sample message to ETL_NOTIFY_WEBHOOK, to check the receiver before a night depends on it."""
    from tasks import notify

    settings = Settings()
    if settings.notify_webhook is None:
        raise ConfigError("ETL_NOTIFY_WEBHOOK is not set; set it to the URL that should receive run notifications")
    webhook = settings.notify_webhook.get_secret_value()
    if args.action == "test":
        payload = notify.build_message("test", run=None, run_id="test", run_name="etl notifications test",
                                       flow="etl")
        if not notify.post(webhook, payload):
            print("etl notifications: the test message was not delivered (see the warning above)", file=sys.stderr)
            return 1
        print("test message delivered")
        return 0
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("etl notifications setup needs a Prefect server: set PREFECT_API_URL "
                          "(make deploy passes it); the temporary local API has no automations")
    for name in notify.ensure_prefect_notifications(webhook, late_minutes=settings.notify_late_minutes):
        print(f"saved automation {name} -> notification block {notify.BLOCK_NAME}")
    return 0


ENVIRONMENT = """environment:
  ETL_SOURCE_URL        SQLAlchemy URL of the production MySQL/MariaDB source (read-only use)
  ETL_REPLICA_URL       URL of the replica MySQL database we own (created when missing)
  ETL_ANALYTICS_URL     URL of the analytics PostgreSQL database
  ETL_ANALYTICS_SCHEMA  schema receiving the tables (default raw)
  ETL_CONFIG            table config (default config/tables.yml)
  ETL_SOURCES           sources file: many clinics, one warehouse (etl COMMAND --source NAME[,NAME])
  ETL_REPLICA_METHOD    auto | server | stream (default auto)
  ETL_MAX_SOURCE_QUERIES  concurrent queries against the source (default 4)
  ETL_BLACKOUT, ETL_BLACKOUT_TZ, ETL_BLACKOUT_MANUAL  business-hours guard, e.g. "Mon-Fri 07:00-19:00"
  ETL_NOTIFY_WEBHOOK    URL receiving a JSON POST when a run fails, crashes or is refused
  ETL_NOTIFY_RECOVERED  true: also post when a run succeeds after a failed one
  ETL_NOTIFY_LATE_MINUTES  make deploy: report a run still Late after this many minutes (default 15)
  PREFECT_API_URL       a Prefect server (else each command starts a temporary local API)

examples:
  etl discover --output config/tables.yml
  etl plan --tables patient,claim
  etl run --tables patient --full-refresh
  etl status --strict || echo "last night's run did not succeed"
  etl verify --tables patient --repair

exit status: 0 ok, 1 failed, 2 bad config or settings, 3 refused by the blackout window.
`etl COMMAND --help` shows each command's options and an example."""


def _sub(sub, name: str, func, helptext: str, example: str):  # noqa: ANN001, ANN202
    s = sub.add_parser(name, help=helptext, description=helptext, epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.set_defaults(func=func)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etl", description="MySQL -> replica MySQL -> PostgreSQL analytics ETL",
                                epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure (and debug logging)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = _sub(sub, "discover", cmd_discover, "write a table config for every source base table",
             "etl discover --output config/tables.yml")
    d.add_argument("--output", help="where to write (default: ETL_CONFIG or config/tables.yml, or the clinic's "
                                    "`config`; '-' = stdout)")
    d.add_argument("--source", help="ETL_SOURCES: the clinic to discover (its `config` is written)")

    for name, func, helptext, example in (
            ("plan", cmd_plan, "show what a run would do, touching no data (exit 1: a table would fail)",
             "etl plan --tables patient,claim"),
            ("run", cmd_run, "run the pipeline flow", "etl run --tables patient --full-refresh")):
        s = _sub(sub, name, func, helptext, example)
        s.add_argument("--tables", help="comma-separated table names (default: all enabled)")
        s.add_argument("--full-refresh", action="store_true", help="reload the chosen tables from scratch")
        s.add_argument("--config", help="table config path (default: ETL_CONFIG or config/tables.yml)")
        s.add_argument("--source", help="ETL_SOURCES: comma-separated clinics (default: every clinic)")
        if name == "run":
            s.add_argument("--max-sources", type=int, default=2,
                           help="ETL_SOURCES: clinics running at once in this process (default 2)")
            s.add_argument("--ignore-blackout", action="store_true",
                           help="start even inside the ETL_BLACKOUT window (manual runs only)")
            s.add_argument("--dispatch", choices=["local", "deployment"], default="local",
                           help="deployment: each table runs as a run of etl-table/table on the pool's workers")
            s.add_argument("--no-dbt", action="store_true", help="do not run the config's dbt: section after the load")
            s.add_argument("--metrics-keep-days", type=int, default=90,
                           help="delete run history older than this at the end of the run (0 keeps all)")
            _block_args(s)

    v = _sub(sub, "verify", cmd_verify, "compare source, replica and analytics (counts, key-range checksums)",
             "etl verify --tables patient --repair")
    v.add_argument("--tables", help="comma-separated table names (default: all enabled)")
    v.add_argument("--config", help="table config path (default: ETL_CONFIG or config/tables.yml)")
    v.add_argument("--repair", action="store_true", help="re-copy only the key ranges that differ")
    v.add_argument("--source", help="ETL_SOURCES: comma-separated clinics (default: every clinic)")

    st = _sub(sub, "status", cmd_status,
              "show the last runs from the etl schema (exit 1: the latest run did not succeed)",
              "etl status --table patient   # that table in the last runs, errors in full")
    st.add_argument("--runs", type=int, default=3, help="how many runs, newest first (default 3)")
    st.add_argument("--table", help="only this table's rows, with its errors in full")
    st.add_argument("--source", help="ETL_SOURCES: comma-separated clinics (default: every clinic, grouped)")
    st.add_argument("--json", action="store_true", help="the runs and their table rows as JSON")
    st.add_argument("--strict", action="store_true",
                    help="exit 1 also when the latest run is still running or no run is recorded")
    _block_args(st)

    cn = _sub(sub, "connections", cmd_connections, "connections per run and database, with pool-sizing advice",
              "etl connections --runs 1 --strict")
    cn.add_argument("--runs", type=int, default=3, help="how many runs, newest first (default 3)")
    cn.add_argument("--json", action="store_true", help="the counters and advice as JSON")
    cn.add_argument("--strict", action="store_true", help="exit 1 when a run left a connection open")

    ds = _sub(sub, "dbt-sources", cmd_dbt_sources, "write a dbt sources.yml for the analytics schema",
              "etl dbt-sources --output models/sources.yml --name opendental")
    ds.add_argument("--output", default="sources.yml", help="where to write (default: sources.yml; '-' = stdout)")
    ds.add_argument("--name", help="dbt source name (default: the schema name)")
    ds.add_argument("--schema", help="analytics schema (default: ETL_ANALYTICS_SCHEMA)")
    ds.add_argument("--union", action="store_true",
                    help="ETL_SOURCES: the union schema (raw_all) with its _source column, instead of one clinic's")
    ds.add_argument("--config", help="table config, for analytics.loaded_at_column (default: ETL_CONFIG)")
    ds.add_argument("--warn-after-hours", type=int, default=26, help="freshness warn_after in hours (default 26)")
    ds.add_argument("--error-after-hours", type=int, default=50, help="freshness error_after in hours (default 50)")
    ds.add_argument("--style", choices=["config", "legacy"], default="config",
                    help="config: loaded_at_field/freshness under config: (dbt >= 1.10); legacy: as table keys")

    so = _sub(sub, "sources", cmd_sources, "list the clinics of the sources file (ETL_SOURCES)",
              "etl sources --names")
    so.add_argument("--names", action="store_true", help="only the names, one a line")

    b = _sub(sub, "blocks", cmd_blocks, "manage the SqlAlchemyConnector blocks",
             "etl blocks register --analytics-block etl-analytics")
    b.add_argument("action", choices=["register"], help="register: save the three blocks from ETL_*_URL")
    _block_args(b, flag=False)

    nt = _sub(sub, "notifications", cmd_notifications,
              "run notifications: Prefect automations (setup) or a test message (test) to ETL_NOTIFY_WEBHOOK",
              "ETL_NOTIFY_WEBHOOK=https://hooks.slack.com/services/... etl notifications test")
    nt.add_argument("action", choices=["setup", "test"],
                    help="setup: notification block + automations on Failed/Crashed/Late runs (needs PREFECT_API_URL); "
                         "test: post a sample message")
    return p


def _block_args(p: argparse.ArgumentParser, *, flag: bool = True) -> None:
    if flag:
        p.add_argument("--blocks", action="store_true",
                       help="read credentials from the connector blocks instead of ETL_*_URL")
    p.add_argument("--source-block", default="etl-source", help="source block name (default etl-source)")
    p.add_argument("--replica-block", default="etl-replica", help="replica block name (default etl-replica)")
    p.add_argument("--analytics-block", default="etl-analytics", help="analytics block name (default etl-analytics)")


# The databases a command reads, checked first so an unreachable one (or a wrong password) is one
# line naming it instead of a driver traceback from wherever the command first connects.
NEEDS = {"discover": ("source",), "plan": ("source", "replica"), "verify": ("source", "replica", "analytics"),
         "status": ("analytics",), "connections": ("analytics",), "dbt-sources": ("analytics",)}


def _check_databases(args: argparse.Namespace) -> None:
    from tasks.connections import check_reachable

    roles = NEEDS.get(args.command, ())
    if not roles:
        return
    if Settings().sources and args.command in ("discover", "plan", "verify"):
        return  # each clinic's databases are checked when its turn comes (one failing clinic fails alone)
    blocks = _blocks(args)
    if blocks is not None:
        from blocks.connectors import urls_from_blocks

        urls = urls_from_blocks(blocks)
        targets = [(r, getattr(urls, r), getattr(urls, f"{r}_connect_args")) for r in roles]
    else:
        settings = Settings()
        targets = [(r, settings.url(r), None) for r in roles]
    for role, url, connect_args in targets:
        check_reachable(role, url, connect_args)


class _NoTraceback(logging.Formatter):
    """Formats a record without its traceback (Prefect logs a failed task's or flow's traceback on the
    console; without --debug the console shows the one-line message and the API log keeps the rest)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _ConsoleFloor(logging.Filter):
    """Drops console records below the command's level: flows/run_logs.py demotes Prefect's failure
    records to DEBUG after the logger's level check, so without this an early failed `etl run` printed
    a `DEBUG prefect.flow_runs: Encountered exception ...` line repeating the error."""

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.floor


def _quiet_console_tracebacks(floor: int = logging.INFO) -> None:
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's logging config applied now (once), so its handlers exist to wrap

    # Prefect's loggers, ours (PREFECT_LOGGING_EXTRA_LOGGERS), and the root logger's console handlers;
    # not pytest's capture handlers (a test embedding `main` still sees whole records).
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ("prefect", "etl")]
    for lg in [logging.getLogger(), *(logging.getLogger(n) for n in names)]:
        for h in lg.handlers:
            if (isinstance(h, logging.StreamHandler) and not isinstance(h.formatter, _NoTraceback)
                    and not type(h).__module__.startswith("_pytest")):
                h.setFormatter(_NoTraceback(h.formatter))
                h.addFilter(_ConsoleFloor(floor))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose or args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic", "docket", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.debug:
        _quiet_console_tracebacks(logging.DEBUG if args.verbose else logging.INFO)
    try:
        _check_databases(args)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that stopped early (`| head`) is handled below
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`etl status --json | head`): stop quietly, as a shell tool
        # killed by SIGPIPE does (exit 141), and point stdout at /dev/null so the interpreter's final
        # flush does not print "Exception ignored ... BrokenPipeError".
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - every failure ends as one line; --debug shows where
        if args.debug:
            raise
        print(f"etl {args.command}: {_one_line(e)}", file=sys.stderr)
        if isinstance(e, LoadError):
            return 1
        return 2 if isinstance(e, EtlError) else 1


def _one_line(e: BaseException) -> str:
    """The error's own first line (a driver error: the server's reason, not SQLAlchemy's SQL dump and
    link), redacted; errors we do not expect carry a hint to --debug."""
    if isinstance(e, EtlError):
        return redact(" ".join(str(e).split()))
    root = getattr(e, "orig", None) or e
    text = (str(root).strip().splitlines() or [""])[0]
    return redact(f"{type(root).__name__}: {text}" if text else type(root).__name__) + " (--debug shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
