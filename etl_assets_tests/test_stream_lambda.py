"""The Lambda layers: after every step of a scenario with late events, the serving view equals,
exactly, a direct aggregate over the source computed here independently."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import psycopg

from etl_assets.stream import producer
from etl_assets.stream.lambda_ import batch
from etl_assets_tests.stream_helpers import CLEAN_SQL, drain


def direct_aggregate(source_dsn: str) -> dict[tuple[dt.date, int], tuple[int, Decimal]]:
    with psycopg.connect(source_dsn) as conn:
        rows = conn.execute(
            "SELECT (o.created_at AT TIME ZONE 'UTC')::date, o.category_id, count(*), sum(o.amount)"
            f" FROM shop.orders o WHERE {CLEAN_SQL} AND o.status <> 'cancelled' GROUP BY 1, 2"
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def serving(warehouse_dsn: str) -> dict[tuple[dt.date, int], tuple[int, Decimal]]:
    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute(
            "SELECT day, category_id, orders, amount FROM serve.daily_category_totals"
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def days_with_orders(source_dsn: str) -> list[dt.date]:
    with psycopg.connect(source_dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM shop.orders"
            " WHERE created_at <= now() ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def run_batch(dbs: dict[str, str], days: list[dt.date]) -> list[batch.BatchDay]:
    with psycopg.connect(dbs["source"], autocommit=True) as src, psycopg.connect(dbs["warehouse"]) as wh:
        return [batch.recompute_day(src, wh, day) for day in days]


def orders_of_day(source_dsn: str, day: dt.date, n: int) -> list[tuple[int, str, Decimal]]:
    with psycopg.connect(source_dsn) as conn:
        return conn.execute(
            "SELECT id, status, amount FROM shop.orders WHERE (created_at AT TIME ZONE 'UTC')::date = %s"
            " AND status <> 'cancelled' ORDER BY id LIMIT %s",
            (day, n),
        ).fetchall()


def test_serving_equals_the_source_after_every_step(stream_dbs: dict[str, str]) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    # step 0: the batch layer covers every day of the seeded demo
    run_batch(stream_dbs, days_with_orders(src))
    assert serving(wh) == direct_aggregate(src)
    # step 1: events arrive (new orders today, updates and cancellations of old ones); speed runs
    producer.produce(src, 800, seed=21, dirty_share=0.05, batch_size=50)
    drain(src, wh, max_events=300)
    assert serving(wh) == direct_aggregate(src)
    # step 2: the batch layer runs over every day (watermarks move past those events)
    covered = run_batch(stream_dbs, days_with_orders(src))
    assert serving(wh) == direct_aggregate(src)
    # step 3: late events for a day the batch covered: updates and a cancellation; speed runs
    late_day = max(covered[:-2], key=lambda c: c.orders_read).day  # a busy past day
    picked = orders_of_day(src, late_day, 4)
    assert len(picked) == 4
    maker = producer.ChangeMaker(seed=5, dirty_share=0)
    changes = [maker.update(oid, status, amount) for oid, status, amount in picked[:2]]
    changes += [
        producer.Change("updated", picked[2][0], {"amount": Decimal("-5.00")}),  # becomes dirty
        producer.Change("cancelled", picked[3][0], {"status": "cancelled"}),
    ]
    with psycopg.connect(src) as conn, conn.transaction():
        producer.apply_changes(conn, changes)
    assert serving(wh) != direct_aggregate(src)  # the speed layer has not seen them yet
    drain(src, wh)
    assert serving(wh) == direct_aggregate(src)
    # step 4: the batch re-runs that day only: the late deltas fall below its new watermark
    (redone,) = run_batch(stream_dbs, [late_day])
    assert redone.watermark > next(c.watermark for c in covered if c.day == late_day)
    assert serving(wh) == direct_aggregate(src)
    with psycopg.connect(wh) as conn:
        above = conn.execute(
            "SELECT count(*) FROM serve.speed_deltas d JOIN serve.batch_watermarks w USING (day)"
            " WHERE d.day = %s AND d.event_id > w.event_id",
            (late_day,),
        ).fetchone()[0]
    assert above == 0


def test_a_batch_waits_for_events_in_flight_so_its_watermark_never_passes_them(
    stream_dbs: dict[str, str],
) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    today = dt.datetime.now(dt.UTC).date()
    run_batch(stream_dbs, days_with_orders(src))
    result: list[batch.BatchDay] = []
    with psycopg.connect(src) as conn:
        maker = producer.ChangeMaker(seed=8, dirty_share=0)
        # a producer has drawn its event ids but not committed yet
        ids = producer.apply_changes(conn, [maker.creation(dt.datetime.now(dt.UTC), 100) for _ in range(3)])
        thread = threading.Thread(target=lambda: result.extend(run_batch(stream_dbs, [today])))
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # the batch waits for the producer's COMMIT
        conn.commit()
    thread.join(timeout=30)
    assert result[0].watermark >= max(ids)
    drain(src, wh)
    assert serving(wh) == direct_aggregate(src)
