"""Retention on schedules: ``cdc prune`` and resolved dead letters.

- ``housekeeping_cdc_prune`` (daily, 03:10 UTC): for every captured source table, remove the
  change-log entries every consumer has applied (``etl_assets.cdc.capture.prune``, the same code as
  ``etl-assets cdc prune``; never an unapplied entry).
- ``housekeeping_dead_letter_retention`` (daily, 03:20 UTC): delete dead letters that were resolved
  (replayed or discarded) more than ``ETL_DLQ_RETENTION_DAYS`` days ago (default 30). Pending ones
  are kept whatever their age.
- ``housekeeping_stream_prune`` (daily, 03:30 UTC): forget the stream's processed event ids that can
  never be delivered again, processed more than ``ETL_STREAM_RETENTION_DAYS`` ago (default 7)
  (``etl_assets.stream.sink.prune_processed``).

The schedules are RUNNING by default. Their counts go to the op's output metadata and the log.
"""

# No `from __future__ import annotations`: Dagster inspects the op's context annotation at runtime.

import datetime as _dt
import os

import dagster as dg

from etl_assets.errors import ConfigError
from etl_assets.housekeeping.schedules import daily_schedule

DLQ_RETENTION_VAR = "ETL_DLQ_RETENTION_DAYS"
DEFAULT_DLQ_RETENTION_DAYS = 30
CDC_PRUNE_CRON = "10 3 * * *"
DLQ_RETENTION_CRON = "20 3 * * *"
STREAM_RETENTION_VAR = "ETL_STREAM_RETENTION_DAYS"
DEFAULT_STREAM_RETENTION_DAYS = 7
STREAM_PRUNE_CRON = "30 3 * * *"


def _days(var: str, default: float) -> _dt.timedelta:
    """A number of days from ``var``; a bad value is a one-line configuration error."""
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return _dt.timedelta(days=default)
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not days >= 0:
        raise ConfigError(f"{var}={raw!r} is not a number of days >= 0 (e.g. 30, or 0.5 for 12 hours).")
    return _dt.timedelta(days=days)


def dlq_retention() -> _dt.timedelta:
    """``ETL_DLQ_RETENTION_DAYS`` as a timedelta."""
    return _days(DLQ_RETENTION_VAR, DEFAULT_DLQ_RETENTION_DAYS)


def stream_retention() -> _dt.timedelta:
    """``ETL_STREAM_RETENTION_DAYS`` as a timedelta."""
    return _days(STREAM_RETENTION_VAR, DEFAULT_STREAM_RETENTION_DAYS)


@dg.op(
    name="prune_cdc_logs",
    required_resource_keys={"source"},
    description="Remove change-log entries every consumer has applied (etl-assets cdc prune).",
)
def prune_cdc_logs(context: dg.OpExecutionContext) -> dg.Output[int]:
    from etl_assets.cdc import capture

    removed = 0
    per_table: dict[str, int] = {}
    with context.resources.source.connect(autocommit=True) as conn:
        for cap in capture.list_captures(conn):
            result, _ = capture.prune(conn, cap.source)
            per_table[str(cap.source)] = result.removed
            removed += result.removed
            if result.through is None:
                context.log.info(f"{cap.source}: nothing pruned ({result.reason})")
            else:
                context.log.info(f"{cap.source}: removed {result.removed} applied entries "
                                 f"(through position {result.through})")
    return dg.Output(
        removed,
        metadata={
            "entries_removed": dg.MetadataValue.int(removed),
            "tables": dg.MetadataValue.int(len(per_table)),
            "per_table": dg.MetadataValue.json(per_table),
        },
    )


@dg.op(
    name="purge_resolved_dead_letters",
    required_resource_keys={"warehouse"},
    description=f"Delete dead letters resolved more than {DLQ_RETENTION_VAR} days ago (default "
    f"{DEFAULT_DLQ_RETENTION_DAYS}); pending ones are kept.",
)
def purge_resolved_dead_letters(context: dg.OpExecutionContext) -> dg.Output[int]:
    from etl_assets import dlq
    from etl_assets.console import duration_text, plural
    from etl_assets.migrations import ensure_migrated

    older_than = dlq_retention()
    with context.resources.warehouse.connect(autocommit=True) as conn:
        conn.autocommit = False
        ensure_migrated(conn)
        conn.commit()
        conn.autocommit = True
        removed = dlq.purge_resolved(conn, older_than)
    context.log.info(
        f"removed {plural(removed, 'dead letter')} resolved more than {duration_text(older_than)} ago"
    )
    return dg.Output(
        removed,
        metadata={
            "dead_letters_removed": dg.MetadataValue.int(removed),
            "retention_days": dg.MetadataValue.float(older_than.total_seconds() / 86400),
        },
    )


@dg.op(
    name="prune_processed_events",
    required_resource_keys={"source", "warehouse"},
    description=f"Forget processed stream event ids that cannot be delivered again, older than "
    f"{STREAM_RETENTION_VAR} days (default {DEFAULT_STREAM_RETENTION_DAYS}).",
)
def prune_processed_events(context: dg.OpExecutionContext) -> dg.Output[int]:
    from etl_assets.stream import sink

    older_than = stream_retention()
    with context.resources.source.connect(autocommit=True) as src, \
            context.resources.warehouse.connect(autocommit=True) as wh:
        result = sink.prune_processed(src, wh, older_than)
    bound = "no message queued" if result.below_event_id is None else f"below event {result.below_event_id}"
    context.log.info(f"removed {result.removed} processed event id(s) ({bound}, older than {older_than.days} "
                     f"day(s))")
    return dg.Output(
        result.removed,
        metadata={
            "processed_ids_removed": dg.MetadataValue.int(result.removed),
            "retention_days": dg.MetadataValue.float(older_than.total_seconds() / 86400),
        },
    )


@dg.job(name="housekeeping_cdc_prune", description="Prune applied change-log entries of every capture.")
def cdc_prune_job() -> None:
    prune_cdc_logs()


@dg.job(
    name="housekeeping_dead_letter_retention",
    description="Delete resolved dead letters older than the retention (ETL_DLQ_RETENTION_DAYS).",
)
def dead_letter_retention_job() -> None:
    purge_resolved_dead_letters()


@dg.job(
    name="housekeeping_stream_prune",
    description="Forget processed stream event ids that cannot come back (ETL_STREAM_RETENTION_DAYS).",
)
def stream_prune_job() -> None:
    prune_processed_events()


cdc_prune_schedule = daily_schedule(
    "housekeeping_cdc_prune_daily", cdc_prune_job, CDC_PRUNE_CRON,
    "Daily: etl-assets cdc prune on every captured table.",
)

dead_letter_retention_schedule = daily_schedule(
    "housekeeping_dead_letter_retention_daily", dead_letter_retention_job, DLQ_RETENTION_CRON,
    "Daily: delete resolved dead letters older than ETL_DLQ_RETENTION_DAYS (default 30).",
)


stream_prune_schedule = daily_schedule(
    "housekeeping_stream_prune_daily", stream_prune_job, STREAM_PRUNE_CRON,
    "Daily: forget processed stream event ids older than ETL_STREAM_RETENTION_DAYS (default 7).",
)


def build_defs() -> dg.Definitions:
    return dg.Definitions(
        jobs=[cdc_prune_job, dead_letter_retention_job, stream_prune_job],
        schedules=[cdc_prune_schedule, dead_letter_retention_schedule, stream_prune_schedule],
    )
