"""The three prefect-sqlalchemy `SqlAlchemyConnector` blocks that hold the credentials.

`etl blocks register` saves them from the `ETL_*_URL` environment variables (idempotent:
`overwrite=True`); deployments pass the block names to the flow, which loads the URLs from them.
The password is stored as a `SecretStr` inside the block's `ConnectionComponents`.

Example:
    ```python
    from blocks.connectors import register_blocks, urls_from_blocks, BlockNames

    register_blocks(Settings())                     # etl-source, etl-replica, etl-analytics
    urls = urls_from_blocks(BlockNames())           # EngineUrls for the run
    ```
"""
from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from sqlalchemy.engine import URL, make_url

from config.settings import Settings
from tasks.connections import EngineUrls, describe_url
from tasks.errors import ConfigError


class BlockNames(BaseModel):
    """Names of the SqlAlchemyConnector blocks a run reads its credentials from."""

    source: str = Field(default="etl-source", description="Block with the production MySQL connection.")
    replica: str = Field(default="etl-replica", description="Block with the replica MySQL connection.")
    analytics: str = Field(default="etl-analytics", description="Block with the analytics PostgreSQL connection.")


def _components(url):  # noqa: ANN001 - a sqlalchemy URL  # noqa: ANN202 - prefect_sqlalchemy import kept lazy
    from prefect_sqlalchemy import ConnectionComponents

    u = make_url(url)
    return ConnectionComponents(
        driver=u.drivername,
        database=u.database,
        username=u.username,
        password=SecretStr(u.password) if u.password else None,
        host=u.host,
        port=u.port,
        query={k: str(v) for k, v in u.query.items()} or None,
    )


def register_blocks(settings: Settings, names: BlockNames | None = None) -> dict[str, str]:
    """Save (or overwrite) the three connector blocks. Returns role -> 'block name: host/db'."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    names = names or BlockNames()
    done = {}
    for role in ("source", "replica", "analytics"):
        url = settings.url(role)  # raises ConfigError naming the variable when missing
        block = SqlAlchemyConnector(connection_info=_components(url))
        block.save(getattr(names, role), overwrite=True)
        done[role] = f"{getattr(names, role)}: {describe_url(url)}"
    return done


def load_block(name: str, role: str) -> tuple[URL, dict]:
    """One connector block's URL and connect_args (a URL object: printed, its password shows as ***)."""
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector

    try:
        block = SqlAlchemyConnector.load(name)
    except ValueError as e:
        raise ConfigError(f"block {name!r} ({role}) not found; run `etl blocks register` first") from e
    info = block.connection_info
    url = info.create_url() if isinstance(info, ConnectionComponents) else make_url(str(info))
    return url, dict(block.connect_args or {})


def urls_from_blocks(names: BlockNames) -> EngineUrls:
    """Load the three blocks and return their URLs (with passwords) for the engine factory."""
    urls = {}
    args = {}
    for role in ("source", "replica", "analytics"):
        urls[role], args[f"{role}_connect_args"] = load_block(getattr(names, role), role)
    return EngineUrls(**urls, **args)


def urls_from_settings(settings: Settings) -> EngineUrls:
    return EngineUrls(source=settings.url("source"), replica=settings.url("replica"),
                      analytics=settings.url("analytics"))


def urls_for_source(source, settings: Settings, blocks: BlockNames | None = None) -> EngineUrls:  # noqa: ANN001
    """The URLs of one clinic of the sources file (config/sources.py): its source and replica from its
    URLs or its own blocks, the one warehouse from ETL_ANALYTICS_URL (or, with `blocks`, its analytics block)."""
    if blocks is not None:
        analytics, analytics_args = load_block(blocks.analytics, "analytics")
    else:
        analytics, analytics_args = settings.url("analytics"), {}
    if source.blocks is not None:
        src, src_args = load_block(source.blocks.source, f"source of {source.name}")
        rep, rep_args = load_block(source.blocks.replica, f"replica of {source.name}")
        return EngineUrls(source=src, replica=rep, analytics=analytics, source_connect_args=src_args,
                          replica_connect_args=rep_args, analytics_connect_args=analytics_args)
    s = source.settings(settings)
    return EngineUrls(source=s.url("source"), replica=s.url("replica"), analytics=analytics,
                      analytics_connect_args=analytics_args)
