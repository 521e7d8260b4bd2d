"""Declarative automation downstream, heartbeats and freshness, on a real instance.

``dg.evaluate_automation_conditions`` evaluates the project's conditions as the automation sensor
would; the freshness states come from Dagster's own freshness daemon code (as in
test_quality_freshness), with the clock moved by Dagster's ``freeze_time``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.freshness import FreshnessDaemon

from etl_assets.automation import conditions, sensors
from etl_assets.automation.probes import Probe
from etl_assets.automation.versions import DATA_VERSION_TAG, latest_data_version
from etl_assets.settings import PROJECT_ROOT


@pytest.fixture
def instance(etl_env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as inst:
        yield inst


def _graph(passing: dict[str, bool]):
    """raw/<p>_up (with a blocking check whose outcome ``passing["ok"]`` sets) -> clean/<p>_down."""
    prefix = f"c{secrets.token_hex(3)}"
    up_key, down_key = dg.AssetKey(["raw", f"{prefix}_up"]), dg.AssetKey(["clean", f"{prefix}_down"])

    @dg.asset(key=up_key)
    def up() -> None:
        return None

    @dg.asset_check(asset=up_key, blocking=True)
    def up_ok() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=passing["ok"])

    @dg.asset(key=down_key, deps=[up_key], automation_condition=conditions.DOWNSTREAM)
    def down() -> None:
        return None

    return up, up_ok, down


def test_downstream_fills_when_missing_follows_runs_and_stops_on_a_failed_blocking_check(instance) -> None:
    passing = {"ok": True}
    up, up_ok, down = _graph(passing)
    # The positive control: Dagster's eager() alone, on a twin of down.
    @dg.asset(key=dg.AssetKey(["clean", f"{up.key.path[-1]}_eager"]), deps=[up.key],
              automation_condition=dg.AutomationCondition.eager())
    def twin() -> None:
        return None

    defs = dg.Definitions(assets=[up, down, twin], asset_checks=[up_ok])
    cursor = None
    twin_requested = []

    def tick() -> int:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        twin_requested.append(result.get_num_requested(twin.key))
        return result.get_num_requested(down.key)

    assert tick() == 0  # its input is missing too (a sensor-driven extract not yet run): wait
    assert dg.materialize([up, up_ok], instance=instance).success
    assert tick() == 1  # missing, input present: the empty warehouse fills itself
    assert dg.materialize([down], instance=instance).success
    assert tick() == 0  # nothing new
    passing["ok"] = False  # the input is materialized by a run, but its blocking check fails
    assert not dg.materialize([up, up_ok], instance=instance, raise_on_error=False).success
    assert instance.get_latest_materialization_event(up.key) is not None
    assert tick() == 0
    assert twin_requested[-1] == 1  # eager() alone requests here
    passing["ok"] = True
    assert dg.materialize([up, up_ok], instance=instance).success
    assert tick() == 1
    assert dg.materialize([down], instance=instance).success
    assert tick() == 0
    # A runless "checked, no change" heartbeat on the input rebuilds nothing.
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=up.key, description="checked"))
    assert tick() == 0
    assert twin_requested[-1] == 1  # eager() alone would


def test_an_input_run_that_changed_nothing_rebuilds_nothing(instance) -> None:
    """An extract run that changed no row keeps its data version (etl_assets.automation.versions)."""
    version = {"v": "a"}
    key = dg.AssetKey(["raw", f"v{secrets.token_hex(3)}"])

    @dg.asset(key=key)
    def up() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(version["v"]))

    @dg.asset(key=dg.AssetKey(["clean", key.path[-1]]), deps=[key],
              automation_condition=conditions.DOWNSTREAM)
    def down() -> None:
        return None

    defs = dg.Definitions(assets=[up, down])
    assert dg.materialize([up], instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.get_num_requested(down.key) == 1
    assert dg.materialize([down], instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(down.key) == 0
    assert dg.materialize([up], instance=instance).success  # same version: nothing changed
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(down.key) == 0
    version["v"] = "b"
    assert dg.materialize([up], instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(down.key) == 1


def test_failed_fill_is_not_retried_every_tick(instance) -> None:
    passing = {"ok": True}
    up, up_ok, _ = _graph(passing)

    @dg.asset(key=dg.AssetKey(["clean", f"{up.key.path[-1]}_broken"]), deps=[up.key],
              automation_condition=conditions.DOWNSTREAM)
    def broken() -> None:
        raise RuntimeError("transform bug")

    defs = dg.Definitions(assets=[up, broken], asset_checks=[up_ok])
    assert dg.materialize([up, up_ok], instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.get_num_requested(broken.key) == 1
    assert not dg.materialize([broken], instance=instance, raise_on_error=False).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(broken.key) == 0  # missing, but its last run failed: wait for inputs
    assert dg.materialize([up, up_ok], instance=instance).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(broken.key) == 1


def test_project_automation_sensor_and_status_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    sensor = conditions.automation_sensor()
    assert sensor.name == "etl_automation_conditions"
    assert sensor.minimum_interval_seconds == 10
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.setenv("ETL_AUTOMATION", "off")
    assert conditions.automation_sensor().default_status == dg.DefaultSensorStatus.STOPPED


def _freshness(instance, ctx, daemon, key) -> FreshnessState:
    asyncio.run(daemon._evaluate_assets(ctx))
    return instance.get_freshness_state_records([key])[key].freshness_state


def test_unchanged_source_stays_fresh_through_heartbeats(etl_env: dict[str, str], instance) -> None:
    from etl_assets_tests import automation_defs

    spec, key = automation_defs.SPEC, automation_defs.heartbeat_probe.key
    windows = spec.freshness_windows
    assert (windows.warn, windows.fail) == (300.0, 900.0)  # derived from the default 30 s sensor
    target = PythonFileTarget(python_file=str(Path(automation_defs.__file__)), attribute="defs",
                              working_directory=str(PROJECT_ROOT), location_name="automation_probe")
    unchanged = [(spec, Probe(str(spec.target), False, f"{spec.target}: no row newer than X", "f"))]
    with create_test_daemon_workspace_context(target, instance) as ctx:
        daemon = FreshnessDaemon()
        assert dg.materialize([automation_defs.heartbeat_probe], instance=instance).success
        t0 = instance.get_latest_materialization_event(key).timestamp
        now = dt.datetime.fromtimestamp(t0, dt.UTC)
        # Not needed yet (half the WARN window: 150 s).
        assert sensors.heartbeats(instance, unchanged, "watch", t0 + 60) == []
        with freeze_time(now + dt.timedelta(minutes=6)):
            assert _freshness(instance, ctx, daemon, key) == FreshnessState.WARN  # nothing recorded
            (beat,) = sensors.heartbeats(instance, unchanged, "watch", t0 + 360)
            assert beat.asset_key == key and beat.tags[sensors.HEARTBEAT_TAG] == "true"
            assert beat.tags[DATA_VERSION_TAG] == latest_data_version(instance, key)  # data unchanged
            instance.report_runless_asset_event(beat)  # what the sensor daemon does with asset_events
            assert _freshness(instance, ctx, daemon, key) == FreshnessState.PASS
        with freeze_time(now + dt.timedelta(minutes=6 + 16)):
            assert _freshness(instance, ctx, daemon, key) == FreshnessState.FAIL  # no check since: stale
