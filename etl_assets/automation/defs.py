"""This domain's Definitions: extract sensors and schedules from the tables declaration, the
project's automation-condition sensor, and the changed-days sensor of the daily aggregate."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg

from etl_assets.automation import conditions, schedules, sensors
from etl_assets.pipeline_config import PipelineConfig, load_pipelines


def build_defs(config: PipelineConfig | None = None) -> dg.Definitions:
    config = config or load_pipelines()
    items_sensors: list[dg.SensorDefinition] = [conditions.automation_sensor()]
    jobs: list[dg.UnresolvedAssetJobDefinition] = []
    for interval, specs in sensors.groups(config.tables).items():
        sensor, job = sensors.build_source_sensor(interval, specs)
        items_sensors.append(sensor)
        jobs.append(job)
    items_schedules = []
    for cron, specs in schedules.groups(config.tables).items():
        schedule, job = schedules.build_schedule(cron, specs)
        items_schedules.append(schedule)
        jobs.append(job)
    from etl_assets.automation.partitions import build_changed_days_sensor
    from etl_assets.extract.assets import declared_keys
    from etl_assets.transforms.assets import DAILY, DAILY_TOTALS, ORDERS_ENRICHED

    # The demo graph's aggregate exists only when its inputs are declared (prune_undeclared).
    needed = {dg.AssetKey(["raw", "orders"]), dg.AssetKey(["raw", "categories"])}
    if needed <= declared_keys(config):
        items_sensors.append(build_changed_days_sensor(DAILY_TOTALS, ORDERS_ENRICHED, DAILY))
    return dg.Definitions(sensors=items_sensors, schedules=items_schedules, jobs=jobs)


def apply_automation(defs: dg.Definitions, config: PipelineConfig | None = None) -> dg.Definitions:
    """Root policies for extracted tables: each table's freshness windows (derived from its trigger
    or declared), and :data:`conditions.FILL_MISSING` on schedule-driven tables. Tables with
    ``automation: off`` and no ``freshness:`` keep the project-wide default (etl_assets.quality)."""
    config = config or load_pipelines()
    by_key = {dg.AssetKey(spec.asset_key_path): spec for spec in config.tables}

    def policy(spec: dg.AssetSpec) -> dg.AssetSpec:
        table = by_key.get(spec.key)
        if table is None:
            return spec
        windows = table.freshness_windows
        if windows is not None:
            policy_ = dg.FreshnessPolicy.time_window(
                fail_window=dt.timedelta(seconds=windows.fail),
                warn_window=dt.timedelta(seconds=windows.warn) if windows.warn else None,
            )
            spec = dg.apply_freshness_policy(spec, policy_, overwrite_existing=True)
        if table.trigger.kind == "schedule" and spec.automation_condition is None:
            spec = spec.replace_attributes(automation_condition=conditions.FILL_MISSING)
        return spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        return defs.permissive_map_resolved_asset_specs(func=policy, selection=None)
