"""Pipeline run metrics in ``etl.run_metrics`` (migration 0050).

Who writes what, and why three writers:

- **During the run, per asset** (:data:`record_step_success` / :data:`record_step_failure`): a
  success and a failure hook attached to every asset (``etl_assets.quality.defs.apply_quality``)
  write one row per materialized asset (or per asset of a failed step) as the step ends. Hooks run
  inside the run process, so ``etl-assets run`` (no daemon) records them too. Start time, records
  processed and records failed come from the step's own events in the instance (the step-start
  event, and the materialization's metadata such as ``rows_in`` / ``rows_read`` /
  ``dagster/row_count`` and ``dead_letters`` / ``rejected_rows``).
- **After a failed or canceled run** (:func:`record_run`): a run-level row (``asset IS NULL``) with
  the run's error, and a row for every planned asset that has none yet (``skipped`` when the run
  failed, ``canceled`` when it was canceled; ``failed`` when its step failed but no hook could say
  so, e.g. after a SIGKILL). The run-status sensors call it under the daemon; a headless runner
  calls it right after its run.
- Every write is an idempotent upsert on ``(run_id, asset, partition)``, so hooks, sensor and runner
  may all report the same run.

A hook never fails the run: an error while recording is logged as a warning.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg
import psycopg
from dagster._core.events import DagsterEventType
from psycopg import sql

from etl_assets.errors import ConfigError
from etl_assets.migrations import ensure_migrated
from etl_assets.settings import redact_environment

TABLE = sql.Identifier("etl", "run_metrics")
PROCESSED_KEYS = ("rows_in", "rows_read", "input_rows", "rows_written", "dagster/row_count")
FAILED_KEYS = ("records_failed", "dead_letters", "rejected_rows", "rows_failed")
MAX_ERROR_CHARS = 2000
_COLUMNS = (
    "job",
    "run_id",
    "asset",
    "partition",
    "step_key",
    "started_at",
    "ended_at",
    "duration_seconds",
    "status",
    "attempts",
    "records_processed",
    "records_failed",
    "error",
    "recorded_by",
)


@dataclass
class MetricRow:
    job: str
    run_id: str
    asset: str | None
    partition: str | None
    status: str
    recorded_by: str
    step_key: str | None = None
    started_at: _dt.datetime | None = None
    ended_at: _dt.datetime | None = None
    attempts: int = 1
    records_processed: int | None = None
    records_failed: int | None = None
    error: str | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, (self.ended_at - self.started_at).total_seconds())


def write_rows(conn: psycopg.Connection, rows: Sequence[MetricRow], *, overwrite: bool = True) -> None:
    """Upsert rows in one transaction (``overwrite=False``: keep rows that already exist)."""
    if not rows:
        return
    ensure_migrated(conn)
    action = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                for c in _COLUMNS
                if c not in ("run_id", "asset", "partition")
            )
        )
        if overwrite
        else sql.SQL("DO NOTHING")
    )
    stmt = sql.SQL(
        "INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT ON CONSTRAINT run_metrics_one_row {action}"
    ).format(
        t=TABLE,
        cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(_COLUMNS)),
        action=action,
    )
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:  # a handful of rows per step: no bulk path needed
            error = row.error[:MAX_ERROR_CHARS] if row.error else None
            cur.execute(
                stmt,
                (
                    row.job,
                    row.run_id,
                    row.asset,
                    row.partition,
                    row.step_key,
                    row.started_at,
                    row.ended_at,
                    row.duration_seconds,
                    row.status,
                    row.attempts,
                    row.records_processed,
                    row.records_failed,
                    error,
                    row.recorded_by,
                ),
            )


# --------------------------------------------------------------------------------------------------
# In the run: hooks
# --------------------------------------------------------------------------------------------------


def _first_number(metadata: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    for key in keys:
        if key in metadata:
            value = getattr(metadata[key], "value", metadata[key])
            if isinstance(value, int | float) and not isinstance(value, bool):
                return int(value)
    return None


def _utc(timestamp: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(timestamp, tz=_dt.UTC)


def _step_events(instance: dg.DagsterInstance, run_id: str, step_key: str) -> list[Any]:
    types = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_RESTARTED,
        DagsterEventType.ASSET_MATERIALIZATION,
    }
    return [e for e in instance.all_logs(run_id, of_type=types) if e.step_key == step_key]


def _step_assets(context: dg.HookContext) -> list[str]:
    step = getattr(context, "_step_execution_context", None)
    try:
        keys = step.get_output_asset_keys() if step is not None else set()
    except Exception:
        keys = set()
    return sorted(k.to_user_string() for k in keys) or [context.op.name]


def _step_partition(context: dg.HookContext) -> str | None:
    step = getattr(context, "_step_execution_context", None)
    try:
        return step.partition_key if step is not None and step.has_partition_key else None
    except Exception:
        return None


def _attempts(context: dg.HookContext) -> int:
    step = getattr(context, "_step_execution_context", None)
    try:
        return int(step.previous_attempt_count) + 1 if step is not None else 1
    except Exception:
        return 1


def rows_for_step(context: dg.HookContext, status: str) -> list[MetricRow]:
    """The metric rows of the step the hook fires for (one per materialized or planned asset)."""
    events = _step_events(context.instance, context.run_id, context.step_key)
    starts = [e.timestamp for e in events if e.dagster_event_type != DagsterEventType.ASSET_MATERIALIZATION]
    started = _utc(min(starts)) if starts else None
    ended = _dt.datetime.now(_dt.UTC)
    common = dict(
        job=context.job_name,
        run_id=context.run_id,
        step_key=context.step_key,
        started_at=started,
        ended_at=ended,
        attempts=_attempts(context),
        recorded_by="hook",
    )
    rows: list[MetricRow] = []
    if status == "success":
        for entry in events:
            if entry.dagster_event_type != DagsterEventType.ASSET_MATERIALIZATION:
                continue
            mat = entry.asset_materialization
            meta = mat.metadata if mat is not None else {}
            rows.append(
                MetricRow(
                    asset=mat.asset_key.to_user_string() if mat is not None else None,
                    partition=mat.partition if mat is not None else None,
                    status="success",
                    records_processed=_first_number(meta, PROCESSED_KEYS),
                    records_failed=_first_number(meta, FAILED_KEYS) or 0,
                    **common,
                )
            )
        if rows:
            return rows
    exc = context.op_exception
    # stored in etl.run_metrics: never a configured password, whatever the exception quotes
    error = None
    if exc is not None and status == "failed":
        error = redact_environment(f"{type(exc).__name__}: {exc}")
    partition = _step_partition(context)
    return [
        MetricRow(asset=a, partition=partition, status=status, error=error, **common)
        for a in _step_assets(context)
    ]


def _record_from_hook(context: dg.HookContext, status: str) -> None:
    try:
        rows = rows_for_step(context, status)
        with context.resources.warehouse.connect() as conn:
            write_rows(conn, rows)
    except Exception as exc:  # metrics must never fail the pipeline
        context.log.warning(
            f"run metrics not recorded for step {context.step_key}: {type(exc).__name__}: {exc}"
        )


@dg.success_hook(name="etl_run_metrics_success", required_resource_keys={"warehouse"})
def record_step_success(context: dg.HookContext) -> None:
    """Write the run-metrics rows of a step that succeeded (one per materialized asset)."""
    _record_from_hook(context, "success")


@dg.failure_hook(name="etl_run_metrics_failure", required_resource_keys={"warehouse"})
def record_step_failure(context: dg.HookContext) -> None:
    """Write the run-metrics rows of a step that failed, with the error."""
    _record_from_hook(context, "failed")


HOOKS = frozenset({record_step_success, record_step_failure})


# --------------------------------------------------------------------------------------------------
# After the run: failed and canceled runs (sensor, headless runner)
# --------------------------------------------------------------------------------------------------


def _root_message(err: Any) -> str:
    """The innermost cause of a serialized error: the user's exception, not Dagster's wrapper."""
    while getattr(err, "cause", None) is not None:
        err = err.cause
    text = (getattr(err, "message", "") or "").strip()
    return text.splitlines()[0] if text else ""


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The root causes of the failed steps (or the run failure's message when no step failed)."""
    steps: list[str] = []
    run_level: list[str] = []
    for entry in instance.all_logs(
        run_id,
        of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED},
    ):
        data = getattr(entry.dagster_event, "event_specific_data", None)
        err = getattr(data, "error", None)
        text = _root_message(err) if err is not None else (entry.user_message or "").strip()
        if not text:
            continue
        if entry.step_key:
            steps.append(f"{entry.step_key}: {text}")
        else:
            run_level.append(text.splitlines()[0])
    return "; ".join(dict.fromkeys(steps or run_level)) or None


def rows_for_run(instance: dg.DagsterInstance, run: dg.DagsterRun, recorded_by: str) -> list[MetricRow]:
    """A run-level row for a failed/canceled run, and a row for each planned asset without one."""
    status = {dg.DagsterRunStatus.FAILURE: "failed", dg.DagsterRunStatus.CANCELED: "canceled"}.get(
        run.status, "success" if run.status == dg.DagsterRunStatus.SUCCESS else "failed"
    )
    record = instance.get_run_record_by_id(run.run_id)
    started = _utc(record.start_time) if record and record.start_time else None
    ended = _utc(record.end_time) if record and record.end_time else _dt.datetime.now(_dt.UTC)
    error = _run_error(instance, run.run_id)
    partition = run.tags.get("dagster/partition")
    run_row = MetricRow(
        job=run.job_name,
        run_id=run.run_id,
        asset=None,
        partition=partition,
        status=status,
        recorded_by=recorded_by,
        started_at=started,
        ended_at=ended,
        error=error,
    )
    rows = [run_row]
    planned: dict[tuple[str, str | None], str] = {}  # (asset, partition) -> status
    # A step that failed without a hook having said so (no ASSET_FAILED_TO_MATERIALIZE either, as
    # in-process execution emits none): its planned assets failed, they were not skipped.
    step_failures = instance.all_logs(run.run_id, of_type={DagsterEventType.STEP_FAILURE})
    failed_steps = {e.step_key for e in step_failures if e.step_key}
    for entry in instance.all_logs(run.run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION_PLANNED}):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if data is not None and getattr(data, "asset_key", None) is not None:
            planned[(data.asset_key.to_user_string(), data.partition or partition)] = (
                "canceled" if status == "canceled"
                else "failed" if entry.step_key in failed_steps else "skipped"
            )
    if not planned:
        for key in run.asset_selection or ():
            planned[(key.to_user_string(), partition)] = "canceled" if status == "canceled" else "skipped"
    for entry in instance.all_logs(run.run_id, of_type={DagsterEventType.ASSET_FAILED_TO_MATERIALIZE}):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        failure = getattr(data, "asset_materialization_failure", None)
        if failure is None:
            continue
        ident = (failure.asset_key.to_user_string(), failure.partition or partition)
        if failure.reason.value == "FAILED_TO_MATERIALIZE":
            planned[ident] = "failed"
        elif failure.reason.value == "RUN_TERMINATED":
            planned[ident] = "canceled"
        else:
            planned.setdefault(ident, "skipped")
    for entry in instance.all_logs(run.run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION}):
        mat = entry.asset_materialization
        if mat is not None:
            planned.pop((mat.asset_key.to_user_string(), mat.partition or partition), None)
    for (name, part), asset_status in sorted(planned.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        # the run's row for each asset it did not materialize (same job, times and recorder)
        rows.append(
            replace(
                run_row,
                asset=name,
                partition=part,
                status=asset_status,
                error=error if asset_status == "failed" else None,
            )
        )
    return rows


def record_run(
    conn: psycopg.Connection, instance: dg.DagsterInstance, run: dg.DagsterRun, recorded_by: str = "runner"
) -> list[MetricRow]:
    """Record a finished run's run-level and missing per-asset rows; rows already present are kept."""
    rows = rows_for_run(instance, run, recorded_by)
    write_rows(conn, rows, overwrite=False)
    return rows


def record_run_by_id(instance: dg.DagsterInstance, run_id: str, recorded_by: str = "runner") -> int:
    """For a headless runner: record a finished run that did not succeed (never raises).

    Connects with ``ETL_WAREHOUSE_DSN``; returns the number of rows written (0 on success runs or
    when recording failed, which is reported on stderr rather than failing the command).
    """
    import os
    import sys

    from etl_assets.db import connect
    from etl_assets.settings import WAREHOUSE_DSN_VAR

    try:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status == dg.DagsterRunStatus.SUCCESS:
            return 0
        with connect(os.environ[WAREHOUSE_DSN_VAR], role="warehouse", env_var=WAREHOUSE_DSN_VAR) as conn:
            return len(record_run(conn, instance, run, recorded_by))
    except Exception as exc:  # metrics must never turn a run's outcome into a crash
        print(
            f"etl-assets: run metrics for run {run_id} not recorded: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 0


def _sensor_record(context: dg.RunStatusSensorContext, warehouse: Any) -> dg.SkipReason:
    with warehouse.connect() as conn:
        rows = record_run(conn, context.instance, context.dagster_run, recorded_by="sensor")
    return dg.SkipReason(f"recorded {len(rows)} run-metrics row(s) for run {context.dagster_run.run_id}")


def build_run_status_sensors() -> list[dg.RunStatusSensorDefinition]:
    """Sensors (daemon) that record failed and canceled runs of every job in this code location."""

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.FAILURE,
        name="etl_run_metrics_failed_runs",
        description="Records every failed run in etl.run_metrics (the daemon must run).",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
    def failed_runs(context: dg.RunStatusSensorContext, warehouse: dg.ResourceParam[Any]):
        return _sensor_record(context, warehouse)

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.CANCELED,
        name="etl_run_metrics_canceled_runs",
        description="Records every canceled run in etl.run_metrics (the daemon must run).",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
    )
    def canceled_runs(context: dg.RunStatusSensorContext, warehouse: dg.ResourceParam[Any]):
        return _sensor_record(context, warehouse)

    return [failed_runs, canceled_runs]


# --------------------------------------------------------------------------------------------------
# Reading: success rate and duration per asset
# --------------------------------------------------------------------------------------------------


@dataclass
class AssetSummary:
    asset: str
    runs: int
    successes: int
    failures: int
    success_rate: float
    avg_seconds: float | None
    p95_seconds: float | None
    max_seconds: float | None
    records_processed: int
    records_failed: int
    last_status: str
    last_started: _dt.datetime | None


def parse_window(text: str) -> _dt.timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` -> a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text or "")
    if not match:
        raise ConfigError(
            f"Window {text!r} is not understood; use a number and a unit m, h, d or w, e.g. 7d."
        )
    n, unit = int(match.group(1)), match.group(2)
    return {
        "m": _dt.timedelta(minutes=n),
        "h": _dt.timedelta(hours=n),
        "d": _dt.timedelta(days=n),
        "w": _dt.timedelta(weeks=n),
    }[unit]


def summarize(
    conn: psycopg.Connection, window: _dt.timedelta, asset: str | None = None
) -> list[AssetSummary]:
    """Per asset over the window: runs, success rate (skipped rows excluded), durations, records."""
    ensure_migrated(conn)
    rows = conn.execute(
        """SELECT asset, count(*), count(*) FILTER (WHERE status = 'success'),
                  count(*) FILTER (WHERE status IN ('failed', 'canceled')),
                  avg(duration_seconds), percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds),
                  max(duration_seconds), coalesce(sum(records_processed), 0),
                  coalesce(sum(records_failed), 0),
                  (array_agg(status ORDER BY coalesce(started_at, recorded_at) DESC))[1],
                  max(started_at)
           FROM etl.run_metrics
           WHERE asset IS NOT NULL AND status <> 'skipped'
             AND coalesce(started_at, recorded_at) >= now() - %s::interval
             AND (%s::text IS NULL OR asset = %s::text)
           GROUP BY asset ORDER BY asset""",
        (window, asset, asset),
    ).fetchall()
    return [
        AssetSummary(
            asset=r[0],
            runs=r[1],
            successes=r[2],
            failures=r[3],
            success_rate=(r[2] / r[1]) if r[1] else 0.0,
            avg_seconds=r[4],
            p95_seconds=r[5],
            max_seconds=r[6],
            records_processed=int(r[7]),
            records_failed=int(r[8]),
            last_status=r[9],
            last_started=r[10],
        )
        for r in rows
    ]


def run_outcomes(conn: psycopg.Connection, window: _dt.timedelta) -> dict[str, int]:
    """Failed and canceled runs in the window (their run-level rows), by status."""
    ensure_migrated(conn)
    rows = conn.execute(
        """SELECT status, count(*) FROM etl.run_metrics
           WHERE asset IS NULL AND coalesce(started_at, recorded_at) >= now() - %s::interval
           GROUP BY status""",
        (window,),
    ).fetchall()
    return {status: int(n) for status, n in rows}


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def summary_markdown(summaries: Sequence[AssetSummary], window: _dt.timedelta) -> str:
    from etl_assets.console import duration_text

    lines = [
        f"Run metrics over the last {duration_text(window)} (etl.run_metrics)",
        "",
        "| asset | runs | success rate | failures | avg s | p95 s | max s | records | failed records "
        "| last |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.asset} | {s.runs} | {s.success_rate:.1%} | {s.failures} | {_secs(s.avg_seconds)} | "
            f"{_secs(s.p95_seconds)} | {_secs(s.max_seconds)} | {s.records_processed} | {s.records_failed} | "
            f"{s.last_status} |"
        )
    if not summaries:
        lines.append("| (no runs recorded in this window) | | | | | | | | | |")
    return "\n".join(lines)
