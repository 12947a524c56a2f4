"""The pipeline's own errors, one flat module on the ground floor of the house.

Everything above imports them from here (or through `tasks.errors`, which adds the one place that
decides what is worth retrying, `is_retriable`). Messages say what to change: which file, table,
column or key.
"""
from __future__ import annotations


class EtlError(Exception):
    """Base class of the pipeline's own errors."""


class ConfigError(EtlError):
    """The table config or the environment is wrong; the message says what to change."""


class SchemaError(EtlError):
    """The source schema does not match the config, or changed in a way we will not apply silently."""


class DataError(EtlError):
    """A value cannot be loaded as configured (e.g. 7 in a boolean-mapped tinyint(1))."""


class LoadError(EtlError):
    """A table failed in one phase; carries table and phase so metrics can record them."""

    def __init__(self, message: str, *, table: str, phase: str, retriable: bool = False):
        super().__init__(message)
        self.table = table
        self.phase = phase
        self.retriable = retriable


class TablesFailed(EtlError):
    """Raised by the parent flow when at least one table failed; the message names them all."""
