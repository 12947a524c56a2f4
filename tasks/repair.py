"""`etl verify --repair`: re-copy only the key ranges that verification found different.

For each differing range of an integer key, the replica's rows in the range are replaced from the
source (DELETE + copy, one transaction), then analytics' rows from the replica (DELETE + COPY, one
transaction). A table whose key is not a single integer is verified as one range, so its repair is
a full refresh of that table.
"""
from __future__ import annotations

from typing import Any

from config.models import ResolvedTable
from tasks.connections import Engines
from tasks.identifiers import copy_expert, execute, mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_table_name
from tasks.keyset import Keyset
from tasks.mysql_schema import choose_key, read_table_schema, unique_keys
from tasks.replica_copy import _load_one_chunk, fifo_path, load_data_plan
from tasks.streaming import BLOCK_BYTES, BlockFile, ChunkResult, LineQuery, read_chunk_blocks
from tasks.type_mapping import INTEGER_TYPES, copy_line_select, pg_columns
from tasks.verify import VerifyResult


def _bounds(col: str, low: Any, high: Any, quote) -> tuple[str, list[Any]]:  # noqa: ANN001
    conds, params = [], []
    if low is not None:
        conds.append(f"{quote(col)} > %s")
        params.append(low)
    if high is not None:
        conds.append(f"{quote(col)} <= %s")
        params.append(high)
    return " AND ".join(conds) or "1=1", params


def repair_ranges(engines: Engines, table: ResolvedTable, result: VerifyResult, *, source_db: str, replica_db: str,
                  pg_schema: str, column_case: str, method: str) -> int:
    """Re-copy the differing ranges; returns how many ranges were repaired (0 = needs a full refresh)."""
    with engines.replica.connect() as rc:
        schema = read_table_schema(rc, replica_db, table.name)
        key = choose_key(schema, table.primary_key, unique_keys(rc, replica_db, table.name))
    if len(key) != 1 or schema.column(key[0]).data_type not in INTEGER_TYPES:
        return 0
    k = key[0]
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns)
    pg_k = next(c.name for c in cols if c.source.name == k)
    names = ", ".join(pg_ident(c.name) for c in cols)
    my_cols = ", ".join(mysql_ident(c) for c in schema.column_names)
    rep_t, src_t = mysql_qualified(replica_db, table.name), mysql_qualified(source_db, table.name)
    live = pg_qualified(pg_schema, pg_table_name(table.name))
    for d in result.differing:
        where, params = _bounds(k, d.low, d.high, mysql_ident)
        with engines.source.connect() as sc, engines.replica.connect() as rc:
            src, rep = sc.connection.driver_connection, rc.connection.driver_connection
            cur = rep.cursor()
            execute(cur, f"USE {mysql_ident(replica_db)}")
            cur.execute(f"DELETE FROM {rep_t} WHERE {where}", params)
            if method == "server":
                cur.execute(f"INSERT INTO {rep_t} ({my_cols}) SELECT {my_cols} FROM {src_t} WHERE {where}", params)
            else:
                plan = load_data_plan(schema, table.name)
                q = LineQuery(src_t, plan.line_expr, None, 0, where=where, where_params=params)
                with fifo_path() as fifo:
                    _load_one_chunk(src, cur, fifo, plan.load_sql, q, None, ChunkResult(), set(plan.enum_columns))
            rep.commit()
        with engines.replica.connect() as rc, engines.analytics.connect() as pc:
            pg = pc.connection.driver_connection
            pcur = pg.cursor()
            pwhere, pparams = _bounds(pg_k, d.low, d.high, pg_ident)
            pcur.execute(f"DELETE FROM {live} WHERE {pwhere}", pparams)
            q = LineQuery(rep_t, copy_line_select(cols), None, 0, where=where, where_params=params)
            blocks = read_chunk_blocks(rc.connection.driver_connection, q, None, ChunkResult(), strip_nul=True)
            copy_expert(pcur, f"COPY {live} ({names}) FROM STDIN", BlockFile(blocks), size=BLOCK_BYTES)
            pg.commit()
    return len(result.differing)
