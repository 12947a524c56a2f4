"""`etl`: the command line. Subcommands wire settings and config to flows and plain functions.

    etl discover [--output PATH]           write a table config for every source base table
    etl plan [--tables a,b]                what a run would do per table (reads metadata only)
    etl run [--tables a,b] [--full-refresh] [--blocks] [--ignore-blackout] [--dispatch local|deployment]
            [--metrics-keep-days N]
    etl status [--runs N] [--table T] [--json]
    etl connections [--runs N] [--json]   connections per run and database, and pool-sizing advice
    etl dbt-sources [--output PATH]       a dbt sources.yml for the analytics schema as it is now
    etl blocks register                    save the three connector blocks from ETL_*_URL

Exit status: 0 ok, 1 a table or the run failed, 2 bad config or settings, 3 refused by the blackout
window (ETL_BLACKOUT; nothing was touched).
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
from tasks.errors import EtlError, redact  # noqa: E402


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_discover(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from tasks.connections import create_engine, describe_url
    from tasks.discovery import discover_tables, render_config

    settings = Settings()
    url = settings.url("source")
    engine = create_engine("source", url, pool_size=1)
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
    from tasks.planning import build_plan, render_plan

    settings = Settings()
    from config.models import load_pipeline_config

    cfg = load_pipeline_config(args.config or settings.config)
    plan = build_plan(settings, cfg, tables=_split(args.tables), full_refresh=args.full_refresh,
                      config_path=args.config or settings.config)
    print(render_plan(plan))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from config.models import load_pipeline_config

    settings = Settings()
    config_path = args.config or settings.config
    # Validate the config before Prefect or any database is touched.
    cfg = load_pipeline_config(config_path)
    cfg.resolved_tables(_split(args.tables))

    from blocks.connectors import BlockNames
    from flows.pipeline import etl_pipeline

    blocks = None
    if args.blocks:
        blocks = BlockNames(source=args.source_block, replica=args.replica_block, analytics=args.analytics_block)
    from tasks.schedule_guard import BlackoutRefused

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
    return 1


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
    """Compare source, replica and analytics; with --repair re-copy only the ranges that differ."""
    import datetime as dt

    from sqlalchemy.engine import make_url

    from blocks.connectors import urls_from_settings
    from config.models import load_pipeline_config
    from tasks.connections import open_engines
    from tasks.mysql_schema import server_identity
    from tasks.repair import repair_ranges
    from tasks.verify import render_results, store_results, verify_table

    settings = Settings()
    cfg = load_pipeline_config(args.config or settings.config)
    chosen = cfg.resolved_tables(_split(args.tables))
    urls = urls_from_settings(settings)
    src_db, rep_db = make_url(urls.source).database, make_url(urls.replica).database
    run_id = "verify-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    common = dict(source_db=src_db, replica_db=rep_db, pg_schema=settings.analytics_schema,
                  column_case=cfg.analytics.column_case)
    with open_engines(urls, workers=1, create_replica=False) as engines:
        results = [verify_table(engines, t, **common) for t in chosen]
        if args.repair:
            method = settings.replica_method
            if method == "auto":
                with engines.source.connect() as s, engines.replica.connect() as r:
                    method = "server" if server_identity(s).same_server(server_identity(r)) else "stream"
            by_name = {t.name: t for t in chosen}
            for i, r in enumerate(results):
                if r.ok:
                    continue
                if not r.differing:
                    print(f"{r.table}: row counts differ outside any checked range; run `etl run --tables {r.table}`")
                    continue
                if repair_ranges(engines, by_name[r.table], r, method=method, **common) == 0:
                    print(f"{r.table}: key is not a single integer; repair it with "
                          f"`etl run --full-refresh --tables {r.table}`")
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
    from tasks.connections import create_engine
    from tasks.reports import last_runs, render_run, runs_as_json

    settings = Settings()
    engine = create_engine("analytics", settings.url("analytics"), pool_size=1)
    try:
        runs = last_runs(engine, runs=args.runs, table=args.table)
    finally:
        engine.dispose()
    if args.json:
        print(runs_as_json(runs))
    elif not runs:
        print("no runs recorded yet (etl schema is empty)")
    else:
        print("\n\n".join(render_run(r) for r in runs))
    return 0


def _analytics_engine(settings: Settings):  # noqa: ANN202
    from tasks.connections import create_engine

    return create_engine("analytics", settings.url("analytics"), pool_size=1)


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
                tables = read_pg_tables(cur, schema)
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
    if settings.replica_url is not None:
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


def cmd_blocks(args: argparse.Namespace) -> int:
    from blocks.connectors import BlockNames, register_blocks

    if args.action != "register":
        raise EtlError(f"unknown blocks action {args.action!r}; use `etl blocks register`")
    names = BlockNames(source=args.source_block, replica=args.replica_block, analytics=args.analytics_block)
    for role, desc in register_blocks(Settings(), names).items():
        print(f"saved {role} block {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etl", description="MySQL -> replica MySQL -> PostgreSQL analytics ETL")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="write a table config for every source base table")
    d.add_argument("--output", help="where to write (default: ETL_CONFIG or config/tables.yml; '-' = stdout)")
    d.set_defaults(func=cmd_discover)

    for name, func, helptext in (("plan", cmd_plan, "show what a run would do, touching no data"),
                                 ("run", cmd_run, "run the pipeline flow")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--tables", help="comma-separated table names (default: all enabled)")
        s.add_argument("--full-refresh", action="store_true", help="reload the chosen tables from scratch")
        s.add_argument("--config", help="table config path (default: ETL_CONFIG or config/tables.yml)")
        s.set_defaults(func=func)
        if name == "run":
            s.add_argument("--blocks", action="store_true", help="read credentials from the connector blocks")
            s.add_argument("--ignore-blackout", action="store_true",
                           help="start even inside the ETL_BLACKOUT window (manual runs only)")
            s.add_argument("--dispatch", choices=["local", "deployment"], default="local",
                           help="deployment: each table runs as a run of etl-table/table on the pool's workers")
            s.add_argument("--no-dbt", action="store_true", help="do not run the config's dbt: section after the load")
            s.add_argument("--metrics-keep-days", type=int, default=90,
                           help="delete run history older than this at the end of the run (0 keeps all)")
            _block_args(s)

    v = sub.add_parser("verify", help="compare source, replica and analytics (counts, key-range checksums)")
    v.add_argument("--tables", help="comma-separated table names (default: all enabled)")
    v.add_argument("--config", help="table config path (default: ETL_CONFIG or config/tables.yml)")
    v.add_argument("--repair", action="store_true", help="re-copy only the key ranges that differ")
    v.set_defaults(func=cmd_verify)

    st = sub.add_parser("status", help="show the last runs from the etl schema")
    st.add_argument("--runs", type=int, default=3)
    st.add_argument("--table")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    cn = sub.add_parser("connections", help="connections per run and database, with pool-sizing advice")
    cn.add_argument("--runs", type=int, default=3)
    cn.add_argument("--json", action="store_true")
    cn.add_argument("--strict", action="store_true", help="exit 1 when a run left a connection open")
    cn.set_defaults(func=cmd_connections)

    ds = sub.add_parser("dbt-sources", help="write a dbt sources.yml for the analytics schema")
    ds.add_argument("--output", default="sources.yml", help="where to write (default: sources.yml; '-' = stdout)")
    ds.add_argument("--name", help="dbt source name (default: the schema name)")
    ds.add_argument("--schema", help="analytics schema (default: ETL_ANALYTICS_SCHEMA)")
    ds.add_argument("--config", help="table config, for analytics.loaded_at_column (default: ETL_CONFIG)")
    ds.add_argument("--warn-after-hours", type=int, default=26)
    ds.add_argument("--error-after-hours", type=int, default=50)
    ds.add_argument("--style", choices=["config", "legacy"], default="config",
                    help="config: loaded_at_field/freshness under config: (dbt >= 1.10); legacy: as table keys")
    ds.set_defaults(func=cmd_dbt_sources)

    b = sub.add_parser("blocks", help="manage the SqlAlchemyConnector blocks")
    b.add_argument("action", choices=["register"])
    _block_args(b)
    b.set_defaults(func=cmd_blocks)
    return p


def _block_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source-block", default="etl-source")
    p.add_argument("--replica-block", default="etl-replica")
    p.add_argument("--analytics-block", default="etl-analytics")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic", "docket", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except EtlError as e:
        print(f"etl {args.command}: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
