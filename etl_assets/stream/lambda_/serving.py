"""The Lambda serving layer: one view adding the batch layer's totals and the speed layer's deltas.

For each day, ``serve.daily_category_totals`` = the batch totals of that day + the speed deltas of
events above the batch's watermark for that day (all deltas for a day never batched). An event at
or below the watermark is already inside the batch totals (the batch read the source in a snapshot
that holds exactly the events up to its watermark), an event above it is not: nothing is counted
twice or missed, late events for a covered day included. Groups whose count nets to zero are left
out, so the view has the rows a direct aggregate over the source has.
"""

from __future__ import annotations

import psycopg

from etl_assets.io.catalog import ensure_schema

VIEW = "serve.daily_category_totals"

DDL: tuple[str, ...] = (  # in schema serve, made by ensure_schema
    """CREATE TABLE IF NOT EXISTS serve.batch_daily_category (
    day          date    NOT NULL,
    category_id  integer NOT NULL,
    orders       bigint  NOT NULL,
    amount       numeric NOT NULL,
    PRIMARY KEY (day, category_id)
)""",
    """CREATE TABLE IF NOT EXISTS serve.batch_watermarks (
    day          date PRIMARY KEY,
    event_id     bigint NOT NULL,
    orders_read  bigint NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now()
)""",
    """CREATE OR REPLACE VIEW serve.daily_category_totals AS
SELECT day, category_id, sum(orders)::bigint AS orders, sum(amount) AS amount
FROM (
    SELECT day, category_id, orders, amount FROM serve.batch_daily_category
    UNION ALL
    SELECT d.day, d.category_id, d.orders, d.amount
    FROM serve.speed_deltas d
    LEFT JOIN serve.batch_watermarks w ON w.day = d.day
    WHERE d.event_id > coalesce(w.event_id, 0)
) layers
GROUP BY day, category_id
HAVING sum(orders) <> 0""",
)


def ensure_serving(conn: psycopg.Connection) -> None:
    """Create the batch tables and the view in the caller's transaction (after the speed table)."""
    ensure_schema(conn, "serve")
    for statement in DDL:
        conn.execute(statement)
