"""Cursors and chunk checkpoints of extracts, in ``etl.state`` of the warehouse.

The state row of a target is written only inside the transaction that writes the data it describes
(the run's single load transaction, or the chunk's own transaction), so the warehouse can never
hold a cursor past rows it does not have, nor rows whose cursor was not saved. Dagster metadata
shows the same values to people but is never read back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from etl_assets.io.tables import TableRef
from etl_assets.migrations import migrated


def state_key(target: TableRef) -> str:
    """The ``etl.state.target`` of a warehouse table: ``schema.table`` as people write it (the
    same text ``etl-assets reset TARGET`` takes)."""
    return str(target)


def load_state(conn: psycopg.Connection, target: TableRef, kind: str) -> dict[str, Any]:
    """The stored state of ``target``; ``{}`` when there is none or it belongs to another extract
    kind (the declaration changed mode: start from scratch rather than misread the old state)."""
    migrated(conn)  # works on autocommit connections too
    row = conn.execute(
        "SELECT kind, state FROM etl.state WHERE target = %s", (state_key(target),)
    ).fetchone()
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS and not conn.autocommit:
        conn.commit()
    if row is None or row[0] != kind:
        return {}
    value = row[1]
    return value if isinstance(value, dict) else json.loads(value)


def save_state(conn: psycopg.Connection, target: TableRef, kind: str, state: dict[str, Any],
               run_id: str | None) -> None:
    """Upsert the state row; call it inside the data's transaction."""
    conn.execute(
        """
        INSERT INTO etl.state (target, kind, state, run_id, updated_at)
        VALUES (%s, %s, %s, %s, now())
        ON CONFLICT (target) DO UPDATE
           SET kind = EXCLUDED.kind, state = EXCLUDED.state, run_id = EXCLUDED.run_id,
               updated_at = EXCLUDED.updated_at
        """,
        (state_key(target), kind, Jsonb(state), run_id),
    )


def saver(target: TableRef, kind: str, state: dict[str, Any], run_id: str | None
          ) -> Callable[[psycopg.Connection], None]:
    """An ``on_commit`` hook saving ``state`` (a snapshot of the dict taken now)."""
    frozen = json.loads(json.dumps(state))

    def hook(conn: psycopg.Connection) -> None:
        save_state(conn, target, kind, frozen, run_id)

    return hook


def clear_state(conn: psycopg.Connection, target: TableRef) -> None:
    conn.execute("DELETE FROM etl.state WHERE target = %s", (state_key(target),))
