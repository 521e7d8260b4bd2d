"""Housekeeping the daemon does for the project: dead runs are marked failed and free their slots.

Dagster's run monitoring cannot check the health of runs started by the default run launcher (the
one ``dagster dev`` uses), so a run worker killed with SIGKILL would stay STARTED and keep its pool
slots until someone intervenes. ``etl-assets run`` cleans up at its start; this sensor does the same
every minute wherever a daemon runs (``etl-assets dev``, ``dagster dev``, ``dagster-daemon run``).
"""

from __future__ import annotations

import dagster as dg

from etl_assets.runner import cleanup_dead_runs, local_instance


@dg.sensor(
    name="etl_dead_run_cleanup",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks in-progress runs whose process is gone as failed and frees their pool slots.",
)
def dead_run_cleanup(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    cleaned = cleanup_dead_runs(context.instance, local_instance=local_instance())
    for run_id in cleaned:
        context.log.warning(f"marked run {run_id} failed: its process is gone (pool slots freed)")
    return dg.SkipReason(f"marked {len(cleaned)} dead run(s) failed" if cleaned else "no dead runs")

