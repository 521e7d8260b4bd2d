"""Schedules for ``full`` and ``chunked`` tables (and any table declared ``automation: {cron: ...}``):
one job and one schedule per distinct cron expression, in UTC.

A full extract has no cheap change probe (reading the table is the probe), so it runs on a clock:
daily at 02:00 UTC unless the declaration says otherwise. Runs go through the run queue like every
daemon-launched run, and their steps through the ``warehouse`` pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from etl_assets.automation.sensors import AUTOMATION_TAG, asset_key, automation_enabled, modes_label
from etl_assets.pipeline_config import TableSpec


def groups(specs: Sequence[TableSpec]) -> dict[str, list[TableSpec]]:
    out: dict[str, list[TableSpec]] = {}
    for spec in specs:
        if spec.trigger.kind == "schedule":
            out.setdefault(spec.trigger.cron or "", []).append(spec)
    return out


def build_schedule(cron: str, specs: Sequence[TableSpec]
                   ) -> tuple[dg.ScheduleDefinition, dg.UnresolvedAssetJobDefinition]:
    """The job ``extract_<modes>_<when>`` (e.g. ``extract_full_daily_0200``) and its schedule."""
    specs = list(specs)
    label = f"{modes_label(specs)}_{specs[0].trigger.label}"
    name = f"extract_{label}"
    job = dg.define_asset_job(
        name=name,
        selection=dg.AssetSelection.assets(*[asset_key(s) for s in specs]),
        description=f"Extracts of {', '.join(str(s.source) for s in specs)} on the schedule "
        f"'{cron}' (UTC).",
        tags={AUTOMATION_TAG: f"{name}_schedule"},
    )
    schedule = dg.ScheduleDefinition(
        name=f"{name}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=(dg.DefaultScheduleStatus.RUNNING if automation_enabled()
                        else dg.DefaultScheduleStatus.STOPPED),
        description=f"Runs {name} at '{cron}' UTC.",
    )
    return schedule, job
