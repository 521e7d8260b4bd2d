"""The stream in Dagster: the micro-batch asset, the batch layer's partitions, the sensor, the
definitions (freshness on both layers), and the consumer's rate-limited reports to the instance."""

from __future__ import annotations

import datetime as dt
import threading
import time

import dagster as dg
import psycopg

from etl_assets.db import PostgresResource
from etl_assets.stream import assets, consumer, producer
from etl_assets_tests.stream_helpers import outcome_counts, queue_size, sink_latest, source_latest


def _resources(dbs: dict[str, str]) -> dict[str, PostgresResource]:
    return {
        "source": PostgresResource(dsn=dbs["source"], role="source"),
        "warehouse": PostgresResource(dsn=dbs["warehouse"]),
    }


def test_the_project_definitions_hold_both_layers_with_freshness(etl_env: dict[str, str]) -> None:
    from etl_assets.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    for key in (assets.SINK_KEY, assets.SPEED_KEY, assets.BATCH_KEY, assets.SERVING_KEY):
        assert graph.has(key), key
    assert graph.get(assets.SPEED_KEY).freshness_policy == assets.SPEED_FRESHNESS
    assert graph.get(assets.BATCH_KEY).freshness_policy == assets.BATCH_FRESHNESS
    assert defs.resolve_sensor_def("stream_queue_sensor").default_status == dg.DefaultSensorStatus.STOPPED


def test_micro_batch_asset_sensor_and_batch_partition(stream_dbs: dict[str, str]) -> None:
    resources = _resources(stream_dbs)
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(
        assets=[assets.stream_micro_batch, assets.batch_daily_category, assets.daily_category_totals],
        sensors=[assets.stream_queue_sensor],
        resources=resources,
    )
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)
    assert isinstance(assets.stream_queue_sensor(context), dg.SkipReason)
    producer.produce(stream_dbs["source"], 300, seed=12, dirty_share=0.05)
    result = assets.stream_queue_sensor(context)
    (request,) = result.run_requests
    assert set(request.asset_selection) == {assets.SINK_KEY, assets.SPEED_KEY}
    run = dg.materialize(
        [assets.stream_micro_batch],
        resources=resources,
        instance=instance,
        run_config={"ops": {"stream_micro_batch": {"config": {"max_events": 200}}}},
    )
    assert run.success
    event = instance.get_latest_materialization_event(assets.SINK_KEY).asset_materialization
    assert event.metadata["events_claimed"].value == 200
    assert queue_size(stream_dbs["source"]) == 100
    dg.materialize([assets.stream_micro_batch], resources=resources, instance=instance)
    assert isinstance(assets.stream_queue_sensor(context), dg.SkipReason)
    assert sum(outcome_counts(stream_dbs["warehouse"]).values()) == 300
    expected = source_latest(stream_dbs["source"])
    assert {k: sink_latest(stream_dbs["warehouse"]).get(k) for k in expected} == expected
    today = dt.datetime.now(dt.UTC).date().isoformat()
    run = dg.materialize(
        [assets.batch_daily_category], resources=resources, instance=instance, partition_key=today
    )
    assert run.success
    meta = instance.get_latest_materialization_event(assets.BATCH_KEY).asset_materialization.metadata
    with psycopg.connect(stream_dbs["source"]) as conn:
        last = conn.execute("SELECT last_value FROM etl_stream.events_id_seq").fetchone()[0]
    assert meta["watermark_event_id"].value == last


def test_the_consumer_reports_observations_per_batch_and_materializations_rarely(
    stream_dbs: dict[str, str],
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    config = consumer.ConsumerConfig(max_events=100, poll_s=0.5, observe_every_s=0, materialize_every_s=60)
    stop = threading.Event()
    stats: list[consumer.ConsumerStats] = []
    thread = threading.Thread(
        target=lambda: stats.append(
            consumer.run(
                stream_dbs["source"],
                stream_dbs["warehouse"],
                config,
                out=lambda s: None,
                instance=instance,
                stop_event=stop,
                handle_signals=False,
            )
        )
    )
    thread.start()
    producer.produce(stream_dbs["source"], 500, seed=13, dirty_share=0.05, batch_size=100)
    deadline = time.monotonic() + 60
    while queue_size(stream_dbs["source"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    batches = stats[0].batches
    assert batches >= 5
    observations = instance.fetch_observations(assets.SINK_KEY, limit=100).records
    materializations = instance.fetch_materializations(assets.SINK_KEY, limit=100).records
    assert 1 <= len(observations) <= batches + 1
    assert len(materializations) == 1
    meta = observations[0].asset_observation.metadata
    assert {"lag_seconds", "events_per_second", "applied_total", "last_event_id"} <= set(meta)
    assert meta["applied_total"].value == stats[0].applied
