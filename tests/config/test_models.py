"""The table config: valid files load with defaults applied; bad ones fail in one line naming file, table, key."""
from __future__ import annotations

import pytest

from config.models import load_pipeline_config, parse_pipeline_config
from tasks.errors import ConfigError

GOOD = """
version: 1
priorities:
  - {name: critical, workers: 2}
  - {name: normal, workers: 3}
  - {name: bulk, workers: 1}
defaults:
  batch_size: 1000
  priority: normal
tables:
  patient:
    priority: critical
    primary_key: [PatNum]
    incremental_columns: [DateTStamp, SecDateTEdit]
  procedurelog:
    priority: bulk
    batch_size: 250000
  definition:
  old_table:
    enabled: false
"""


def test_defaults_apply_and_tables_override() -> None:
    cfg = parse_pipeline_config(GOOD, "t.yml")
    patient = cfg.resolve("patient")
    assert (patient.priority, patient.batch_size, patient.mode) == ("critical", 1000, "full")
    assert patient.primary_key == ("PatNum",)
    assert patient.incremental_columns == ("DateTStamp", "SecDateTEdit")
    assert cfg.resolve("procedurelog").batch_size == 250000
    assert cfg.resolve("definition").priority == "normal"
    assert [t.name for t in cfg.resolved_tables()] == ["patient", "procedurelog", "definition"]
    # An explicitly named disabled table still runs (a person asked for it by name).
    assert [t.name for t in cfg.resolved_tables(["old_table"])] == ["old_table"]
    assert [g.name for g in cfg.groups_in_order()] == ["critical", "normal", "bulk"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tables:\n  patient:\n    primary_kye: [PatNum]\n",
         "t.yml: tables.patient.primary_kye: unknown key 'primary_kye' (did you mean 'primary_key'?)"),
        ("tables:\n  patient:\n    batch_size: 0\n", "t.yml: tables.patient.batch_size: Input should be greater than 0"),
        ("tables:\n  patient:\n    lookback: -2h\n", "t.yml: tables.patient.lookback: lookback '-2h' is not a duration"),
        ("tables:\n  patient:\n    lookback: {columns: [ProcDate], windw: 30d}\n",
         "t.yml: tables.patient.lookback: unknown key 'windw' (did you mean 'window'?)"),
        ("tables:\n  patient:\n    lookback: {columns: [], window: 30d}\n",
         "tables.patient.lookback: `columns` must list one or more date columns"),
        ("tables:\n  patient:\n    lookback: {columns: [ProcDate]}\n",
         "tables.patient.lookback: `window` is missing or not a duration"),
        ("tables:\n  patient:\n    lookback: {columns: [ProcDate], window: 30 days}\n",
         "tables.patient.lookback: lookback '30 days' is not a duration"),
        ("tables:\n  patient:\n    lookback: 30\n", "tables.patient.lookback: 30 is not a lookback"),
        ("tables:\n  patient:\n    priority: critcal\n", "unknown group 'critcal' (did you mean 'critical'?)"),
        ("tables:\n  patient:\n    mode: incremantal\n", "t.yml: tables.patient.mode: Input should be 'full', 'incremental'"),
        ("defaults:\n  batchsize: 10\n", "t.yml: defaults.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)"),
        ("tabels:\n  patient: {}\n", "t.yml: tabels: unknown key 'tabels' (did you mean 'tables'?)"),
        ("tables:\n  a: {primary_key: [x, x]}\n", "tables.a.primary_key: a column is listed twice"),
        ("tables:\n  Patient: {}\n  patient: {}\n", "clashes with 'Patient' once lower-cased"),
        ("tables: [patient]\n", "t.yml: tables: Input should be a valid dictionary"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_pipeline_config(text, "t.yml")
    message = str(e.value)
    assert expected in message
    assert "\n" not in message


def test_lookback_takes_a_duration_or_date_columns_with_a_window() -> None:
    cfg = parse_pipeline_config(
        "defaults: {lookback: 2h}\n"
        "tables:\n  procedurelog:\n    lookback: {columns: [ProcDate, DateComplete], window: 30d}\n"
        "  patient: {}\n  claim:\n    lookback: {columns: DateSent, window: 7d}\n", "t.yml")
    assert cfg.resolve("patient").lookback == "2h"
    proc = cfg.resolve("procedurelog").lookback
    assert (proc.columns, proc.window) == (("ProcDate", "DateComplete"), "30d")
    assert cfg.resolve("claim").lookback.columns == ("DateSent",)


def test_malformed_yaml_names_file_and_line() -> None:
    with pytest.raises(ConfigError) as e:
        parse_pipeline_config("tables:\n  patient: {priority: critical\n  other: 1\n", "cfg.yml")
    assert str(e.value).startswith("cfg.yml: line ")
    assert "malformed YAML" in str(e.value)


def test_missing_file_says_how_to_create_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="run `etl discover --output"):
        load_pipeline_config(tmp_path / "nope.yml")


def test_unknown_table_on_command_line_is_named() -> None:
    cfg = parse_pipeline_config(GOOD, "t.yml")
    with pytest.raises(ConfigError, match="table 'patinet' is not in the table config \\(did you mean 'patient'\\?\\)"):
        cfg.resolved_tables(["patinet"])
