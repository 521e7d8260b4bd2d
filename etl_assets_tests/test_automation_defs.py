"""The automation domain's Definitions built from a tables declaration: which sensors, schedules and
jobs exist, their names, statuses (ETL_AUTOMATION=off) and the policies applied to extracted tables."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from etl_assets.automation import conditions, schedules
from etl_assets.automation.defs import build_defs
from etl_assets.pipeline_config import parse_pipelines

YAML = """tables:
  - {name: shop.orders, extract: incremental, primary_key: [id], cursor: updated_at}
  - {name: shop.customers, extract: cdc, primary_key: [id]}
  - {name: shop.events, extract: incremental, primary_key: [id], cursor: at, automation: {interval: 5m}}
  - {name: shop.categories, extract: full}
  - {name: shop.big, extract: chunked, primary_key: [id]}
  - {name: shop.hourly, extract: full, automation: {cron: "15 * * * *"}}
  - {name: shop.manual, extract: full, automation: off}
"""


def _by_name(items) -> dict:
    return {item.name: item for item in items}


def test_one_sensor_per_interval_one_schedule_per_cron_with_readable_names() -> None:
    config = parse_pipelines(YAML, "t.yaml")
    defs = build_defs(config)
    found = _by_name(defs.sensors)
    assert set(found) == {"etl_automation_conditions", "watch_cdc_incremental_every_30s",
                          "watch_incremental_every_5m", "watch_changed_days"}
    assert found["watch_incremental_every_5m"].minimum_interval_seconds == 300
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors)
    found_schedules = _by_name(defs.schedules)
    assert set(found_schedules) == {"extract_chunked_full_daily_0200_schedule",
                                    "extract_full_hourly_at_15_schedule"}
    daily = found_schedules["extract_chunked_full_daily_0200_schedule"]
    assert (daily.cron_schedule, daily.execution_timezone) == ("0 2 * * *", "UTC")
    assert daily.default_status == dg.DefaultScheduleStatus.RUNNING
    jobs = _by_name(defs.jobs)
    assert set(jobs) == {"extract_cdc_incremental_every_30s", "extract_incremental_every_5m",
                         "extract_chunked_full_daily_0200", "extract_full_hourly_at_15"}
    graph = dg.Definitions.merge(defs, dg.Definitions(assets=[
        dg.AssetSpec(["raw", n]) for n in ("orders", "customers", "events", "categories", "big", "hourly",
                                          "manual")])).resolve_asset_graph()
    selected = jobs["extract_chunked_full_daily_0200"].selection.resolve(graph)
    assert selected == {dg.AssetKey(["raw", "categories"]), dg.AssetKey(["raw", "big"])}
    assert "manual" not in str([s.name for s in defs.schedules])
    assert schedules.groups(config.tables).keys() == {"0 2 * * *", "15 * * * *"}


def test_automation_off_starts_everything_stopped_but_housekeeping(monkeypatch: pytest.MonkeyPatch,
                                                                  etl_env: dict[str, str]) -> None:
    monkeypatch.setenv("ETL_AUTOMATION", "off")
    defs = build_defs(parse_pipelines(YAML, "t.yaml"))
    assert {s.default_status for s in defs.sensors} == {dg.DefaultSensorStatus.STOPPED}
    assert {s.default_status for s in defs.schedules} == {dg.DefaultScheduleStatus.STOPPED}
    from etl_assets.definitions import build_definitions

    project = _by_name(build_definitions().sensors)
    assert project["etl_dead_run_cleanup"].default_status == dg.DefaultSensorStatus.RUNNING
    assert project["etl_automation_conditions"].default_status == dg.DefaultSensorStatus.STOPPED
    assert project["watch_cdc_incremental_every_30s"].default_status == dg.DefaultSensorStatus.STOPPED


def test_project_assets_carry_conditions_freshness_and_pool(etl_env: dict[str, str]) -> None:
    from etl_assets.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()

    def node(path: str):
        return graph.get(dg.AssetKey(path.split("/")))

    for key in ("clean/orders", "clean/customers", "mart/orders_enriched"):
        assert node(key).automation_condition == conditions.DOWNSTREAM, key
    assert node("mart/daily_category_totals").automation_condition == conditions.DAILY
    assert node("mart/daily_category_totals").backfill_policy == dg.BackfillPolicy.single_run()
    assert node("raw/orders").automation_condition is None  # its sensor drives it
    assert node("raw/categories").automation_condition == conditions.FILL_MISSING  # scheduled: fill once
    orders = node("raw/orders").freshness_policy_or_from_metadata
    assert orders.warn_window.to_timedelta() == dt.timedelta(minutes=5)
    assert orders.fail_window.to_timedelta() == dt.timedelta(minutes=15)
    categories = node("raw/categories").freshness_policy_or_from_metadata
    assert categories.fail_window.to_timedelta() == dt.timedelta(hours=49)
    for key in graph.get_all_asset_keys():  # every warehouse writer queues in the same pool
        if key.path[0] in ("raw", "clean", "mart"):
            assert graph.get(key).pools == {"warehouse"}, key
