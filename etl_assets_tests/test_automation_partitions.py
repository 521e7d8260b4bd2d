"""The daily aggregate: changed days re-aggregated by the changed-days sensor, and backfills of a
partition range in one run (``etl-assets run --partition-range``), against a real warehouse."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from etl_assets import runner
from etl_assets.automation.partitions import RANGE_END, RANGE_START, build_changed_days_sensor
from etl_assets.db import PostgresResource
from etl_assets.errors import ConfigError
from etl_assets.io.manager import PostgresIOManager
from etl_assets.io.tables import TableRef
from etl_assets.transforms import aggregate
from etl_assets.transforms.assets import DAILY, DAILY_TOTALS, ORDERS_ENRICHED, daily_category_totals

TODAY = dt.datetime.now(dt.UTC).date()
DAYS = [TODAY - dt.timedelta(days=n) for n in range(14, 0, -1)]  # 14 completed days


@pytest.fixture
def wh(module_warehouse: str) -> str:
    """mart.orders_enriched with 6 orders on each of the 14 completed days and 3 today."""
    with psycopg.connect(module_warehouse) as conn:
        conn.execute("DROP SCHEMA IF EXISTS mart CASCADE; CREATE SCHEMA mart")
        conn.execute(
            "CREATE TABLE mart.orders_enriched (id bigint PRIMARY KEY, order_date date, category_id int, "
            "category_name text, user_id bigint, amount numeric(12, 2), amount_eur float8)"
        )
        rows = []
        for d, day in enumerate([*DAYS, TODAY]):
            for i in range(3 if day == TODAY else 6):
                oid = d * 10 + i
                amount = oid + 0.5
                rows.append((oid, day, 1 + i % 3, f"cat{1 + i % 3}", 100 + oid % 4, amount, amount * 0.9))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO mart.orders_enriched VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    return module_warehouse


@pytest.fixture
def instance(etl_env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as inst:
        yield inst


def _defs(dsn: str) -> dg.Definitions:
    warehouse = PostgresResource(dsn=dsn)
    return dg.Definitions(
        assets=[daily_category_totals, dg.AssetSpec(ORDERS_ENRICHED)],
        resources={"warehouse": warehouse, "io_manager": PostgresIOManager(warehouse=warehouse)},
    )


def _run(dsn: str, instance: dg.DagsterInstance, **kw) -> runner.RunSummary:
    lines: list[str] = []
    summary = runner.run(select=["mart/daily_category_totals"], defs=_defs(dsn), instance=instance,
                         out=lines.append, **kw)
    assert summary.exit_code == 0, lines
    return summary


def _equal_to_source(dsn: str, day: dt.date) -> int:
    """The day's totals equal a direct SQL aggregate of the input; returns its row count."""
    with psycopg.connect(dsn) as conn:
        expected = conn.execute(aggregate.expected_sql(TableRef("mart", "orders_enriched")),
                                (day, day + dt.timedelta(days=1))).fetchall()
        got = conn.execute(
            "SELECT order_date, category_id, event_count, unique_users, round(total_amount::numeric, 2) "
            "FROM mart.daily_category_totals WHERE order_date = %s ORDER BY 1, 2", (day,)).fetchall()
    assert got == expected, day
    return len(got)


def test_a_14_day_backfill_is_one_run_equal_to_the_source(wh: str, instance) -> None:
    assert daily_category_totals.backfill_policy == dg.BackfillPolicy.single_run()
    summary = _run(wh, instance, partition_range=f"{DAYS[0]}..{DAYS[-1]}")
    assert len(summary.run_ids) == 1  # one run for 14 partitions
    run = instance.get_run_by_id(summary.run_ids[0])
    assert (run.tags[RANGE_START], run.tags[RANGE_END]) == (str(DAYS[0]), str(DAYS[-1]))
    for day in DAYS:
        assert _equal_to_source(wh, day) == 3
    materialized = instance.get_materialized_partitions(DAILY_TOTALS)
    assert {str(d) for d in DAYS} <= materialized
    with psycopg.connect(wh) as conn:
        assert conn.execute("SELECT count(*) FROM mart.daily_category_totals WHERE order_date = %s",
                            (TODAY,)).fetchone()[0] == 0
    with pytest.raises(ConfigError, match="is not a partition"):
        _run(wh, instance, partition_range=f"{DAYS[0]}..{TODAY + dt.timedelta(days=3)}")
    with pytest.raises(ConfigError, match="FROM comes after TO"):
        _run(wh, instance, partition_range=f"{DAYS[5]}..{DAYS[1]}")
    with pytest.raises(ConfigError, match=r"FROM\.\.TO"):
        _run(wh, instance, partition_range=str(DAYS[0]))


def test_changed_days_sensor_requests_exactly_the_changed_day(wh: str, instance) -> None:
    sensor = build_changed_days_sensor(DAILY_TOTALS, ORDERS_ENRICHED, DAILY)
    resources = {"warehouse": PostgresResource(dsn=wh)}
    cursor = None

    def tick() -> dg.SensorResult:
        nonlocal cursor
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources,
                                          definitions=_defs(wh))
        result = sensor(context)
        cursor = result.cursor or cursor
        return result

    def upstream_materialized() -> None:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=ORDERS_ENRICHED))

    upstream_materialized()
    # First sight: every completed day with rows, as one contiguous range (today is not a partition yet).
    (first,) = tick().run_requests
    assert (first.tags[RANGE_START], first.tags[RANGE_END]) == (str(DAYS[0]), str(DAYS[-1]))
    assert first.asset_selection == [DAILY_TOTALS]
    _run(wh, instance, partition_range=f"{first.tags[RANGE_START]}..{first.tags[RANGE_END]}")
    assert "no new materialization" in tick().skip_reason.skip_message
    upstream_materialized()  # rebuilt, same rows
    assert "no completed day's rows did" in tick().skip_reason.skip_message
    # An order placed ten days ago is updated: exactly that day is requested.
    ten_days_ago = TODAY - dt.timedelta(days=10)
    with psycopg.connect(wh) as conn:
        before = {d: conn.execute("SELECT md5(string_agg(t::text, '|' ORDER BY category_id)) FROM "
                                  "mart.daily_category_totals t WHERE order_date = %s", (d,)).fetchone()[0]
                  for d in DAYS}
        conn.execute("UPDATE mart.orders_enriched SET amount = amount + 100 WHERE id = "
                     "(SELECT min(id) FROM mart.orders_enriched WHERE order_date = %s)", (ten_days_ago,))
        conn.execute("UPDATE mart.orders_enriched SET amount = amount + 1 WHERE order_date = %s", (TODAY,))
    upstream_materialized()
    (request,) = tick().run_requests
    assert request.partition_key == str(ten_days_ago)
    assert request.run_key.startswith(f"watch_changed_days:{ten_days_ago}:")
    _run(wh, instance, partition=request.partition_key)
    _equal_to_source(wh, ten_days_ago)
    with psycopg.connect(wh) as conn:
        after = {d: conn.execute("SELECT md5(string_agg(t::text, '|' ORDER BY category_id)) FROM "
                                 "mart.daily_category_totals t WHERE order_date = %s", (d,)).fetchone()[0]
                 for d in DAYS}
    assert {d for d in DAYS if before[d] != after[d]} == {ten_days_ago}
    # Two days far apart change: ONE run over the range between them, below the extracts' priority.
    three_days_ago = TODAY - dt.timedelta(days=3)
    with psycopg.connect(wh) as conn:
        for day in (ten_days_ago, three_days_ago):
            conn.execute("UPDATE mart.orders_enriched SET amount = amount + 7 WHERE id = "
                         "(SELECT min(id) FROM mart.orders_enriched WHERE order_date = %s)", (day,))
    upstream_materialized()
    (request,) = tick().run_requests
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == (str(ten_days_ago), str(three_days_ago))
    assert request.tags["dagster/priority"] == "-1"
    _run(wh, instance, partition_range=f"{ten_days_ago}..{three_days_ago}")
    for day in (ten_days_ago, three_days_ago):
        _equal_to_source(wh, day)
