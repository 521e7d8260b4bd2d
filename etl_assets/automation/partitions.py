"""Re-aggregate the days whose input changed: a sensor on the daily-partitioned aggregate.

``eager()`` reaches only the latest day of a daily-partitioned asset, and its input
(``mart.orders_enriched``) is not partitioned, so an order updated ten days after it was placed
would never reach that day's totals. This sensor runs after each new materialization of the input:
one ``GROUP BY order_date`` reads a signature of each day's rows (row count and the sum of a 64-bit
hash of every row), compares it with the signatures it stored in its cursor, and requests the days
whose signature changed (or that lost all their rows). All of them go in ONE run per tick: the
partition range from the first to the last changed day (``BackfillPolicy.single_run()`` on the asset
allows it; the days in between are recomputed too, one read of their rows). Updates scattered over
many days would otherwise queue one run per stretch of days, ahead of the extract runs that carry
the next change. The run key holds the range and the signatures, so the same change is requested
once. The runs go at a lower priority (``dagster/priority``) than the extract sensors' runs.

The signature query reads the input table once (it is rebuilt whole on each run anyway); the
aggregate then reads only the changed days.
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import psycopg
from psycopg import sql

from etl_assets.automation.sensors import AUTOMATION_TAG, PRIORITY_TAG, default_status
from etl_assets.db import PostgresResource
from etl_assets.io.tables import TableRef

SENSOR_NAME = "watch_changed_days"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
RECOMPUTE_PRIORITY = "-1"  # below the extract sensors' runs (etl_assets.automation.sensors)


def day_signatures(conn: psycopg.Connection, table: TableRef, column: str = "order_date") -> dict[str, str]:
    """day -> "count:hashsum" of the rows of ``table`` on that day; {} when the table is missing."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.ident.as_string(conn),)).fetchone()
    if not exists[0]:
        return {}
    query = sql.SQL(
        "SELECT {c}::text, count(*)::text || ':' || sum(hashtextextended(t::text, 0))::text "
        "FROM {t} AS t WHERE {c} IS NOT NULL GROUP BY 1"
    ).format(c=sql.Identifier(column), t=table.ident)
    return dict(conn.execute(query).fetchall())


def changed_days(before: dict[str, str], now: dict[str, str], valid: set[str]) -> list[str]:
    """Days (valid partition keys) whose signature differs, including days whose rows all left."""
    days = {d for d in set(before) | set(now) if before.get(d) != now.get(d)}
    return sorted(days & valid)


def build_changed_days_sensor(daily: dg.AssetKey, upstream: dg.AssetKey,
                              partitions: dg.TimeWindowPartitionsDefinition) -> dg.SensorDefinition:
    """The sensor for ``daily`` (partitioned by ``partitions``) reading ``upstream``'s table."""

    @dg.sensor(
        name=SENSOR_NAME,
        asset_selection=dg.AssetSelection.assets(daily),
        minimum_interval_seconds=10,
        default_status=default_status(),
        description=f"After {upstream.to_user_string()} materializes, requests the days of "
        f"{daily.to_user_string()} whose input rows changed (per-day signatures).",
    )
    def _sensor(context: dg.SensorEvaluationContext, warehouse: PostgresResource) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        records = context.instance.fetch_materializations(upstream, limit=1, ascending=False).records
        latest = records[0].storage_id if records else None
        if latest is None or latest == cursor.get("storage_id"):
            return dg.SensorResult(skip_reason=dg.SkipReason(
                f"{upstream.to_user_string()}: no new materialization"
                + (f" since event {latest}" if latest else "")))
        with warehouse.connect(autocommit=True) as conn:
            now = day_signatures(conn, TableRef.for_asset_key(upstream))
        valid = set(partitions.get_partition_keys())
        before = cursor.get("days", {})
        days = changed_days(before, now, valid)
        # Store only valid days: today's rows are requested again once the day is a partition.
        stored = {d: s for d, s in now.items() if d in valid}
        new_cursor = json.dumps({"storage_id": latest, "days": stored})
        if not days:
            return dg.SensorResult(skip_reason=dg.SkipReason(
                f"{upstream.to_user_string()} changed (event {latest}), but no completed day's rows did"),
                cursor=new_cursor)
        first, last = days[0], days[-1]  # sorted partition keys (dates)
        sigs = [now.get(d) for d in valid if first <= d <= last]
        digest = hashlib.sha1(json.dumps(sorted(map(str, sigs))).encode()).hexdigest()[:16]
        tags = {AUTOMATION_TAG: SENSOR_NAME, PRIORITY_TAG: RECOMPUTE_PRIORITY}
        if first == last:
            request = dg.RunRequest(run_key=f"{SENSOR_NAME}:{first}:{digest}",
                                    asset_selection=[daily], partition_key=first, tags=tags)
        else:
            request = dg.RunRequest(run_key=f"{SENSOR_NAME}:{first}..{last}:{digest}",
                                    asset_selection=[daily],
                                    tags={**tags, RANGE_START: first, RANGE_END: last})
        requests = [request]
        context.log.info(f"changed days of {upstream.to_user_string()}: {', '.join(days)}")
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return _sensor
