"""The warehouse side of the stream: the sink, the processed-event record and the speed layer's deltas.

Everything one micro-batch writes commits in ONE warehouse transaction (:func:`write_batch`):

- ``stream.orders``: each order's latest applied version (the sink). An upsert only replaces a row
  whose version is lower, so an event older than the applied one changes nothing ("stale").
- ``stream.processed_events``: every event id the sink has dealt with and how (applied, stale,
  dead). A redelivered event is found here and skipped, which makes at-least-once delivery
  exactly-once in effect; the queue message is acknowledged only after this transaction commits.
- dead letters, through the one writer :func:`etl_assets.dlq.record` (asset ``stream/orders``).
- ``serve.speed_deltas``: the Lambda speed layer (see :mod:`etl_assets.stream.lambda_`), keyed by event
  id so the serving view can cut it at the batch layer's watermark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import psycopg

from etl_assets.io.catalog import ensure_schema
from etl_assets.stream import queue

SINK_ASSET = "stream/orders"

# Schemas ``stream`` and ``serve`` are made by ensure_schema (a least-privilege role owns them).
DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS stream.orders (
    order_id     bigint PRIMARY KEY,
    version      integer NOT NULL,
    event_id     bigint NOT NULL,
    user_id      bigint,
    category_id  integer,
    amount       numeric(12,2),
    status       text,
    created_at   timestamptz,
    applied_at   timestamptz NOT NULL DEFAULT clock_timestamp()
)""",
    """CREATE TABLE IF NOT EXISTS stream.processed_events (
    event_id      bigint PRIMARY KEY,
    order_id      bigint,
    version       integer,
    outcome       text NOT NULL CHECK (outcome IN ('applied', 'stale', 'dead')),
    enqueued_at   timestamptz,
    processed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)""",
    """CREATE TABLE IF NOT EXISTS serve.speed_deltas (
    event_id     bigint  NOT NULL,
    day          date    NOT NULL,
    category_id  integer NOT NULL,
    orders       integer NOT NULL,
    amount       numeric NOT NULL,
    PRIMARY KEY (event_id, day, category_id)
)""",
)

_ensured: set[str] = set()


def ensure_tables(conn: psycopg.Connection) -> None:
    """Create the stream's warehouse tables (and the project's own, for the DLQ) once per process."""
    from etl_assets.migrations import ensure_migrated

    key = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    if key in _ensured:
        return
    ensure_migrated(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('etl_assets.stream.sink'))")
        ensure_schema(conn, "stream")
        ensure_schema(conn, "serve")
        for statement in DDL:
            conn.execute(statement)
        from etl_assets.stream.lambda_.serving import ensure_serving

        ensure_serving(conn)
    _ensured.add(key)


@dataclass(frozen=True)
class SinkRow:
    event_id: int
    order_id: int
    version: int
    user_id: int | None
    category_id: int | None
    amount: Decimal | None
    status: str | None
    created_at: object


@dataclass(frozen=True)
class Delta:
    event_id: int
    day: date
    category_id: int
    orders: int
    amount: Decimal


@dataclass
class SinkResult:
    applied: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)


def already_processed(conn: psycopg.Connection, event_ids: Sequence[int]) -> set[int]:
    rows = conn.execute(
        "SELECT event_id FROM stream.processed_events WHERE event_id = ANY(%b)",
        (list(event_ids),),
        binary=True,
    ).fetchall()
    return {r[0] for r in rows}


def upsert_latest(conn: psycopg.Connection, rows: Sequence[SinkRow]) -> SinkResult:
    """Apply the newest version per order; older ones (in this batch or against the table) are stale."""
    result = SinkResult()
    newest: dict[int, SinkRow] = {}
    for row in rows:
        kept = newest.get(row.order_id)
        if kept is None or row.version > kept.version:
            if kept is not None:
                result.stale.append(kept.event_id)
            newest[row.order_id] = row
        else:
            result.stale.append(row.event_id)
    if not newest:
        return result
    cols = list(
        zip(
            *[
                (
                    r.order_id,
                    r.version,
                    r.event_id,
                    r.user_id,
                    r.category_id,
                    r.amount,
                    r.status,
                    r.created_at,
                )
                for r in newest.values()
            ],
            strict=True,
        )
    )
    applied = conn.execute(
        """INSERT INTO stream.orders AS s
               (order_id, version, event_id, user_id, category_id, amount, status, created_at)
           SELECT * FROM unnest(%b::bigint[], %b::int[], %b::bigint[], %b::bigint[], %b::int[],
                                %b::numeric[], %b::text[], %b::timestamptz[])
           ON CONFLICT (order_id) DO UPDATE SET
               version = EXCLUDED.version, event_id = EXCLUDED.event_id, user_id = EXCLUDED.user_id,
               category_id = EXCLUDED.category_id, amount = EXCLUDED.amount, status = EXCLUDED.status,
               created_at = EXCLUDED.created_at, applied_at = clock_timestamp()
           WHERE s.version < EXCLUDED.version
           RETURNING event_id""",
        [list(c) for c in cols],
        binary=True,
    ).fetchall()
    done = {r[0] for r in applied}
    for row in newest.values():
        (result.applied if row.event_id in done else result.stale).append(row.event_id)
    return result


def record_processed(
    conn: psycopg.Connection, outcomes: Sequence[tuple[int, int | None, int | None, str, object]]
) -> None:
    """(event_id, order_id, version, outcome, enqueued_at) for every event dealt with in this batch."""
    if not outcomes:
        return
    cols = [list(c) for c in zip(*outcomes, strict=True)]
    conn.execute(
        """INSERT INTO stream.processed_events (event_id, order_id, version, outcome, enqueued_at)
           SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::int[], %b::text[], %b::timestamptz[])""",
        cols,
        binary=True,
    )


def add_deltas(conn: psycopg.Connection, deltas: Sequence[Delta]) -> None:
    if not deltas:
        return
    cols = [
        list(c)
        for c in zip(*[(d.event_id, d.day, d.category_id, d.orders, d.amount) for d in deltas], strict=True)
    ]
    conn.execute(
        """INSERT INTO serve.speed_deltas (event_id, day, category_id, orders, amount)
           SELECT * FROM unnest(%b::bigint[], %b::date[], %b::int[], %b::int[], %b::numeric[])
           ON CONFLICT DO NOTHING""",
        cols,
        binary=True,
    )


@dataclass(frozen=True)
class PruneResult:
    removed: int
    below_event_id: int | None  # rows kept from this id up (the oldest message still in the queue)


def prune_processed(source: psycopg.Connection, warehouse: psycopg.Connection,
                    older_than: timedelta) -> PruneResult:
    """Forget processed event ids that can never come back, processed more than ``older_than`` ago.

    An id is needed only while its message may be delivered again, that is while it is still in the
    queue (a crash between the sink's COMMIT and the acknowledgement leaves it there). Ids become
    visible in commit order (the producers' lock, :mod:`etl_assets.stream.queue`), so every message
    committed later has a higher id than any processed one: the rows below the oldest message still
    queued (all of them when the queue is empty) can go. ``older_than`` keeps recent outcomes for
    ``etl-assets stream status``.
    """
    if not warehouse.execute("SELECT to_regclass('stream.processed_events') IS NOT NULL").fetchone()[0]:
        return PruneResult(0, None)
    oldest = None
    if queue.is_installed(source):
        oldest = source.execute("SELECT min(id) FROM etl_stream.events").fetchone()[0]
    with warehouse.transaction():
        removed = warehouse.execute(
            "DELETE FROM stream.processed_events WHERE processed_at < clock_timestamp() - %s"
            " AND (%s::bigint IS NULL OR event_id < %s::bigint)",
            (older_than, oldest, oldest),
        ).rowcount
    return PruneResult(removed, oldest)
