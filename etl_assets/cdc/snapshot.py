"""The initial load of a CDC target: a consistent snapshot, and exactly where the log continues.

One REPEATABLE READ transaction on the source copies the table *and* notes its snapshot
(``pg_current_snapshot()``) and the highest log position visible in it. The table data and the
visible log entries come from the same snapshot, so a log entry is contained in the copied rows if
and only if its transaction is visible in that snapshot. Later windows therefore apply every entry
except those (``pg_visible_in_snapshot(txid, snapshot)``): no change before the snapshot is applied
twice, and none after it is lost — including changes of transactions that were running while the
snapshot was taken and commit later with lower positions.

The copy streams ``COPY (SELECT …) TO STDOUT (FORMAT binary)`` from the source into ``COPY … FROM
STDIN`` in the warehouse (columns of user-defined types travel as text), replacing the target's rows
with ``DELETE`` (MVCC-safe: readers see the old rows until the commit) in the one transaction that
also saves the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.cdc import apply, capture, reader
from etl_assets.extract.source import SourceTable
from etl_assets.io.tables import TableRef
from etl_assets.io.transfer import binary_compatible, set_text_format, stream_copy


@dataclass
class SnapshotResult:
    rows: int
    replaced: int
    position: int
    snapshot: str
    snapshot_max: int | None
    state: dict[str, Any]


def _select_list(table: SourceTable) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.Identifier(c.name) if c.builtin else sql.SQL("{}::text").format(sql.Identifier(c.name))
        for c in table.columns
    )


def take_snapshot(
    src: psycopg.Connection,
    wh: psycopg.Connection,
    cap: capture.Capture,
    table: SourceTable,
    target: TableRef,
    key: tuple[str, ...],
    consumer: str,
    run_id: str | None,
    extra_state: dict[str, Any] | None = None,
) -> SnapshotResult:
    """Load ``target`` from a snapshot of ``cap.source`` and save the state later windows start from.

    ``src`` is an autocommit source connection, ``wh`` a warehouse connection (autocommit off).
    """
    # Registered before the snapshot, at the log's pruned_through: prune cannot now remove anything
    # this consumer will need (see capture.register_consumer).
    capture.register_consumer(src, cap, consumer, str(target))
    horizon = reader.take_horizon(src, cap)
    foreign = reader.foreign_xids(src)  # before the snapshot (see reader)
    with src.transaction():
        reader.begin_snapshot(src)
        final = reader.horizon_final(src, horizon, foreign)
        snap, top = src.execute(
            sql.SQL("SELECT pg_current_snapshot()::text, (SELECT max(position) FROM {})").format(
                cap.log_ident
            )
        ).fetchone()
        fresh = capture.get_capture(src, cap.source)
        if fresh is None or fresh.log_id != cap.log_id:
            raise capture.CaptureMissing(
                f"Change capture on {cap.source} was removed or reinstalled while {target} was being "
                "snapshotted; run again."
            )
        # Every position <= horizon.position is final in this snapshot when older transactions ended.
        start = horizon.position if final else fresh.pruned_through
        with wh.transaction():
            current = apply.lock_state(wh, target)
            shape = apply.ensure_target(wh, target, table, key)
            replaced = wh.execute(sql.SQL("DELETE FROM {}").format(target.ident)).rowcount
            # Binary COPY when every column has the source's type in the target (user-defined ones are
            # cast to text in the SELECT); text COPY when an existing target differs (a wider type).
            binary = binary_compatible(wh, target, {c.name: c.pg_type for c in table.columns})
            if not binary:  # text must be written and read with the same settings on both sides
                for conn in (src, wh):
                    set_text_format(conn, local=True)
            query = sql.SQL("SELECT {} FROM {}").format(_select_list(table), cap.source.ident)
            rows = stream_copy(src, wh, query, (), target.ident, table.names, binary)
            state = {
                **(extra_state or {}),
                "source": str(cap.source),
                "log_id": cap.log_id,
                "position": int(start),
                "horizons": [],
                "snapshot": snap,
                "snapshot_max": int(top) if top is not None else None,
                "consumer": consumer,
                "columns_added": shape.added,
                "rows": int(rows),
            }
            if top is None or int(top) <= start:
                state["snapshot"] = None
                state["snapshot_max"] = None
            del current  # the row lock is what mattered: no other run saves state meanwhile
            apply.save(wh, target, state, run_id)
    capture.register_consumer(src, cap, consumer, str(target), int(start))
    return SnapshotResult(int(rows), int(replaced), int(start), snap, state["snapshot_max"], state)
