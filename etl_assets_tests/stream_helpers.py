"""Helpers shared by the stream tests: the independent expectations computed straight from the source."""

from __future__ import annotations

import psycopg

from etl_assets.stream import processor, sink

# clean.orders' rules, written again in SQL on purpose: the tests check the code against this.
CLEAN_SQL = "o.amount >= 0 AND o.amount < 1000000 AND o.created_at <= now()"


def source_latest(source_dsn: str) -> dict[int, tuple[int, object, str]]:
    """order id -> (version, amount, status) for every streamed order whose current state is clean."""
    with psycopg.connect(source_dsn) as conn:
        rows = conn.execute(
            "SELECT o.id, v.version, o.amount, o.status FROM shop.orders o"
            f" JOIN etl_stream.order_versions v ON v.order_id = o.id WHERE {CLEAN_SQL}"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def sink_latest(warehouse_dsn: str, ids: object = None) -> dict[int, tuple[int, object, str]]:
    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute("SELECT order_id, version, amount, status FROM stream.orders").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def drain(source_dsn: str, warehouse_dsn: str, **options: object) -> list[processor.BatchResult]:
    """Process until the queue has nothing visible."""
    batches = []
    with psycopg.connect(source_dsn, autocommit=True) as src, psycopg.connect(warehouse_dsn) as wh:
        sink.ensure_tables(wh)
        while True:
            batch = processor.process_once(src, wh, **options)
            if not batch.claimed:
                return batches
            batches.append(batch)


def outcome_counts(warehouse_dsn: str) -> dict[str, int]:
    with psycopg.connect(warehouse_dsn) as conn:
        return dict(
            conn.execute("SELECT outcome, count(*) FROM stream.processed_events GROUP BY 1").fetchall()
        )


def queue_size(source_dsn: str) -> int:
    with psycopg.connect(source_dsn) as conn:
        return conn.execute("SELECT count(*) FROM etl_stream.events").fetchone()[0]
