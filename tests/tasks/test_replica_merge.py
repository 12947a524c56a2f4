"""tasks/replica_merge.py: the ON DUPLICATE KEY UPDATE clause (pure function, no database).

Which server takes which form, and that a respelled key reaches the replica, is what
tests/test_keys.py checks on the real servers.
"""
from __future__ import annotations

from tasks.replica_merge import odku_clause


def test_values_form_sets_every_column_the_key_included() -> None:
    assert odku_clause(["id", "name"], ("id",), row_alias=None) == (
        "ON DUPLICATE KEY UPDATE `id` = VALUES(`id`), `name` = VALUES(`name`)")


def test_row_alias_form_for_newer_mysql() -> None:
    assert odku_clause(["id", "name"], ("id",), row_alias="`_etl_new`") == (
        "ON DUPLICATE KEY UPDATE `id` = `_etl_new`.`id`, `name` = `_etl_new`.`name`")


def test_names_are_quoted_and_percent_is_in_format_form() -> None:
    clause = odku_clause(["we`ird", "100%"], ("we`ird",), row_alias=None)
    assert clause == "ON DUPLICATE KEY UPDATE `we``ird` = VALUES(`we``ird`), `100%%` = VALUES(`100%%`)"


def test_a_table_of_key_columns_only_still_sets_them() -> None:
    # A respelled key ('abc' -> 'ABC') is the same key to the server; only setting it carries the new spelling.
    assert odku_clause(["a", "b"], ("a", "b"), row_alias=None) == (
        "ON DUPLICATE KEY UPDATE `a` = VALUES(`a`), `b` = VALUES(`b`)")
