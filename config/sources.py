"""The sources file (`ETL_SOURCES`): many clinics, one warehouse.

One entry per source database (a clinic): where it is, where its replica is, which analytics schema
receives its tables and which table config it follows. `ETL_ANALYTICS_URL` stays the one warehouse.
Without `ETL_SOURCES` nothing here is used and every command works on the one source of `ETL_*_URL`.

A bad file fails here, before any database is touched, with one line naming the file, the source
and the key (`sources.yml: sources.north.source_url: environment variable NORTH_URL is not set`).
`${VAR}` in any value is read from the environment; URLs stay `SecretStr` from then on.

Example:
    ```python
    from config.settings import Settings
    from config.sources import load_sources

    sources = load_sources("sources.yml")
    for src in sources.select(["north", "south"]):
        s = src.settings(Settings())     # ETL_* of this clinic: its URLs, schema and table config
        print(src.name, s.analytics_schema, s.config)
    ```
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from config.errors import ConfigError
from config.settings import Settings

NAME_PATTERN = r"^[a-z0-9_]+$"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# PostgreSQL identifiers we create (raw_<name>, raw_all): unquoted-safe and at most 63 bytes.
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceBlocks(_Strict):
    """`blocks: {source: north-source, replica: north-replica}`: SqlAlchemyConnector blocks instead of URLs."""

    source: str = Field(description="Block with this clinic's production MySQL connection.")
    replica: str = Field(description="Block with this clinic's replica MySQL connection.")


class Source(_Strict):
    """One clinic: a source database, its replica, its analytics schema and its table config."""

    name: str = Field(pattern=NAME_PATTERN, max_length=40,
                      description="The clinic's name ([a-z0-9_]+, unique): run names, `_source` values, metrics.")
    source_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of this clinic's production database (read-only use).")
    replica_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of this clinic's replica database (created when missing).")
    blocks: SourceBlocks | None = Field(
        default=None, description="Connector blocks holding the two URLs, instead of source_url/replica_url.")
    analytics_schema: str | None = Field(
        default=None, description="Analytics schema of this clinic's tables (default raw_<name>).")
    config: str | None = Field(
        default=None, description="Table config file of this clinic (default ETL_CONFIG); clinics may share one.")

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> Source:
        urls = (self.source_url is not None, self.replica_url is not None)
        if self.blocks is not None and any(urls):
            raise ValueError("give either `blocks` or `source_url`/`replica_url`, not both")
        if self.blocks is None and not all(urls):
            missing = "source_url" if not urls[0] else "replica_url"
            raise ValueError(f"`{missing}` is missing (or give `blocks: {{source: ..., replica: ...}}`)")
        if self.analytics_schema is not None and not _SCHEMA_RE.match(self.analytics_schema):
            raise ValueError(f"analytics_schema {self.analytics_schema!r} is not a lower-case identifier "
                             f"([a-z_][a-z0-9_]*, at most 63 characters)")
        return self

    @property
    def schema(self) -> str:
        return self.analytics_schema or f"raw_{self.name}"

    def settings(self, base: Settings) -> Settings:
        """`base` (the environment's ETL_*) with this clinic's URLs, analytics schema and table config.
        With `blocks` the URLs stay unset here: the run reads them from the blocks."""
        update: dict[str, Any] = {"analytics_schema": self.schema, "config": self.config or base.config,
                                  "source_url": self.source_url, "replica_url": self.replica_url}
        return base.model_copy(update=update)


class SourcesFile(_Strict):
    """The whole file: its sources and the union schema."""

    version: Literal[1] = Field(description="Format version of the sources file; 1.")
    sources: tuple[Source, ...] = Field(min_length=1, description="The clinics, in the order runs start them.")
    union_schema: str | None = Field(
        default="raw_all", description="Schema of the union views over every clinic's tables; null: no union.")
    path: str = Field(default="", exclude=True, description="The file this was read from, for messages.")

    @model_validator(mode="after")
    def _unique(self) -> SourcesFile:
        seen: dict[str, str] = {}
        for s in self.sources:
            if s.name in {x.name for x in self.sources[:self.sources.index(s)]}:
                raise ValueError(f"sources.{s.name}: name {s.name!r} is used twice; names must be unique")
            if s.schema in seen:
                raise ValueError(f"sources.{s.name}: analytics_schema {s.schema!r} is also {seen[s.schema]}'s; "
                                 f"each clinic needs its own schema")
            seen[s.schema] = s.name
        if self.union_schema is not None:
            if not _SCHEMA_RE.match(self.union_schema):
                raise ValueError(f"union_schema {self.union_schema!r} is not a lower-case identifier")
            if self.union_schema in seen:
                raise ValueError(f"union_schema {self.union_schema!r} is also the analytics_schema of "
                                 f"{seen[self.union_schema]}; pick another")
        return self

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def get(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        match = difflib.get_close_matches(name, self.names, n=1, cutoff=0.6)
        hint = f" (did you mean {match[0]!r}?)" if match else f"; the sources are {', '.join(self.names)}"
        raise ConfigError(f"{self.path or 'sources file'}: no source named {name!r}{hint}")

    def select(self, names: list[str] | None) -> list[Source]:
        """The named sources in the file's order (default: every source); an unknown name fails."""
        if not names:
            return list(self.sources)
        wanted = {self.get(n).name for n in names}
        return [s for s in self.sources if s.name in wanted]


def _expand(value: Any, where: str, path: str, env: dict[str, str]) -> Any:
    """`${VAR}` -> the environment's value, in every string of the file (recursively)."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), path, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}.{_label(v, i)}", path, env) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in env:
                raise ConfigError(f"{path}: {where}: environment variable {m.group(1)} is not set")
            return env[m.group(1)]
        return _VAR_RE.sub(sub, value)
    return value


def _label(item: Any, index: int) -> str:
    """A list entry as messages name it: a source by its name, else by position."""
    if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
        return item["name"]
    return str(index)


_KEYS = {(): ["version", "sources", "union_schema"], ("sources",): list(Source.model_fields),
         ("blocks",): list(SourceBlocks.model_fields)}


def _format_error(path: str, raw: Any, err: ValidationError) -> str:
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(first["loc"])
    names = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0 and loc[i - 1] == "sources":
            items = raw.get("sources") if isinstance(raw, dict) else None
            names.append(_label(items[part], part) if isinstance(items, list) and part < len(items) else str(part))
        else:
            names.append(str(part))
    where = ".".join(names)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        scope = ("blocks",) if "blocks" in loc[:-1] else ("sources",) if "sources" in loc[:-1] else ()
        match = difflib.get_close_matches(key, _KEYS[scope], n=1, cutoff=0.6)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        return f"{path}: {where}: unknown key {key!r}{hint}"
    if first["type"] == "string_pattern_mismatch":
        msg = f"{first['input']!r} is not a valid name: use lower-case letters, digits and _ ([a-z0-9_]+)"
    if first["type"] == "literal_error" and loc == ["version"]:
        msg = f"version {first['input']!r} is not supported; use `version: 1`"
    # A validator's own message may already start with where it points (sources.<name>: ...).
    if not where or msg.startswith("sources."):
        return f"{path}: {msg}"
    return f"{path}: {where}: {msg}"


def parse_sources(text: str, path: str, *, env: dict[str, str] | None = None) -> SourcesFile:
    """Validate a sources file's text; ConfigError with one line naming file, source and key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `version: 1` and `sources:`")
    expanded = _expand(raw, "", path, dict(os.environ) if env is None else env)
    try:
        return SourcesFile.model_validate({**expanded, "path": path})
    except ValidationError as e:
        raise ConfigError(_format_error(path, raw, e)) from None


def load_sources(path: str | Path) -> SourcesFile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: sources file (ETL_SOURCES) not found") from None
    return parse_sources(text, str(p))


def sources_from_settings(settings: Settings) -> SourcesFile | None:
    """The file `ETL_SOURCES` names, validated; None when it is unset (one source, as without clinics)."""
    path = (settings.sources or "").strip()
    return load_sources(path) if path else None
