"""`etl verify --repair`: re-copy only the rows that verification found different.

A keyed table is repaired key by key, the keys verify named (every key missing or different in any
of the three databases), in batches: the replica's rows of the batch are replaced from the source
(DELETE + copy, one transaction), then analytics' rows from the replica (DELETE + COPY, one
transaction). A table whose (leading) key column is an integer and whose differing ranges verify
could not name keys for is repaired range by range, the same way. Both use the load's own paths:
INSERT..SELECT or LOAD DATA for the replica, the COPY line the analytics load prints
(tasks/type_mapping.copy_line_select). A table without a key cannot be repaired row by row: it needs a full refresh.
"""
from __future__ import annotations

from typing import Any

from config.models import ResolvedTable
from tasks.connections import Engines
from tasks.identifiers import copy_expert, execute, mysql_ident, mysql_qualified, pg_ident, pg_qualified, pg_table_name
from tasks.mysql_schema import read_table_schema
from tasks.load_data import fifo_path, load_chunk, load_data_plan
from tasks.streaming import BLOCK_BYTES, BlockFile, ChunkResult, LineQuery, read_chunk_blocks
from tasks.type_mapping import copy_line_select, pg_columns, type_rule
from tasks.verify import VerifyResult, table_texts

KEY_BATCH = 500  # keys per DELETE / copy statement



def _bounds(col: str, low: Any, high: Any, quote) -> tuple[str, list[Any]]:  # noqa: ANN001
    conds, params = [], []
    if low is not None:
        conds.append(f"{quote(col)} > %s")
        params.append(low)
    if high is not None:
        conds.append(f"{quote(col)} <= %s")
        params.append(high)
    return " AND ".join(conds) or "1=1", params


def _key_binds(pc) -> tuple[str, str] | None:  # noqa: ANN001
    """How a key column's canonical text (tasks/verify.column_text) is bound on each engine to
    match the stored value; None for a type whose text does not bind back (float, time, json...)."""
    return None if pc.as_boolean else type_rule(pc.source).key_bind


def repair_ranges(engines: Engines, table: ResolvedTable, result: VerifyResult, *, source_db: str, replica_db: str,
                  pg_schema: str, column_case: str, method: str) -> int:
    """Re-copy what differs; returns how many ranges or keys were repaired (0 = needs a full refresh)."""
    tx = table_texts(engines, table, replica_db=replica_db, column_case=column_case)
    with engines.replica.connect() as rc:
        schema = read_table_schema(rc, replica_db, table.name)
        rc.rollback()
    cols = pg_columns(schema, column_case=column_case, boolean_columns=table.boolean_columns)
    ctx = _Copy(engines, table.name, schema, cols, source_db, replica_db, pg_schema, method)
    if not tx.key:
        return 0
    binds = [_key_binds(c) for c in tx.key_columns]
    keys = sorted({k for d in result.differing for k in (d.keys or [])})
    by_key = all(b is not None for b in binds) and not any("NULL" in k for k in keys)
    if tx.ranged and not (by_key and all(d.keys for d in result.differing)):
        # Verify named no key (or none that binds back): the whole range is copied again.
        k, pg_k = tx.key[0], tx.key_columns[0].name
        for d in result.differing:
            where, params = _bounds(k, d.low, d.high, mysql_ident)
            pwhere, pparams = _bounds(pg_k, d.low, d.high, pg_ident)
            ctx.recopy(where, params, pwhere, pparams)
        return len(result.differing)
    if not by_key:
        return 0
    # The keys verify's drill found differing (tasks/verify._drill: every key missing or different in
    # any of the three databases): only those rows move, not the ~100,000-row ranges holding them.
    my_cols = ", ".join(mysql_ident(k) for k in tx.key)
    pg_cols = ", ".join(pg_ident(c.name) for c in tx.key_columns)
    my_row = "(" + ", ".join(b[0] for b in binds) + ")"
    pg_row = "(" + ", ".join(b[1] for b in binds) + ")"
    for i in range(0, len(keys), KEY_BATCH):
        batch = keys[i:i + KEY_BATCH]
        params = [v for k in batch for v in k]
        ctx.recopy(f"({my_cols}) IN ({', '.join([my_row] * len(batch))})", params,
                   f"({pg_cols}) IN ({', '.join([pg_row] * len(batch))})", params)
    return len(keys)


class _Copy:
    """Replace the rows matching a condition: replica from the source, then analytics from the replica."""

    def __init__(self, engines, name, schema, cols, source_db, replica_db, pg_schema, method) -> None:  # noqa: ANN001
        self.engines, self.name, self.schema, self.cols, self.method = engines, name, schema, cols, method
        self.rep_t, self.src_t = mysql_qualified(replica_db, name), mysql_qualified(source_db, name)
        self.replica_db = replica_db
        self.live = pg_qualified(pg_schema, pg_table_name(name))

    def recopy(self, where: str, params: list, pwhere: str, pparams: list) -> None:
        my_cols = ", ".join(mysql_ident(c) for c in self.schema.column_names)
        with self.engines.source.connect() as sc, self.engines.replica.connect() as rc:
            src, rep = sc.connection.driver_connection, rc.connection.driver_connection
            cur = rep.cursor()
            execute(cur, f"USE {mysql_ident(self.replica_db)}")
            execute(cur, f"DELETE FROM {self.rep_t} WHERE {where}", params)
            if self.method == "server":
                execute(cur, f"INSERT INTO {self.rep_t} ({my_cols}) SELECT {my_cols} FROM {self.src_t} WHERE {where}",
                        params)
            else:
                plan = load_data_plan(self.schema, self.name)
                q = LineQuery(self.src_t, plan.line_expr, None, 0, where=where, where_params=params)
                with fifo_path() as fifo:
                    load_chunk(src, cur, fifo, plan.load_sql, q, None, ChunkResult(), set(plan.enum_columns))
            rep.commit()
        with self.engines.replica.connect() as rc, self.engines.analytics.connect() as pc:
            pg = pc.connection.driver_connection
            pcur = pg.cursor()
            execute(pcur, f"DELETE FROM {self.live} WHERE {pwhere}", pparams)
            q = LineQuery(self.rep_t, copy_line_select(self.cols), None, 0, where=where, where_params=params)
            blocks = read_chunk_blocks(rc.connection.driver_connection, q, None, ChunkResult(), strip_nul=True)
            names = ", ".join(pg_ident(c.name) for c in self.cols)
            copy_expert(pcur, f"COPY {self.live} ({names}) FROM STDIN", BlockFile(blocks), size=BLOCK_BYTES)
            pg.commit()
