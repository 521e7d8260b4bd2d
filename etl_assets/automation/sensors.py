"""Sensors that start extracts when their source moved: one sensor per distinct interval.

Each tick probes every table of its group (``etl_assets.automation.probes``: one index step per
table), then makes at most ONE run request covering every extract whose source moved, so a run's
fixed cost (seconds of Dagster start-up) is paid once per tick, not once per table.

Not requested on this tick:

* extracts with a run queued or in progress (any run of the instance whose asset selection holds
  them: automated, ``etl-assets run`` or the UI);
* extracts whose last automated run failed, until a back-off has passed (the interval, doubled per
  consecutive failure, at most 15 minutes): a broken source is retried, not hammered.

The run key is built from the targets, their stored state, the probed values and the id of the
last finished automated run of each target. So the same change is never requested twice (also after
a daemon restart: the key is rebuilt from the databases and the instance, not from the sensor's
cursor), while a failed run — whose key Dagster would skip forever — is retried under a new key, and
so is a run that finished without moving the state (a change log held back by an old transaction).

Tables whose source did not move stay fresh: see :func:`heartbeats`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_assets.automation.probes import (
    Probe,
    probe_cdc,
    probe_incremental,
    stored_states,
)
from etl_assets.automation.versions import DATA_VERSION_TAG, latest_data_version
from etl_assets.db import PostgresResource
from etl_assets.pipeline_config import TableSpec
from etl_assets.resources import source_key

AUTOMATION_TAG = "etl/automation"
# The run queue starts higher priorities first: an extract carrying a source change goes ahead of the
# recompute runs other sensors queue (etl_assets.automation.partitions), so a burst of those does not
# hold the change back.
PRIORITY_TAG = "dagster/priority"
EXTRACT_PRIORITY = "1"
AUTOMATION_VAR = "ETL_AUTOMATION"
HEARTBEAT_TAG = "etl/heartbeat"
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
MAX_BACKOFF = 900.0
HISTORY = 50  # automated runs read per tick to find each target's last run


def automation_enabled() -> bool:
    """``ETL_AUTOMATION=off`` (or 0, false, no) starts every extract sensor, schedule and the
    automation-condition sensor STOPPED; housekeeping sensors are not affected."""
    return os.environ.get(AUTOMATION_VAR, "on").strip().lower() not in ("off", "0", "false", "no")


def default_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automation_enabled() else dg.DefaultSensorStatus.STOPPED


def asset_key(spec: TableSpec) -> dg.AssetKey:
    return dg.AssetKey(spec.asset_key_path)


@dataclass(frozen=True)
class LastRun:
    """A target's last finished automated run and how many automated runs in a row failed."""

    run_id: str
    status: dg.DagsterRunStatus
    ended: float | None
    failures: int


def _selection(run: dg.DagsterRun) -> set[dg.AssetKey]:
    return set(run.asset_selection or ())


def busy_keys(instance: dg.DagsterInstance, keys: set[dg.AssetKey]) -> dict[dg.AssetKey, str]:
    """Keys of ``keys`` that a queued or in-progress run of the instance covers -> that run's id."""
    busy: dict[dg.AssetKey, str] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS), limit=200):
        for key in _selection(run) & keys:
            busy.setdefault(key, run.run_id)
    return busy


def last_runs(instance: dg.DagsterInstance, sensor_name: str, keys: set[dg.AssetKey]
              ) -> dict[dg.AssetKey, LastRun]:
    """Each key's last finished run launched by ``sensor_name`` (newest first in the instance)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={AUTOMATION_TAG: sensor_name}), limit=HISTORY)
    finished = [r for r in runs if r.status in FINISHED]
    records = {
        rec.dagster_run.run_id: rec
        for rec in instance.get_run_records(
            filters=dg.RunsFilter(run_ids=[r.run_id for r in finished])
        )
    } if finished else {}
    out: dict[dg.AssetKey, LastRun] = {}
    for key in keys:
        mine = [r for r in finished if key in _selection(r)]
        if not mine:
            continue
        failures = 0
        for run in mine:
            if run.status not in FAILED:
                break
            failures += 1
        rec = records.get(mine[0].run_id)
        out[key] = LastRun(mine[0].run_id, mine[0].status, rec.end_time if rec else None, failures)
    return out


def backoff_seconds(interval: float, failures: int) -> float:
    return min(MAX_BACKOFF, interval * 2 ** max(0, failures - 1)) if failures else 0.0


def run_key(sensor_name: str, moved: Sequence[Probe], last: dict[str, str | None]) -> str:
    """Targets + stored state and probed value (the probe's fingerprint) + last finished run."""
    parts = sorted((p.target, p.fingerprint, last.get(p.target)) for p in moved)
    digest = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:20]
    return f"{sensor_name}:{digest}"


def probe_all(specs: Sequence[TableSpec], source: Any, warehouse: Any) -> list[Probe]:
    """Probe each table in its own source: one warehouse read for every stored state, one connection
    per source. ``source``: one resource for every table, or a function of the table giving its own
    (tables of several named sources in one sensor)."""
    targets = [str(s.target) for s in specs]
    with warehouse.connect(autocommit=True) as wh:
        states = stored_states(wh, targets)
    resolve = source if callable(source) and not hasattr(source, "connect") else (lambda _spec: source)
    by_source: dict[int, tuple[Any, list[TableSpec]]] = {}
    for spec in specs:
        resource = resolve(spec)
        by_source.setdefault(id(resource), (resource, []))[1].append(spec)
    found: dict[str, Probe] = {}
    for resource, group in by_source.values():
        with resource.connect(autocommit=True) as src:
            for spec in group:
                stored = states.get(str(spec.target))
                if spec.extract == "cdc":
                    found[str(spec.target)] = probe_cdc(src, spec, stored)
                else:
                    found[str(spec.target)] = probe_incremental(src, spec, stored)
    return [found[str(spec.target)] for spec in specs]


def evaluate(context: dg.SensorEvaluationContext, sensor_name: str, interval: float,
             specs: Sequence[TableSpec], source: Any, warehouse: Any) -> dg.SensorResult:
    """One tick (see module docstring). ``source``: as for :func:`probe_all`."""
    by_target = {str(s.target): s for s in specs}
    probes = probe_all(specs, source, warehouse)
    for probe in probes:
        for warning in probe.warnings:
            context.log.warning(warning)
    moved = [p for p in probes if p.moved]
    unchanged = [p for p in probes if not p.moved]
    keys = {asset_key(by_target[p.target]) for p in moved}
    busy = busy_keys(context.instance, keys)
    last = last_runs(context.instance, sensor_name, keys)
    now = dt.datetime.now(dt.UTC).timestamp()
    notes: list[str] = []
    wanted: list[Probe] = []
    for probe in moved:
        key = asset_key(by_target[probe.target])
        if key in busy:
            notes.append(f"{probe.target}: moved, but run {busy[key]} is queued or in progress")
            continue
        prev = last.get(key)
        if prev and prev.failures:
            wait = backoff_seconds(interval, prev.failures)
            if prev.ended is not None and now - prev.ended < wait:
                notes.append(f"{probe.target}: moved, last {prev.failures} automated run(s) failed; "
                             f"retrying {wait - (now - prev.ended):.0f} s from now")
                continue
        wanted.append(probe)
    events = heartbeats(context.instance, [(by_target[p.target], p) for p in unchanged], sensor_name, now)
    seen = "; ".join([p.seen for p in probes] + notes)
    if not wanted:
        context.log.info(seen)
        return dg.SensorResult(skip_reason=dg.SkipReason(seen or "no tables"), asset_events=events)
    last_ids = {
        p.target: (last[k].run_id if (k := asset_key(by_target[p.target])) in last else None) for p in wanted
    }
    key = run_key(sensor_name, wanted, last_ids)
    context.log.info(f"requesting {key}: {seen}")
    from etl_assets.celery_executor import one_table_run_config

    request = dg.RunRequest(
        run_key=key,
        asset_selection=[asset_key(by_target[p.target]) for p in wanted],
        tags={AUTOMATION_TAG: sensor_name, PRIORITY_TAG: EXTRACT_PRIORITY},
        # one table: its steps in the run's process; several: a process per step, side by side
        run_config=one_table_run_config() if len(wanted) == 1 else {},
    )
    return dg.SensorResult(run_requests=[request], asset_events=events)


def heartbeat_after(spec: TableSpec) -> float | None:
    """Seconds after its last materialization at which an unchanged table gets a heartbeat: half its
    WARN window (else half its FAIL window); None without freshness windows."""
    windows = spec.freshness_windows
    if windows is None:
        return None
    return (windows.warn or windows.fail) / 2


def heartbeats(instance: dg.DagsterInstance, unchanged: Sequence[tuple[TableSpec, Probe]], sensor_name: str,
               now: float) -> list[dg.AssetMaterialization]:
    """"Checked, no change", recorded so that freshness reflects it.

    Dagster 1.13 evaluates a ``FreshnessPolicy.time_window`` on the asset's last *materialization*
    only (``TimeWindowFreshnessPolicyEvaluator`` reads ``asset_entry.last_materialization``;
    observations are not counted). So a table whose source did not move gets a runless
    ``AssetMaterialization`` (the daemon reports a sensor's asset events through
    ``report_runless_asset_event``) once it is half-way to its WARN window, carrying what the probe
    saw. The downstream automation conditions ignore materializations that no run made
    (``etl_assets.automation.conditions``), so a heartbeat never rebuilds a cleaned table.
    """
    events = []
    for spec, probe in unchanged:
        after = heartbeat_after(spec)
        if after is None:
            continue
        key = asset_key(spec)
        latest = instance.get_latest_materialization_event(key)
        if latest is None or now - latest.timestamp < after:
            continue  # never loaded (nothing to vouch for), or recent enough
        tags = {HEARTBEAT_TAG: "true"}
        version = latest_data_version(instance, key)
        if version:
            tags[DATA_VERSION_TAG] = version  # the data did not change: neither does its version
        events.append(dg.AssetMaterialization(
            asset_key=key,
            description="checked, no change",
            metadata={"checked": "no change", "seen": probe.seen, "sensor": sensor_name},
            tags=tags,
        ))
    return events


def groups(specs: Sequence[TableSpec]) -> dict[float, list[TableSpec]]:
    """Sensor-driven tables by interval (one sensor and one job per distinct interval)."""
    out: dict[float, list[TableSpec]] = {}
    for spec in specs:
        if spec.trigger.kind == "sensor":
            out.setdefault(spec.trigger.interval or 0.0, []).append(spec)
    return dict(sorted(out.items()))


def modes_label(specs: Sequence[TableSpec]) -> str:
    return "_".join(sorted({s.extract for s in specs}))


def build_source_sensor(interval: float, specs: Sequence[TableSpec]
                        ) -> tuple[dg.SensorDefinition, dg.UnresolvedAssetJobDefinition]:
    """The job ``extract_<modes>_every_<interval>`` and its sensor ``watch_<modes>_every_<interval>``."""
    specs = list(specs)
    label = f"{modes_label(specs)}_{specs[0].trigger.label}"
    job = dg.define_asset_job(
        name=f"extract_{label}",
        selection=dg.AssetSelection.assets(*[asset_key(s) for s in specs]),
        description=f"Extracts of {', '.join(str(s.source) for s in specs)}, started by watch_{label} "
        "when their source moved (docs/automation.md).",
        tags={AUTOMATION_TAG: f"watch_{label}"},
    )
    name = f"watch_{label}"
    # Each table is probed in its own source (a named source's resource, or the default one).
    source_keys = {str(s.target): source_key(s) for s in specs}

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=max(1, int(interval)),
        default_status=default_status(),
        required_resource_keys={"warehouse", *source_keys.values()},
        description=f"Every {specs[0].trigger.label.removeprefix('every_')}: probes "
        f"{', '.join(str(s.source) for s in specs)} (newest cursor value / change-log position) and "
        "requests one run of the extracts whose source moved.",
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult:
        # Resources come from context.resources: the daemon passes none as arguments, a direct call
        # (tests) passes every required one.
        def source_of(spec: TableSpec) -> PostgresResource:
            return getattr(context.resources, source_keys[str(spec.target)])

        return evaluate(context, name, interval, specs, source_of, context.resources.warehouse)

    return _sensor, job
