"""Declarative automation downstream of the extracts, and the sensor that evaluates it.

* Cleaned tables and aggregates (``etl_assets/transforms/assets.py``) run after a run materializes
  one of their inputs (not after a runless "checked, no change" heartbeat), only when every
  blocking check of their inputs passed (``eager()`` alone still
  requests after a failed blocking check: the failed run recorded the materialization), and whenever
  they are missing, so an empty warehouse fills itself (``missing() & ~in_progress()``:
  ``on_missing()`` ignores assets already missing when first evaluated; see :data:`FILL_MISSING`
  for the guards against retrying a failing fill every tick).
* The daily-partitioned aggregate gets the same condition limited to its latest day (``eager()``
  already is; ``missing()`` over every day since 2025-01-01 would request hundreds of runs): older
  days whose orders changed are requested by ``etl_assets.automation.partitions``.
* Extracted tables are sensor- or schedule-driven; tables on a schedule (full, chunked) also get
  :data:`FILL_MISSING`, so that an empty warehouse does not wait until 02:00 for them. Sensor-driven
  tables need nothing: their sensor requests a table that was never extracted.

Dagster's own ``default_automation_condition_sensor`` is STOPPED by default; the project declares
:func:`automation_sensor` (RUNNING, every 10 s, STOPPED with ``ETL_AUTOMATION=off``).
"""

from __future__ import annotations

import dagster as dg

AC = dg.AutomationCondition

# Missing and not being made; not after its last run failed (that would retry every 10 s: a failed
# fill waits for its inputs to update, then eager() asks again); not while an input is missing
# (a sensor-driven extract that has not run yet) or being made.
FILL_MISSING = (
    AC.missing() & ~AC.in_progress() & ~AC.execution_failed()
    & ~AC.any_deps_missing() & ~AC.any_deps_in_progress()
).with_label("fill_missing")
# Dagster's any_deps_updated, counting only materializations made by a run: the extract sensors'
# "checked, no change" heartbeats are runless (etl_assets.automation.sensors.heartbeats) and must
# not rebuild anything. any_new_update_has_run_tags() without filters is true when one of the new
# materializations came from a run (a runless one has no run id).
# And only when the dependency's data version changed: an extract run that changed no row keeps its
# version (etl_assets.automation.versions); other assets get a new version on every run.
DEPS_UPDATED_BY_A_RUN = AC.any_deps_match(
    (AC.newly_updated() & AC.any_new_update_has_run_tags() & AC.data_version_changed()
     & ~AC.executed_with_root_target()
     ).with_label("newly_updated_by_a_run_without_root")
    | AC.will_be_requested()
).with_label("any_deps_updated")
EAGER = AC.eager().replace("any_deps_updated", DEPS_UPDATED_BY_A_RUN)
DOWNSTREAM = (EAGER & AC.all_deps_blocking_checks_passed()) | FILL_MISSING
DAILY = (EAGER & AC.all_deps_blocking_checks_passed()) | (FILL_MISSING & AC.in_latest_time_window())
SENSOR_NAME = "etl_automation_conditions"


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    from etl_assets.automation.sensors import default_status

    return dg.AutomationConditionSensorDefinition(
        name=SENSOR_NAME,
        target=dg.AssetSelection.all(),
        minimum_interval_seconds=10,
        default_status=default_status(),
        description="Evaluates the automation conditions of the project's assets every 10 s "
        "(cleaned tables and aggregates after their inputs; missing tables). docs/automation.md",
    )
