"""dbt after the load: whether it runs, with which arguments, and what it did.

The system this replaces ended its nightly run with `dbt build`, only when the load succeeded.
Here the `dbt:` section of the table config (config.models.DbtOptions) says which project and
command; after the tables, the pipeline calls `run_dbt_after_load`, which runs dbt through
prefect-dbt's `PrefectDbtRunner` inside the pipeline's own flow run (every dbt node becomes a task
run there), unless:
- `--no-dbt` / the flow parameter `dbt=False` turned it off, or
- a table failed and `on_table_failure` is `skip` (the default): models over a table that did not
  load would be built on stale rows and look current. With `run_rest` dbt runs without the failed
  tables' downstream nodes (`--exclude source:<source>.<table>+`).

Every decision and result is one row of `etl.dbt_runs` (run id, status, why skipped, which tables'
downstream was excluded, models/tests counts, seconds, failing nodes) and a section of the run
report. prefect-dbt and dbt are imported only when dbt really runs, so `etl` works without them
being importable when the config has no `dbt:` section.

Example:
    ```python
    from config.models import parse_pipeline_config
    from tasks.dbt_run import decide, dbt_args

    opts = parse_pipeline_config("dbt: {project_dir: dbt, on_table_failure: run_rest}").dbt
    d = decide(opts, enabled=True, failed_tables=["appointment"])
    print(d.run, dbt_args(opts, source="raw", exclude_tables=d.exclude_tables))
    # True ['build', '--exclude', 'source:raw.appointment+']
    ```
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from config.models import DbtOptions
from tasks.connections import EngineUrls, open_metrics_engine
from tasks.errors import redact
from tasks.identifiers import pg_table_name

log = logging.getLogger("etl.dbt")

DBT_RUNS = "etl.dbt_runs"
DbtStatus = Literal["ok", "failed", "skipped"]

_DDL = f"""CREATE TABLE IF NOT EXISTS {DBT_RUNS} (
    run_id text PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL,
    command text,
    reason text,
    excluded_tables text[],
    models_ok integer NOT NULL DEFAULT 0,
    models_failed integer NOT NULL DEFAULT 0,
    models_skipped integer NOT NULL DEFAULT 0,
    tests_passed integer NOT NULL DEFAULT 0,
    tests_failed integer NOT NULL DEFAULT 0,
    tests_warned integer NOT NULL DEFAULT 0,
    seconds double precision,
    error text,
    nodes jsonb
)"""

# dbt's node statuses, by what they mean for the report.
_OK = {"success", "pass"}
_FAILED = {"error", "fail", "runtime error"}
_TEST_TYPES = {"test", "unit_test"}


class DbtNode(BaseModel):
    """One dbt node's result (a model, test, seed, snapshot)."""

    unique_id: str = Field(description="dbt's id, e.g. `model.etl_fixture.stg_patient`.")
    resource_type: str = Field(description="model, test, unit_test, seed, snapshot.")
    status: str = Field(description="dbt's status: success, error, skipped, pass, fail, warn.")
    seconds: float = Field(default=0.0, description="Execution time.")
    message: str | None = Field(default=None, description="dbt's message for a node that did not succeed.")


class DbtResult(BaseModel):
    """What dbt did after one load (or why it did not run)."""

    status: DbtStatus = Field(description="ok, failed (dbt ran and something failed, or could not start), skipped.")
    command: str | None = Field(default=None, description="The dbt arguments, as a shell would show them.")
    reason: str | None = Field(default=None, description="Why dbt was skipped, or what was left out.")
    excluded_tables: list[str] = Field(default_factory=list, description="Failed tables whose downstream was excluded.")
    models_ok: int = Field(default=0, description="Models built.")
    models_failed: int = Field(default=0, description="Models that errored.")
    models_skipped: int = Field(default=0, description="Models dbt skipped (upstream failed).")
    tests_passed: int = Field(default=0, description="Data and unit tests that passed.")
    tests_failed: int = Field(default=0, description="Tests that failed or errored.")
    tests_warned: int = Field(default=0, description="Tests that warned.")
    seconds: float = Field(default=0.0, description="Wall time of the dbt invocation.")
    error: str | None = Field(default=None, description="Why dbt could not run (redacted).")
    nodes: list[DbtNode] = Field(default_factory=list, description="Every node's result.")

    def summary(self) -> str:
        if self.status == "skipped":
            return f"dbt skipped: {self.reason}"
        head = f"dbt {self.status}: `{self.command}`"
        if self.error:
            return f"{head}: {self.error}"
        return (f"{head}: {self.models_ok} models ok, {self.models_failed} failed, {self.models_skipped} skipped; "
                f"{self.tests_passed} tests passed, {self.tests_failed} failed; {self.seconds:.1f} s"
                + (f" ({self.reason})" if self.reason else ""))


@dataclass(frozen=True)
class Decision:
    run: bool
    reason: str | None = None
    exclude_tables: list[str] = field(default_factory=list)


def decide(opts: DbtOptions, *, enabled: bool, failed_tables: list[str]) -> Decision:
    """Whether dbt runs after this load, and which failed tables' downstream it leaves out."""
    if not enabled:
        return Decision(False, "turned off for this run (--no-dbt / flow parameter dbt=false)")
    failed = sorted(failed_tables)
    if not failed:
        return Decision(True)
    names = ", ".join(failed)
    if opts.on_table_failure == "skip":
        return Decision(False, f"{len(failed)} table(s) failed: {names} (on_table_failure: skip; "
                               f"`run_rest` would build the rest)")
    return Decision(True, f"downstream of failed table(s) {names} excluded (on_table_failure: run_rest)", failed)


def dbt_args(opts: DbtOptions, *, source: str, exclude_tables: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """The dbt command line (without `dbt`)."""
    args = [opts.command]
    if opts.select:
        args += ["--select", *opts.select]
    if exclude_tables:
        # dbt names a source table as it is in PostgreSQL, which `etl dbt-sources` wrote.
        args += ["--exclude", *(f"source:{source}.{pg_table_name(t)}+" for t in exclude_tables)]
    if opts.target:
        args += ["--target", opts.target]
    return args


def resolve_dirs(opts: DbtOptions, *, config_path: str | Path | None) -> tuple[Path, Path | None]:
    """project_dir and profiles_dir, relative ones taken from the table config's directory.

    profiles_dir unset: DBT_PROFILES_DIR if set (None here; prefect-dbt reads it), else the project
    directory when it holds a profiles.yml, else ~/.dbt.
    """
    base = Path(config_path).resolve().parent if config_path else Path.cwd()
    project = (base / opts.project_dir).resolve()
    if opts.profiles_dir:
        return project, (base / opts.profiles_dir).resolve()
    if os.environ.get("DBT_PROFILES_DIR"):
        return project, None
    return project, project if (project / "profiles.yml").exists() else Path.home() / ".dbt"


def check_dirs(project: Path, profiles: Path | None) -> str | None:
    """What is missing for dbt to start, as one line naming the key to change; None when all is there."""
    if not (project / "dbt_project.yml").is_file():
        return f"dbt.project_dir: {project} has no dbt_project.yml; point project_dir at the dbt project"
    if profiles is not None and not (profiles / "profiles.yml").is_file():
        return f"dbt.profiles_dir: {profiles} has no profiles.yml; set profiles_dir (or DBT_PROFILES_DIR)"
    return None


def describe(opts: DbtOptions | None, *, config_path: str | Path | None, source: str) -> str:
    """One line for `etl plan`: whether and how dbt runs after the load."""
    if opts is None:
        return "dbt: not configured (no `dbt:` section in the table config)"
    project, profiles = resolve_dirs(opts, config_path=config_path)
    when = ("only when every table loads (on_table_failure: skip)" if opts.on_table_failure == "skip" else
            "also when tables fail, without their downstream (on_table_failure: run_rest)")
    line = f"dbt: will run `dbt {shlex.join(dbt_args(opts, source=source))}` in {project} after the load, {when}"
    problem = check_dirs(project, profiles)
    return f"{line}; PROBLEM: {problem}" if problem else line


def summarize(res: Any, *, command: str, seconds: float, reason: str | None = None,
              excluded: list[str] = (), secrets: tuple[str, ...] = ()) -> DbtResult:  # type: ignore[assignment]
    """A DbtResult from a dbtRunnerResult (its `.result.results` are the node results)."""
    nodes = []
    for r in getattr(getattr(res, "result", None), "results", None) or []:
        node = r.node
        status = str(getattr(r.status, "value", r.status)).lower()
        nodes.append(DbtNode(
            unique_id=node.unique_id, resource_type=str(getattr(node.resource_type, "value", node.resource_type)),
            status=status, seconds=float(r.execution_time or 0.0),
            message=None if status in _OK else redact(str(r.message or ""), secrets) or None))
    models = [n for n in nodes if n.resource_type == "model"]
    tests = [n for n in nodes if n.resource_type in _TEST_TYPES]
    any_failed = any(n.status in _FAILED for n in nodes)
    return DbtResult(
        status="failed" if any_failed or not res.success else "ok", command=command, reason=reason,
        excluded_tables=list(excluded),
        models_ok=sum(n.status in _OK for n in models), models_failed=sum(n.status in _FAILED for n in models),
        models_skipped=sum(n.status == "skipped" for n in models),
        tests_passed=sum(n.status in _OK for n in tests), tests_failed=sum(n.status in _FAILED for n in tests),
        tests_warned=sum(n.status == "warn" for n in tests), seconds=seconds, nodes=nodes)


def invoke(args: list[str], *, project: Path, profiles: Path | None) -> Any:
    """Run dbt through prefect-dbt: inside a flow run each node becomes a task run of that run."""
    from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

    kw: dict[str, Any] = {"project_dir": project}
    if profiles is not None:
        kw["profiles_dir"] = profiles
    # raise_on_failure=False: a failed test is a result to report, not an exception to unwind.
    runner = PrefectDbtRunner(settings=PrefectDbtSettings(**kw), raise_on_failure=False)
    return runner.invoke(args)


def run_dbt(opts: DbtOptions, decision: Decision, *, config_path: str | Path | None, source: str,
            secrets: tuple[str, ...] = ()) -> DbtResult:
    """Run dbt as decided (or say why not); never raises, the result says what went wrong."""
    args = dbt_args(opts, source=source, exclude_tables=decision.exclude_tables)
    command = "dbt " + shlex.join(args)
    if not decision.run:
        return DbtResult(status="skipped", command=command, reason=decision.reason)
    project, profiles = resolve_dirs(opts, config_path=config_path)
    problem = check_dirs(project, profiles)
    if problem:
        return DbtResult(status="failed", command=command, reason=decision.reason,
                         excluded_tables=decision.exclude_tables, error=problem)
    t0 = time.monotonic()
    try:
        res = invoke(args, project=project, profiles=profiles)
    except Exception as e:  # noqa: BLE001 - dbt could not start (parse error, bad profile): a result
        return DbtResult(status="failed", command=command, reason=decision.reason,
                         excluded_tables=decision.exclude_tables, seconds=time.monotonic() - t0,
                         error=redact(f"{type(e).__name__}: {e}", secrets)[:2000])
    return summarize(res, command=command, seconds=time.monotonic() - t0, reason=decision.reason,
                     excluded=decision.exclude_tables, secrets=secrets)


def record(engine: Engine, run_id: str, result: DbtResult) -> None:
    """One etl.dbt_runs row per pipeline run (replaced when the run is retried)."""
    with engine.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            # Same lock as the other etl.* DDL: tables of a fresh database are created once.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('etl.metrics.ddl'))")
            cur.execute("CREATE SCHEMA IF NOT EXISTS etl")
            cur.execute(_DDL)
            cur.execute(
                f"INSERT INTO {DBT_RUNS} (run_id, status, command, reason, excluded_tables, models_ok, models_failed, "
                "models_skipped, tests_passed, tests_failed, tests_warned, seconds, error, nodes) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
                "at = now(), status = EXCLUDED.status, command = EXCLUDED.command, reason = EXCLUDED.reason, "
                "excluded_tables = EXCLUDED.excluded_tables, models_ok = EXCLUDED.models_ok, "
                "models_failed = EXCLUDED.models_failed, models_skipped = EXCLUDED.models_skipped, "
                "tests_passed = EXCLUDED.tests_passed, tests_failed = EXCLUDED.tests_failed, "
                "tests_warned = EXCLUDED.tests_warned, seconds = EXCLUDED.seconds, error = EXCLUDED.error, "
                "nodes = EXCLUDED.nodes",
                (run_id, result.status, result.command, result.reason, result.excluded_tables, result.models_ok,
                 result.models_failed, result.models_skipped, result.tests_passed, result.tests_failed,
                 result.tests_warned, result.seconds, result.error,
                 json.dumps([n.model_dump() for n in result.nodes])))
        raw.commit()


def run_dbt_after_load(opts: DbtOptions | None, *, enabled: bool, failed_tables: list[str], run_id: str,
                       urls: EngineUrls, config_path: str | Path | None, pg_schema: str,
                       logger: Any = None) -> DbtResult | None:
    """The pipeline's dbt step: decide, run, record in etl.dbt_runs, log. None without a `dbt:` section.

    Called after the run's engines are disposed; the row is written on a connection of its own.
    """
    if opts is None:
        return None
    logger = logger or log
    secrets = urls.secrets()
    result = run_dbt(opts, decide(opts, enabled=enabled, failed_tables=failed_tables), config_path=config_path,
                     source=opts.source or pg_schema, secrets=secrets)
    try:
        with open_metrics_engine(urls.analytics, urls.analytics_connect_args) as engine:
            record(engine, run_id, result)
    except Exception as e:  # noqa: BLE001 - the report and the run state still say what dbt did
        logger.warning("could not record the dbt result in %s: %s", DBT_RUNS, redact(str(e), secrets))
    (logger.warning if result.status == "failed" else logger.info)("%s", result.summary())
    return result
