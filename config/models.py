"""The table configuration (`config/tables.yml`): pydantic models and the loader.

A bad file fails here, before any database is touched, with one line that names the file, the
table and the key, and for a misspelt key the closest valid one.

Example:
    ```python
    from config.models import load_pipeline_config

    cfg = load_pipeline_config("config/tables.yml")
    for group in cfg.groups_in_order():
        print(group.name, [t.name for t in cfg.tables_in_group(group.name)])
    ```
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.errors import ConfigError

Mode = Literal["full", "incremental", "binlog", "checksum"]
Deletes = Literal["detect", "off"]
ColumnCase = Literal["lower", "preserve"]
DbtCommand = Literal["build", "run", "test"]
OnTableFailure = Literal["skip", "run_rest"]

_LOOKBACK_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


def parse_lookback_seconds(value: str) -> int:
    """`'2h'` -> 7200. Raises ValueError naming the accepted forms."""
    m = _LOOKBACK_RE.match(value)
    if not m:
        raise ValueError(f"lookback {value!r} is not a duration like '90s', '30m', '2h' or '30d'")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LookbackWindow(_Strict):
    """`lookback: {columns: [ProcDate], window: 30d}`: every incremental run also re-reads the rows whose
    date column lies in the last `window` (e.g. procedures completed in the last 30 days), whatever their
    change columns say. For rows an application edits without touching any change column."""

    columns: tuple[str, ...] = Field(min_length=1, description="DATE, DATETIME or TIMESTAMP columns of the table.")
    window: str = Field(description="How far back from now, e.g. `30d`.")


_LOOKBACK_FORMS = "a duration like '2h' or '30d', or {columns: [ProcDate], window: '30d'}"


def parse_lookback(value: Any) -> str | LookbackWindow | None:
    """Validate either lookback form; ValueError names what is wrong and the accepted forms."""
    if value is None or isinstance(value, LookbackWindow):
        return value
    if isinstance(value, str):
        parse_lookback_seconds(value)
        return value
    if isinstance(value, dict):
        for k in value:
            if k not in ("columns", "window"):
                raise ValueError(f"unknown key {k!r}{_closest(str(k), ['columns', 'window'])}; "
                                 f"lookback is {_LOOKBACK_FORMS}")
        cols = value.get("columns")
        if isinstance(cols, str):
            cols = [cols]
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) and c for c in cols):
            raise ValueError(f"`columns` must list one or more date columns; lookback is {_LOOKBACK_FORMS}")
        window = value.get("window")
        if not isinstance(window, str):
            raise ValueError(f"`window` is missing or not a duration; lookback is {_LOOKBACK_FORMS}")
        parse_lookback_seconds(window)
        return LookbackWindow(columns=tuple(cols), window=window)
    raise ValueError(f"{value!r} is not a lookback; lookback is {_LOOKBACK_FORMS}")


class PriorityGroup(_Strict):
    """One priority group: its tables run after every earlier group has finished."""

    name: str = Field(description="Group name that tables refer to with `priority:`.")
    workers: int = Field(
        default=2, ge=1, le=64,
        description="Tables of this group processed at the same time; 1 means sequential.",
    )


class TableSettings(_Strict):
    """Keys that may appear under `defaults:` and under each table. Unset keys inherit."""

    enabled: bool | None = Field(default=None, description="Process this table. Disabled tables are skipped.")
    priority: str | None = Field(default=None, description="Name of the priority group this table runs in.")
    mode: Mode | None = Field(
        default=None,
        description="`full` reloads the whole table; `incremental` moves rows whose change columns advanced; "
                    "`binlog` applies the keys the source's binary log shows changed (tasks/binlog_reader.py); "
                    "`checksum` compares key-range checksums of source and replica and re-copies only the ranges "
                    "that differ (tables without a trustworthy change column; tasks/checksum_sync.py).",
    )
    batch_size: int | None = Field(
        default=None, gt=0, le=5_000_000,
        description="Rows per keyset chunk read from MySQL and committed to the target.",
    )
    deletes: Deletes | None = Field(
        default=None, description="`detect` propagates rows deleted in the source; `off` never deletes."
    )
    lookback: str | LookbackWindow | None = Field(
        default=None,
        description="Re-read on every incremental run: a duration (`2h`, `30d`) subtracted from the watermark, "
                    "or date columns with a window (`{columns: [ProcDate], window: 30d}`).",
    )
    boolean_columns: list[str] | None = Field(
        default=None,
        description="tinyint(1) columns loaded as PostgreSQL boolean; any value other than 0/1 then fails loudly.",
    )
    deletes_every: int | None = Field(
        default=None, ge=1, description="Check for deleted rows on every Nth incremental run (1 = every run)."
    )
    deletes_max_fraction: float | None = Field(
        default=None, gt=0, le=1,
        description="Refuse (fail the table) when a run would delete more than this fraction of its rows ...",
    )
    deletes_min_rows: int | None = Field(
        default=None, ge=0, description="... and more than this many rows. Both must be exceeded to refuse."
    )

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback_form(cls, v: Any) -> str | LookbackWindow | None:
        return parse_lookback(v)


class TableConfig(TableSettings):
    """One source table. Keys left out take their value from `defaults:`."""

    primary_key: list[str] | None = Field(
        default=None,
        description="Primary key columns (composite allowed). Empty or missing: the table is copied whole.",
    )
    incremental_columns: list[str] | None = Field(
        default=None,
        description="Change-tracking columns; a row changed when any of them advanced (OR semantics).",
    )
    estimated_rows: int | None = Field(
        default=None, ge=0, description="Row estimate written by `etl discover`; informational only."
    )
    comment: str | None = Field(default=None, description="Free text, e.g. why discover chose this mode.")


class ResolvedTable(BaseModel):
    """A table with every default applied: what the pipeline actually uses."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Table name as spelled in the source database.")
    enabled: bool = Field(description="Whether the table is processed.")
    priority: str = Field(description="Priority group name.")
    mode: Mode = Field(description="full or incremental.")
    batch_size: int = Field(description="Rows per keyset chunk.")
    deletes: Deletes = Field(description="Delete propagation.")
    lookback: str | LookbackWindow | None = Field(description="Re-read window for incremental runs.")
    deletes_every: int = Field(description="Delete check every Nth incremental run.")
    deletes_max_fraction: float = Field(description="Delete guard: fraction of the table.")
    deletes_min_rows: int = Field(description="Delete guard: row count.")
    boolean_columns: tuple[str, ...] = Field(description="tinyint(1) columns mapped to boolean.")
    primary_key: tuple[str, ...] = Field(description="Primary key columns; empty when the table has none.")
    incremental_columns: tuple[str, ...] = Field(description="Change-tracking columns.")
    estimated_rows: int | None = Field(description="Row estimate from discover.")


class AnalyticsOptions(_Strict):
    """How tables look in PostgreSQL."""

    column_case: ColumnCase = Field(
        default="lower",
        description="`lower` lower-cases column names; `preserve` keeps the source spelling (then quote them).",
    )
    loaded_at_column: str = Field(
        default="_etl_loaded_at",
        description="Extra timestamptz column on every analytics table: when the row was last loaded.",
    )
    adopt: bool = Field(
        default=False,
        description="Load into an analytics schema that already holds tables the ETL did not create (e.g. "
                    "`public`): the ETL then owns it and replaces its tables of the same names. Off: such a "
                    "schema is refused before anything is written (tasks/guard.py).",
    )


class ReplicaOptions(_Strict):
    """The replica MySQL database."""

    adopt: bool = Field(
        default=False,
        description="Take over a replica database that already holds the source's tables without the ETL's "
                    "state (`_etl_state`): its tables of the source's names are recorded as the ETL's and "
                    "replaced by full copies. Off: such a database looks like an application database and is "
                    "refused before anything is written (tasks/guard.py).",
    )


class DbtOptions(_Strict):
    """`dbt:`: run dbt in the same Prefect run once the tables are loaded (each dbt node a task run).

    Relative paths are taken from the directory of the table config file, so the file and its dbt
    project can move together.
    """

    project_dir: str = Field(min_length=1, description="The dbt project directory (holds dbt_project.yml).")
    profiles_dir: str | None = Field(
        default=None,
        description="Directory with profiles.yml (default: DBT_PROFILES_DIR, else the project directory, else ~/.dbt).",
    )
    target: str | None = Field(default=None, description="Profile target (`--target`); default: the profile's own.")
    command: DbtCommand = Field(default="build", description="`build` (models, tests, seeds, snapshots), `run` or `test`.")
    select: list[str] | None = Field(
        default=None, description="dbt selectors passed as `--select` (default: the whole project)."
    )
    on_table_failure: OnTableFailure = Field(
        default="skip",
        description="When a table failed: `skip` dbt altogether; `run_rest` runs it without the failed tables' "
                    "downstream nodes (`--exclude source:<source>.<table>+`).",
    )
    source: str | None = Field(
        default=None,
        description="dbt source name of the analytics tables, as `etl dbt-sources --name` wrote it "
                    "(default: the analytics schema name, which is also that command's default).",
    )

    @field_validator("select", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


_BUILTIN_DEFAULTS = TableSettings(
    enabled=True, priority="normal", mode="full", batch_size=50_000, deletes="detect",
    lookback=None, boolean_columns=[], deletes_every=1, deletes_max_fraction=0.10, deletes_min_rows=1000,
)


class BinlogOptions(_Strict):
    """Binlog mode (tables with `mode: binlog`)."""

    on_log_gone: Literal["stop", "resnapshot"] = Field(
        default="stop",
        description="When the saved log position is gone (purged, restored server, other server id): `stop` fails "
                    "the binlog tables with the command that fixes it; `resnapshot` copies them again in full.",
    )


class PipelineConfig(_Strict):
    """The whole `tables.yml`."""

    version: Literal[1] = Field(default=1, description="File format version.")
    priorities: list[PriorityGroup] = Field(
        default_factory=lambda: [
            PriorityGroup(name="critical", workers=2),
            PriorityGroup(name="normal", workers=2),
            PriorityGroup(name="bulk", workers=1),
        ],
        description="Priority groups in the order they run.",
    )
    analytics: AnalyticsOptions = Field(default_factory=AnalyticsOptions, description="PostgreSQL naming options.")
    replica: ReplicaOptions = Field(default_factory=ReplicaOptions, description="Replica database options.")
    defaults: TableSettings = Field(default_factory=TableSettings, description="Applied to every table.")
    tables: dict[str, TableConfig] = Field(default_factory=dict, description="Source table name -> settings.")
    dbt: DbtOptions | None = Field(default=None, description="Run dbt after a load; absent: dbt is not run.")
    binlog: BinlogOptions = Field(default_factory=BinlogOptions, description="Binlog mode options.")

    @model_validator(mode="after")
    def _check_references(self) -> PipelineConfig:
        names = [g.name for g in self.priorities]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"priorities: group {dup[0]!r} is listed twice")
        for tname, t in self.tables.items():
            prio = t.priority or self.defaults.priority or _BUILTIN_DEFAULTS.priority
            if prio not in names:
                hint = _closest(prio, names)
                raise ValueError(
                    f"tables.{tname}.priority: unknown group {prio!r}"
                    f"{hint}; define it under `priorities:`"
                )
            if t.primary_key is not None and len(set(t.primary_key)) != len(t.primary_key):
                raise ValueError(f"tables.{tname}.primary_key: a column is listed twice")
        lowered: dict[str, str] = {}
        for tname in self.tables:
            other = lowered.setdefault(tname.lower(), tname)
            if other != tname:
                raise ValueError(
                    f"tables.{tname}: clashes with {other!r} once lower-cased for PostgreSQL; disable one of them"
                )
        return self

    def groups_in_order(self) -> list[PriorityGroup]:
        return list(self.priorities)

    def resolve(self, name: str) -> ResolvedTable:
        t = self.tables[name]
        merged: dict[str, Any] = {}
        for key in TableSettings.model_fields:
            for layer in (t, self.defaults, _BUILTIN_DEFAULTS):
                value = getattr(layer, key)
                if value is not None:
                    merged[key] = value
                    break
        return ResolvedTable(
            name=name,
            enabled=merged["enabled"],
            priority=merged["priority"],
            mode=merged["mode"],
            batch_size=merged["batch_size"],
            deletes=merged["deletes"],
            lookback=merged.get("lookback"),
            deletes_every=merged["deletes_every"],
            deletes_max_fraction=merged["deletes_max_fraction"],
            deletes_min_rows=merged["deletes_min_rows"],
            boolean_columns=tuple(merged["boolean_columns"]),
            primary_key=tuple(t.primary_key or ()),
            incremental_columns=tuple(t.incremental_columns or ()),
            estimated_rows=t.estimated_rows,
        )

    def resolved_tables(self, only: list[str] | None = None) -> list[ResolvedTable]:
        """Enabled tables (or exactly `only`, enabled or not), in file order."""
        if only:
            unknown = [n for n in only if n not in self.tables]
            if unknown:
                hint = _closest(unknown[0], list(self.tables))
                raise ConfigError(f"table {unknown[0]!r} is not in the table config{hint}")
            return [self.resolve(n) for n in only]
        return [r for r in (self.resolve(n) for n in self.tables) if r.enabled]

    def tables_in_group(self, group: str, tables: list[ResolvedTable]) -> list[ResolvedTable]:
        return [t for t in tables if t.priority == group]


def _closest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at the place an `extra_forbidden` error points to."""
    if not loc:
        return list(PipelineConfig.model_fields)
    if loc[0] == "tables" and len(loc) >= 2:
        return list(TableConfig.model_fields)
    if loc[0] == "defaults":
        return list(TableSettings.model_fields)
    if loc[0] == "priorities":
        return list(PriorityGroup.model_fields)
    if loc[0] == "analytics":
        return list(AnalyticsOptions.model_fields)
    if loc[0] == "replica":
        return list(ReplicaOptions.model_fields)
    if loc[0] == "dbt":
        return list(DbtOptions.model_fields)
    return list(PipelineConfig.model_fields)


def _format_error(path: str, err: ValidationError) -> str:
    errors = err.errors()
    # A misspelt key also makes the key it meant "missing": name the typo, which is the cause.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        hint = _closest(key, _allowed_keys(loc[:-1]))
        return f"{path}: {where}: unknown key {key!r}{hint}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and not loc:
        return f"{path}: {msg}"
    return f"{path}: {where}: {msg}"


def parse_pipeline_config(text: str, path: str = "<string>") -> PipelineConfig:
    try:
        # libyaml's loader when PyYAML has it: the same documents, ~10x faster (a 450-table config took
        # 0.25 s per read in pure Python, read twice by `etl run`).
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `tables:` at the top level")
    tables = raw.get("tables")
    if isinstance(tables, dict):
        # `patient:` with nothing under it means "all defaults".
        raw["tables"] = {str(k): (v if v is not None else {}) for k, v in tables.items()}
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: table config not found; run `etl discover --output {p}` to create it") from None
    return parse_pipeline_config(text, str(p))
