"""Data versions of extracted tables: a new one only when a run changed rows.

An automated extract often changes nothing: a late-commit window re-read, a CDC run held back by an
old transaction. Its materialization still counts as "updated" for Dagster, and ``eager()``
downstream would rebuild every cleaned table and aggregate for nothing. So each extract states its
data version: the run id when it inserted, updated or deleted rows (or took a snapshot), else the
previous version unchanged; the downstream conditions (``etl_assets.automation.conditions``) only
react to a dependency whose data version changed. The sensors' "checked, no change" heartbeats carry
the current version too.
"""

from __future__ import annotations

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"


def latest_data_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """The data version of ``key``'s latest materialization, if it has one."""
    record = instance.get_latest_data_version_record(key, is_source=False)
    if record is None:
        return None
    return (record.event_log_entry.tags or {}).get(DATA_VERSION_TAG)


def extract_data_version(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str, changed: bool
                         ) -> dg.DataVersion:
    """The version an extract's materialization states (see module docstring)."""
    if not changed:
        previous = latest_data_version(instance, key)
        if previous:
            return dg.DataVersion(previous)
    return dg.DataVersion(run_id)
