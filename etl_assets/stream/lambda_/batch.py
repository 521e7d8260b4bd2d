"""The Lambda batch layer: one day's totals recomputed from the source, with the watermark it covers.

The day's orders and the watermark (the highest event id whose change the read includes) must come
from ONE snapshot, and no event below the watermark may still be in flight. Producers hold the
queue's producer lock from their first change to COMMIT (see :mod:`etl_assets.stream.queue`), so the
batch takes that lock, opens a REPEATABLE READ snapshot and reads the event sequence while holding
it, then releases it at once and reads the day at leisure: the snapshot holds exactly the events up
to the watermark. (The extracted ``raw.orders`` carries no event position, so a watermark could not
be paired with it; the batch reads the source's rows instead, a day at a time.)

Totals come from :mod:`etl_assets.stream.lambda_.measures`, the rules of ``clean.orders`` itself.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from etl_assets.errors import MissingObject
from etl_assets.stream import queue
from etl_assets.stream.lambda_.measures import contribution, passing


@dataclass(frozen=True)
class BatchDay:
    day: dt.date
    watermark: int
    orders_read: int
    groups: int
    orders: int
    amount: Decimal


def read_day(source: psycopg.Connection, day: dt.date) -> tuple[int, list[dict]]:
    """(watermark, the day's order states) from one snapshot; ``source`` must be autocommit."""
    if not source.autocommit:
        raise ValueError("read_day needs an autocommit source connection")
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    source.execute("SELECT pg_advisory_lock(%s)", (queue.PRODUCER_LOCK,))
    locked = True
    try:
        with source.transaction():
            source.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # no queue (stream not installed): no event exists, every later one is above 0
            watermark = 0
            if queue.is_installed(source):
                watermark = source.execute(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM etl_stream.events_id_seq"
                ).fetchone()[0]
            source.execute("SELECT pg_advisory_unlock(%s)", (queue.PRODUCER_LOCK,))
            locked = False
            try:
                rows = source.execute(
                    "SELECT category_id, amount, status, created_at FROM shop.orders"
                    " WHERE created_at >= %s AND created_at < %s",
                    (start, start + dt.timedelta(days=1)),
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                raise MissingObject(
                    "The Lambda batch layer reads shop.orders in the source, which does not exist; "
                    "seed the demo (`etl-assets seed`) or leave serve/batch_daily_category out of the run."
                ) from None
    finally:
        if locked:
            source.execute("SELECT pg_advisory_unlock(%s)", (queue.PRODUCER_LOCK,))
    states = [{"category_id": r[0], "amount": r[1], "status": r[2], "created_at": r[3]} for r in rows]
    return watermark, states


def recompute_day(source: psycopg.Connection, warehouse: psycopg.Connection, day: dt.date) -> BatchDay:
    """Replace one day's batch totals and watermark in one warehouse transaction."""
    from etl_assets.stream import sink

    sink.ensure_tables(warehouse)
    watermark, states = read_day(source, day)
    totals: dict[int, list] = defaultdict(lambda: [0, Decimal(0)])
    for state, reason in zip(states, passing(states), strict=True):
        c = contribution(state, reason)
        if c is not None and c[0] == day:
            totals[c[1]][0] += c[2]
            totals[c[1]][1] += c[3]
    with warehouse.transaction():
        warehouse.execute("DELETE FROM serve.batch_daily_category WHERE day = %s", (day,))
        if totals:
            cats = list(totals)
            warehouse.execute(
                "INSERT INTO serve.batch_daily_category (day, category_id, orders, amount)"
                " SELECT %s, * FROM unnest(%s::int[], %s::bigint[], %s::numeric[])",
                (day, cats, [totals[c][0] for c in cats], [totals[c][1] for c in cats]),
            )
        warehouse.execute(
            """INSERT INTO serve.batch_watermarks (day, event_id, orders_read, computed_at)
               VALUES (%s, %s, %s, now())
               ON CONFLICT (day) DO UPDATE SET event_id = EXCLUDED.event_id,
                   orders_read = EXCLUDED.orders_read, computed_at = now()""",
            (day, watermark, len(states)),
        )
    return BatchDay(
        day,
        watermark,
        len(states),
        len(totals),
        sum(v[0] for v in totals.values()),
        sum((v[1] for v in totals.values()), Decimal(0)),
    )
