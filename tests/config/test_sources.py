"""The sources file: valid files load with their defaults; bad ones fail in one line naming file, source, key."""
from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from config.settings import Settings
from config.sources import load_sources, parse_sources, sources_from_settings
from tasks.errors import ConfigError

ENV = {"NORTH_SRC": "mysql+pymysql://etl:n%40rth-pw@db1:3306/od_north",
       "NORTH_REP": "mysql+pymysql://etl:rep-pw@127.0.0.1:3306/north_replica"}

GOOD = """
version: 1
sources:
  - name: north
    source_url: ${NORTH_SRC}
    replica_url: ${NORTH_REP}
    config: config/north.yml
  - name: south_2
    blocks: {source: south-source, replica: south-replica}
    analytics_schema: clinic_south
"""


def test_good_file_with_defaults() -> None:
    f = parse_sources(GOOD, "sources.yml", env=ENV)
    north, south = f.sources
    assert f.names == ["north", "south_2"]
    assert north.source_url.get_secret_value() == ENV["NORTH_SRC"]
    assert north.replica_url.get_secret_value() == ENV["NORTH_REP"]
    assert north.schema == "raw_north" and south.schema == "clinic_south"
    assert south.blocks.source == "south-source" and south.source_url is None
    assert f.union_schema == "raw_all"
    # The password stays hidden in every rendering of the model.
    assert "n%40rth-pw" not in repr(f) and "n%40rth-pw" not in str(north)


def test_settings_of_a_source() -> None:
    f = parse_sources(GOOD, "sources.yml", env=ENV)
    base = Settings(analytics_url="postgresql+psycopg2://x@h/db", config="config/tables.yml", max_source_queries=2)
    s = f.get("north").settings(base)
    # Settings.url() is a sqlalchemy URL (its password shows as *** when printed); the same URL as given.
    assert (s.url("source"), s.url("replica")) == (make_url(ENV["NORTH_SRC"]), make_url(ENV["NORTH_REP"]))
    assert "n%40rth-pw" not in str(s.url("source")) and "n@rth-pw" not in str(s.url("source"))
    assert (s.analytics_schema, s.config, s.max_source_queries) == ("raw_north", "config/north.yml", 2)
    assert s.url("analytics") == make_url("postgresql+psycopg2://x@h/db")
    s2 = f.get("south_2").settings(base)
    assert (s2.analytics_schema, s2.config, s2.source_url) == ("clinic_south", "config/tables.yml", None)


def test_select_keeps_file_order_and_names_unknown() -> None:
    f = parse_sources(GOOD, "sources.yml", env=ENV)
    assert [s.name for s in f.select(["south_2", "north"])] == ["north", "south_2"]
    assert [s.name for s in f.select(None)] == ["north", "south_2"]
    with pytest.raises(ConfigError, match=r"^sources.yml: no source named 'nort' \(did you mean 'north'\?\)$"):
        f.select(["nort"])


def test_union_off() -> None:
    f = parse_sources(GOOD + "union_schema: null\n", "s.yml", env=ENV)
    assert f.union_schema is None


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("${NORTH_SRC}", "${MISSING_VAR}"),
     "s.yml: sources.north.source_url: environment variable MISSING_VAR is not set"),
    (GOOD.replace("name: north", "name: North"),
     "s.yml: sources.North.name: 'North' is not a valid name: use lower-case letters, digits and _ ([a-z0-9_]+)"),
    (GOOD.replace("name: south_2", "name: north"), "s.yml: sources.north: name 'north' is used twice"),
    (GOOD.replace("    config: config/north.yml", "    confg: x.yml"),
     "s.yml: sources.north.confg: unknown key 'confg' (did you mean 'config'?)"),
    (GOOD.replace("{source: south-source,", "{sorce: south-source,"),
     "s.yml: sources.south_2.blocks.sorce: unknown key 'sorce' (did you mean 'source'?)"),
    (GOOD.replace("    replica_url: ${NORTH_REP}\n", ""), "s.yml: sources.north: `replica_url` is missing"),
    (GOOD.replace("    blocks: {source: south-source, replica: south-replica}\n",
                  "    blocks: {source: a, replica: b}\n    source_url: x\n"),
     "s.yml: sources.south_2: give either `blocks` or `source_url`/`replica_url`, not both"),
    (GOOD.replace("analytics_schema: clinic_south", "analytics_schema: raw_north"),
     "s.yml: sources.south_2: analytics_schema 'raw_north' is also north's"),
    (GOOD + "union_schema: clinic_south\n", "s.yml: union_schema 'clinic_south' is also the analytics_schema of south_2"),
    (GOOD.replace("version: 1", "version: 2"), "s.yml: version: version 2 is not supported; use `version: 1`"),
    (GOOD + "unoin_schema: x\n", "s.yml: unoin_schema: unknown key 'unoin_schema' (did you mean 'union_schema'?)"),
    ("version: 1\nsources: []\n", "s.yml: sources: "),
    ("version: 1\nsources: [\n", "s.yml: not valid YAML"),
])
def test_bad_file_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sources(text, "s.yml", env=ENV)
    text_ = str(info.value)
    assert text_.startswith(message), text_
    assert "\n" not in text_
    assert "rep-pw" not in text_ and "n%40rth-pw" not in text_


def test_loaded_from_etl_sources(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "sources.yml"
    p.write_text(GOOD, encoding="utf-8")
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ETL_SOURCES", str(p))
    assert sources_from_settings(Settings()).names == ["north", "south_2"]
    monkeypatch.delenv("ETL_SOURCES")
    assert sources_from_settings(Settings()) is None  # without ETL_SOURCES: one source, as today
    with pytest.raises(ConfigError, match="nope.yml: sources file \\(ETL_SOURCES\\) not found"):
        load_sources(tmp_path / "nope.yml")
