"""The stream and Lambda layers as Dagster assets, and the sensor that drives micro-batches.

- ``stream/orders`` (the sink) and ``serve/speed_deltas`` (the speed layer) are written by one
  micro-batch (:func:`etl_assets.stream.processor.process_once`, the same code ``etl-assets stream
  run`` loops over), so they are one multi-asset step. ``stream_queue_sensor`` requests it when the
  queue holds visible events (latency: Dagster's run start, seconds). It is STOPPED by default:
  ``etl-assets stream run`` is the low-latency driver, and the two may run together (claims are
  disjoint, the sink is idempotent) but need not.
- ``serve/batch_daily_category``: the batch layer, one daily partition per day.
- ``serve/daily_category_totals``: the serving view over both.

Both layers carry freshness policies, so the UI shows when either falls behind.
"""

# No `from __future__ import annotations`: Dagster inspects the op's config annotation.

import datetime as dt

import dagster as dg

from etl_assets.db import PostgresResource
from etl_assets.stream import processor, queue, sink
from etl_assets.stream.lambda_ import batch, serving

GROUP = "stream"
SINK_KEY = dg.AssetKey(["stream", "orders"])
SPEED_KEY = dg.AssetKey(["serve", "speed_deltas"])
BATCH_KEY = dg.AssetKey(["serve", "batch_daily_category"])
SERVING_KEY = dg.AssetKey(["serve", "daily_category_totals"])
SPEED_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=dt.timedelta(minutes=15), warn_window=dt.timedelta(minutes=5)
)
BATCH_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=dt.timedelta(hours=48), warn_window=dt.timedelta(hours=26)
)
DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1)


class MicroBatchConfig(dg.Config):
    max_events: int = 5000
    vt_seconds: float = queue.DEFAULT_VT


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            SINK_KEY,
            group_name=GROUP,
            description="Each order's latest applied version, fed by the event stream (exactly once).",
            metadata={"dagster/table_name": "stream.orders"},
        ),
        dg.AssetSpec(
            SPEED_KEY,
            group_name=GROUP,
            description="Lambda speed layer: additive deltas per day and category, keyed by event id.",
            freshness_policy=SPEED_FRESHNESS,
            metadata={"dagster/table_name": "serve.speed_deltas"},
        ),
    ],
    name="stream_micro_batch",
    pool="stream",
)
def stream_micro_batch(
    context: dg.AssetExecutionContext,
    config: MicroBatchConfig,
    source: PostgresResource,
    warehouse: PostgresResource,
):
    """Consume one micro-batch from the source queue into the sink and the speed layer.

    Without the queue in the source (``etl-assets stream install`` not run) there is nothing to
    consume: the (empty) sink is up to date and says so (``queue_installed: false``), so a run of
    the whole graph does not fail on it.
    """
    with source.connect(autocommit=True) as src, warehouse.connect() as wh:
        sink.ensure_tables(wh)
        installed = queue.is_installed(src)
        if not installed:
            context.log.info("stream queue not installed in the source (etl-assets stream install)")
            result = processor.BatchResult()
        else:
            result = processor.process_once(
                src, wh, max_events=config.max_events, vt=config.vt_seconds, run_id=context.run.run_id
            )
    metadata = {
        "queue_installed": installed,
        "events_claimed": result.claimed,
        "applied": result.applied,
        "stale": result.stale,
        "redelivered_skipped": result.duplicate,
        "dead_lettered": result.dead,
        "last_event_id": result.max_event_id or 0,
        "seconds": round(result.seconds, 3),
    }
    yield dg.MaterializeResult(asset_key=SINK_KEY, metadata=metadata)
    yield dg.MaterializeResult(asset_key=SPEED_KEY, metadata={"deltas": result.deltas})


@dg.asset(
    key=BATCH_KEY,
    group_name=GROUP,
    partitions_def=DAILY,
    freshness_policy=BATCH_FRESHNESS,
    deps=[dg.AssetKey(["raw", "orders"])],  # reads the orders raw/orders copies (see lambda_.batch)
    description="Lambda batch layer: a day's totals recomputed from the source, with its event watermark.",
    metadata={"dagster/table_name": "serve.batch_daily_category", "partition_expr": "day"},
    pool="stream",
)
def batch_daily_category(
    context: dg.AssetExecutionContext, source: PostgresResource, warehouse: PostgresResource
) -> dg.MaterializeResult:
    """Recompute one day (watermark 0 while the stream is not installed: no event exists yet)."""
    day = dt.date.fromisoformat(context.partition_key)
    with source.connect(autocommit=True) as src, warehouse.connect() as wh:
        result = batch.recompute_day(src, wh, day)
    return dg.MaterializeResult(
        metadata={
            "watermark_event_id": result.watermark,
            "orders_read": result.orders_read,
            "orders_counted": result.orders,
            "amount": float(result.amount),
            "categories": result.groups,
        }
    )


@dg.asset(
    key=SERVING_KEY,
    group_name=GROUP,
    deps=[BATCH_KEY, SPEED_KEY],
    description="Serving view: batch totals + speed deltas above each day's batch watermark.",
    metadata={"dagster/table_name": serving.VIEW},
)
def daily_category_totals(warehouse: PostgresResource) -> dg.MaterializeResult:
    with warehouse.connect() as wh:
        sink.ensure_tables(wh)
        rows = wh.execute("SELECT count(*) FROM serve.daily_category_totals").fetchone()[0]
    return dg.MaterializeResult(metadata={"dagster/row_count": rows})


@dg.sensor(
    name="stream_queue_sensor",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.STOPPED,
    asset_selection=[SINK_KEY, SPEED_KEY],
    description="Requests one micro-batch when the source queue holds visible events.",
)
def stream_queue_sensor(context: dg.SensorEvaluationContext, source: PostgresResource):
    with source.connect(autocommit=True) as conn:
        if not queue.is_installed(conn):
            return dg.SkipReason("the stream queue is not installed (etl-assets stream install)")
        row = conn.execute(
            "SELECT count(*), max(id), sum(deliveries) FROM (SELECT id, deliveries FROM etl_stream.events"
            " WHERE visible_at <= now() ORDER BY id LIMIT 1000) v"
        ).fetchone()
    if not row[0]:
        return dg.SkipReason("no visible events")
    # deliveries in the key: after a failed run its events come back with more deliveries, so the
    # retry gets a new key (the daemon never re-runs a key that already has a run, failed or not)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"stream-{row[1]}-{row[2]}", asset_selection=[SINK_KEY, SPEED_KEY])
        ],
        cursor=str(row[1]),
    )


def build_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[stream_micro_batch, batch_daily_category, daily_category_totals],
        sensors=[stream_queue_sensor],
    )
