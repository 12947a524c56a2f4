"""Deployment-only wrapper flows (prefect.yaml points at these and at `flows/pipeline.py:etl_pipeline`).

    etl-repair            repair chosen tables: a required table list + full_refresh, nothing else
      etl-pipeline        the ordinary parent flow, run as a subflow with those tables (`<repair run>-pipeline`);
                          its report, per-table ERROR lines and summary also land on the repair run's page

Why a wrapper for the repair deployment: `etl_pipeline(tables=None)` means "every table", so a repair
deployment pointed at it directly would reload the whole database when someone clicks Run without
filling in the table list. Here `tables` is required and may not be empty, so the UI form and
`prefect deployment run` refuse such a run before anything starts.
"""
from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks.connectors import BlockNames
from flows.pipeline import TableOutcome, etl_pipeline

TableList = Annotated[
    list[str],
    Field(min_length=1, description="Tables to repair, by name as in the table config (e.g. patient)."),
]


def _repair_run_name() -> str:
    from prefect.runtime import flow_run

    tables = (flow_run.parameters or {}).get("tables") or []
    return "repair-" + ",".join(str(t) for t in tables)[:100]


@flow(name="etl-repair", flow_run_name=_repair_run_name, validate_parameters=True)
def repair_tables(
    tables: TableList,
    full_refresh: bool = True,
    blocks: BlockNames = BlockNames(),  # noqa: B008 - immutable in practice; rendered as the form default
    config_path: str | None = None,
) -> list[TableOutcome]:
    """Reload the named tables source -> replica -> analytics, and nothing else.

    Args:
        tables: the tables to repair (at least one).
        full_refresh: reload them from scratch (default) rather than the table's usual mode.
        blocks: names of the SqlAlchemyConnector blocks holding the credentials.
        config_path: table config file (default: ETL_CONFIG or config/tables.yml).
    """
    from prefect.runtime import flow_run

    # The pipeline run inside is named after this one; it publishes its report and logs its per-table
    # errors and summary on this run's page too (flows/pipeline.py: run_loggers, also_on).
    pipeline = etl_pipeline.with_options(flow_run_name=f"{flow_run.name or 'repair'}-pipeline")
    return pipeline(tables=list(tables), full_refresh=full_refresh, config_path=config_path, blocks=blocks)
