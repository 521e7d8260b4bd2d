"""The one shape of a housekeeping schedule: daily in UTC, RUNNING from the start.

Housekeeping keeps the warehouse and the control tables tidy; it is not the automation that
``ETL_AUTOMATION=off`` stops, so its schedules run unless someone stops them in the UI.
"""

from __future__ import annotations

import dagster as dg


def daily_schedule(name: str, job: dg.JobDefinition, cron: str, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )
