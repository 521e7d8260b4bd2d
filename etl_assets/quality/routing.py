"""Optional per rule (``on_fail: dead_letter``): move the rows that fail an ``error`` rule from the
table to the dead-letter table (``etl_assets.dlq``) instead of blocking the whole table.

One transaction: take the table's write lock (the same per-target advisory lock as every writer, so
no load interleaves), ``DELETE … WHERE <failing condition> RETURNING *``, and record the returned
rows as dead letters (stage ``quality:<rule>``, error class ``QualityRuleFailed``). The rows are in
the table or in the dead-letter table, never both and never neither. The check then passes and
reports how many rows it moved; downstream assets, which wait for the blocking check, read the table
without them.

What this means over time: a table rebuilt on every run (``truncate_insert``, ``swap``) gets the bad
rows back from its source at its next run and moves them again (the dead letter's ``attempts`` grows;
it is one entry per distinct row). Fix the source, or ``etl-assets dlq discard`` them. There is no
replay for these entries: no transform can repair a row that breaks a table-level rule, so the fix
belongs in the source (after which the next load brings the corrected row).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from etl_assets import dlq
from etl_assets.io.tables import TableRef, lock_key
from etl_assets.migrations import ensure_migrated
from etl_assets.quality.rules import Rule, failing_condition

ERROR_CLASS = "QualityRuleFailed"


def route_failing_rows(
    conn: psycopg.Connection,
    rule: Rule,
    table: TableRef,
    origin: dlq.Origin,
    scope: sql.Composable | None = None,
) -> int:
    """Move the rows failing ``rule`` from ``table`` (within ``scope``, a partition) into the
    dead-letter table; returns how many."""
    ensure_migrated(conn)  # the dead-letter table's migration
    cond, params = failing_condition(rule, table, scope)
    if scope is not None:
        cond = sql.SQL("({}) AND {}").format(scope, cond)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key(table),))
        cur = conn.execute(  # prepared: the rule's SQL can only ever be this one statement
            sql.SQL("DELETE FROM {tbl} t WHERE {cond} RETURNING t.*").format(tbl=table.ident, cond=cond),
            params,
            prepare=True,
        )
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
        if not rows:
            return 0
        frame = pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)
        types = dlq.frame_types(frame)
        message = f"failed data-quality rule {rule.name}: {rule.describe()}"
        stage = f"quality:{rule.name}"
        rejected: list[Any] = [
            dlq.Rejected.of(row, types, stage=stage, error_class=ERROR_CLASS, message=message)
            for row in frame.iter_rows(named=True)
        ]
        dlq.record(conn, origin, rejected)
    return len(rows)
