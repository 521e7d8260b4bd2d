"""Housekeeping the daemon does for the project, each piece in its own module:

- :mod:`.dead_runs`: runs whose process is gone are marked failed and free their pool slots (sensor,
  every minute);
- :mod:`.retention`: ``cdc prune`` and dead-letter retention (daily schedules);
- :mod:`.deletes`: delete detection for the tables whose extract cannot see deletes (daily
  schedule).

All of them are RUNNING by default (they keep the warehouse and the control tables tidy; they are
not "automation" that ``ETL_AUTOMATION=off`` switches off). docs/operations-daemon.md describes them.
"""

from __future__ import annotations

import dagster as dg

from etl_assets.housekeeping.dead_runs import dead_run_cleanup


def build_defs() -> dg.Definitions:
    from etl_assets.housekeeping import deletes, retention

    return dg.Definitions.merge(
        dg.Definitions(sensors=[dead_run_cleanup]),
        retention.build_defs(),
        deletes.build_defs(),
    )


__all__ = ["build_defs", "dead_run_cleanup"]
