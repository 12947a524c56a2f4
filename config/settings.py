"""Settings from the environment (`ETL_*`). URLs are secrets: they may carry a password.

Example:
    ```python
    from config.settings import Settings

    s = Settings()                     # reads ETL_SOURCE_URL, ETL_REPLICA_URL, ...
    print(s.describe("source"))        # 'mysql+pymysql://etl:***@db:3306/clinic'
    ```
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from config.errors import ConfigError

Role = Literal["source", "replica", "analytics"]


class Settings(BaseSettings):
    """Connection settings and run options, read from `ETL_*` environment variables."""

    # The env file `make demo` writes and the Makefile includes (ETL_ENV_FILE; "" reads none): one set of
    # settings for make and `etl` in the same shell. The environment wins over the file.
    model_config = SettingsConfigDict(env_prefix="ETL_", extra="ignore",
                                      env_file=os.environ.get("ETL_ENV_FILE", "build/etl.env") or None)

    source_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of the production MySQL/MariaDB database (read-only use)."
    )
    replica_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of the replica MySQL database we own (created when missing)."
    )
    analytics_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL of the analytics PostgreSQL database."
    )
    analytics_schema: str = Field(default="raw", description="PostgreSQL schema that receives the tables.")
    config: str = Field(default="config/tables.yml", description="Path of the table config file.")
    sources: str | None = Field(
        default=None, description="Path of the sources file (many clinics, config/sources.py); unset: the one "
        "source of ETL_SOURCE_URL/ETL_REPLICA_URL, as always.")
    replica_method: Literal["auto", "server", "stream"] = Field(
        default="auto",
        description="Replica copy path: `server` = INSERT..SELECT on a shared server, `stream` = LOAD DATA "
        "from a client-side stream, `auto` = server when source and replica share a server.",
    )
    max_source_queries: int = Field(
        default=4, ge=1, description="Cap on concurrent queries against the source database."
    )
    notify_webhook: SecretStr | None = Field(
        default=None,
        description="URL that receives a JSON POST when a run fails, crashes or is refused (fields plus a "
        "readable `text`; a Slack incoming webhook shows the text). Unset: no notification. A secret: the URL "
        "often carries a token.",
    )
    notify_recovered: bool = Field(
        default=False, description="Also post a `recovered` message when a run succeeds after a failed one."
    )
    notify_late_minutes: float = Field(
        default=15, ge=0,
        description="`make deploy`: a pipeline run still Late (no worker took it) this many minutes after it "
        "turned Late is reported by the Prefect automation; 0 reports it as soon as it is Late.",
    )

    def url(self, role: Role) -> URL:
        """The role's URL as a sqlalchemy URL: str() and messages show `***` for the password; only
        the engine factory (tasks/connections.create_engine) hands it to the driver."""
        value = getattr(self, f"{role}_url")
        if value is None:
            raise ConfigError(f"ETL_{role.upper()}_URL is not set; set it, or pass `--blocks` to read the "
                              f"{role} connector block")
        try:
            return make_url(value.get_secret_value())
        except ArgumentError:
            raise ConfigError(f"ETL_{role.upper()}_URL: not a valid SQLAlchemy URL (expected e.g. "
                              f"mysql+pymysql://user@host:3306/db)") from None

    def describe(self, role: Role) -> str:
        """The URL with its password hidden, for messages."""
        return safe_url(self.url(role))


def safe_url(url: URL | str) -> str:
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL must still never be printed whole
        return "<unparsable URL>"
