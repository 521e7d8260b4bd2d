"""Optional per rule (``on_fail: dead_letter``): move the rows that fail an ``error`` rule from the
table to the dead-letter table (``etl_assets.dlq``) instead of blocking the whole table.

One transaction: take the table's write lock (the same per-target advisory lock as every writer, so
no load interleaves), ``DELETE … WHERE <failing condition> RETURNING *``, and record the returned
rows as dead letters (stage ``quality:<rule>``, error class ``QualityRuleFailed``). The rows are in
the table or in the dead-letter table, never both and never neither. The check then passes and
reports how many rows it moved; downstream assets, which wait for the blocking check, read the table
without them.

The same transaction keeps the extract's state of the table (``etl.state``) true: its stored row
count loses the moved rows, and for an incremental extract each moved row's key and cursor value is
recorded, so the extract's inclusive boundary re-read leaves the row out while it is unchanged at the
source (a changed row has a new cursor value and is read, then checked again).

What this means over time: a table rebuilt on every run (``truncate_insert``, ``swap``) gets the bad
rows back from its source at its next run and moves them again (the dead letter's ``attempts`` grows;
it is one entry per distinct row). Fix the source, or ``etl-assets dlq discard`` them. There is no
replay for these entries: no transform can repair a row that breaks a table-level rule, so the fix
belongs in the source (after which the next load brings the corrected row).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from etl_assets import dlq
from etl_assets.extract.common import ROWS_KEY
from etl_assets.extract.incremental import ROUTED_KEY
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
        state = conn.execute("SELECT kind, state FROM etl.state WHERE target = %s FOR UPDATE",
                             (str(table),)).fetchone()
        boundary = _boundary(state)
        cur = conn.execute(  # prepared: the rule's SQL can only ever be this one statement
            sql.SQL("DELETE FROM {tbl} t WHERE {cond} RETURNING t.*{boundary}").format(
                tbl=table.ident, cond=cond, boundary=boundary or sql.SQL("")),
            params,
            prepare=True,
        )
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
        if not rows:
            return 0
        if boundary is not None:
            names.pop()
            rows, moved = [r[:-1] for r in rows], [r[-1] for r in rows]
            state[1][ROUTED_KEY] = [*state[1].get(ROUTED_KEY, []), *(m for m in moved if m["c"] is not None)]
        if state is not None:
            _update_state(conn, table, state[1], len(rows))
        import polars as pl  # here: a rule that fails no row needs no frame

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


def _boundary(state: tuple[str, Any] | None) -> sql.Composable | None:
    """For the target of an incremental extract: the extra RETURNING column recording each moved
    row's key and cursor value (as JSON, independent of the session's DateStyle and TimeZone), so
    that the extract's boundary re-read does not bring the row back while it is unchanged at the
    source (``etl_assets.extract.incremental.routed_filter``)."""
    if state is None or state[0] != "incremental" or not isinstance(state[1], dict):
        return None
    cursor, key = state[1].get("cursor_column"), state[1].get("primary_key")
    if not cursor or not key:
        return None  # a state written before the extract recorded its columns
    keys = sql.SQL(", ").join(sql.SQL("to_jsonb(t.{})").format(sql.Identifier(k)) for k in key)
    return sql.SQL(", jsonb_build_object('k', jsonb_build_array({}), 'c', to_jsonb(t.{})) AS {}").format(
        keys, sql.Identifier(cursor), sql.Identifier("_etl_routed"))


def _update_state(conn: psycopg.Connection, table: TableRef, state: Any, moved: int) -> None:
    """The extract's stored row count (``table_rows``, trusted by its next run instead of a
    ``count(*)``) loses the moved rows, in the transaction that deletes them."""
    if not isinstance(state, dict):
        return
    count = state.get(ROWS_KEY)
    if isinstance(count, int) and not isinstance(count, bool):
        state[ROWS_KEY] = max(0, count - moved)
    conn.execute("UPDATE etl.state SET state = %s WHERE target = %s", (Jsonb(state), str(table)))
