"""`etl`: the command line. Subcommands wire settings and config to flows and plain functions.

    etl discover [--output PATH]           write a table config for every source base table
    etl plan [--tables a,b]                what a run would do per table (reads metadata only)
    etl run [--tables a,b] [--full-refresh] [--blocks]
    etl status [--runs N] [--table T] [--json]
    etl blocks register                    save the three connector blocks from ETL_*_URL
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
    plan = build_plan(settings, cfg, tables=_split(args.tables), full_refresh=args.full_refresh)
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
    state = etl_pipeline(tables=_split(args.tables), full_refresh=args.full_refresh, config_path=config_path,
                         blocks=blocks, return_state=True)
    _print_last_run(settings, blocks)
    if state.is_completed():
        return 0
    try:
        state.result()
    except Exception as e:  # noqa: BLE001
        print(f"etl run: {redact(str(e))}", file=sys.stderr)
    return 1


def _print_last_run(settings: Settings, blocks=None) -> None:  # noqa: ANN001
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
        if runs:
            print(render_run(runs[0]))
    except Exception as e:  # noqa: BLE001 - the summary is a courtesy; the exit code says what matters
        print(f"(no summary: {redact(str(e))})", file=sys.stderr)


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
            _block_args(s)

    st = sub.add_parser("status", help="show the last runs from the etl schema")
    st.add_argument("--runs", type=int, default=3)
    st.add_argument("--table")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

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
