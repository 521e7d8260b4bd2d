"""One CDC run of one table: snapshot on first use, then apply the next final window; with a report.

Order of a window run (see :mod:`etl_assets.cdc.reader` for why each step is needed):

1. take a horizon (sequence value, then a fresh transaction id) and wait briefly for older
   transactions to end;
2. open a REPEATABLE READ read-only transaction on the source; check the log still continues from
   the warehouse's position (same log id, not pruned past it, sequence not reset) — else fail loudly;
3. in one warehouse transaction: lock the target, check its state is the one read, stream the
   window's net effect into staging, delete touched keys, insert final rows, save the new position;
4. after that commit, record the applied position in the source (for prune) and prune if asked.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg

from etl_assets.cdc import apply, capture, reader, snapshot
from etl_assets.console import value_text
from etl_assets.db import connect
from etl_assets.errors import ConfigError
from etl_assets.extract.common import Connector
from etl_assets.extract.source import SourceTable, describe
from etl_assets.extract.state import load_state
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import table_schema
from etl_assets.pipeline_config import TableSpec
from etl_assets.settings import SOURCE_DSN_VAR, WAREHOUSE_DSN_VAR

WAIT_VAR = "ETL_CDC_WAIT_SECONDS"
DEFAULT_WAIT_SECONDS = 5.0
BATCH_VAR = "ETL_CDC_BATCH_CHANGES"
AUTO_PRUNE_VAR = "ETL_CDC_AUTO_PRUNE"
DEFAULT_BATCH_CHANGES = 500_000


@dataclass
class CdcReport:
    """What one run did, for people (Dagster metadata, the command line)."""

    source: str
    target: str
    mode: str  # "snapshot" or "apply"
    applied: dict[str, int] = field(default_factory=dict)  # changes per operation
    position_before: int | None = None
    position_after: int | None = None
    pending: int = 0
    lag_seconds: float = 0.0
    seconds: float = 0.0
    rows_snapshot: int = 0
    # Warehouse rows, named for what happened to them (the apply's internal delete-then-insert of an
    # updated key is an update, never a delete): see etl_assets.cdc.apply.ApplyCounts.
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0  # deletes, and rows removed by a TRUNCATE
    rows_replaced: int = 0  # snapshot: rows of the previous copy the snapshot replaced
    rows_total: int | None = None  # rows in the target after the run
    column_schema: dg.TableSchema | None = None
    held_back_by: str | None = None
    notes: list[str] = field(default_factory=list)
    notes_about_missing: bool = False
    batches: int = 0  # warehouse transactions this run committed

    @property
    def rows_written(self) -> int:
        """Rows inserted or rewritten in the warehouse."""
        return self.rows_inserted + self.rows_updated

    @property
    def changes(self) -> int:
        return sum(self.applied.values())

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "cdc_mode": self.mode,
            "source": self.source,
            "changes_applied": self.changes,
            **{f"changes_{op}": self.applied.get(op, 0) for op in ("insert", "update", "delete", "truncate")},
            "position_before": self.position_before if self.position_before is not None else -1,
            "position_after": self.position_after if self.position_after is not None else -1,
            "pending_changes": self.pending,
            "lag_seconds": round(self.lag_seconds, 3),
            "duration_seconds": round(self.seconds, 3),
            "rows_inserted": self.rows_inserted,
            "rows_updated": self.rows_updated,
            "rows_deleted": self.rows_deleted,
            "rows_written": self.rows_written,
            "batches": self.batches,
        }
        if self.mode == "snapshot":
            meta["snapshot_rows"] = self.rows_snapshot
            meta["rows_replaced"] = self.rows_replaced
        if self.column_schema is not None:
            meta["dagster/column_schema"] = self.column_schema
        if self.rows_total is not None:
            meta["dagster/row_count"] = self.rows_total
        if self.seconds > 0 and self.changes:
            meta["changes_per_second"] = round(self.changes / self.seconds, 1)
        if self.held_back_by:
            meta["held_back_by"] = self.held_back_by
        if self.notes:
            meta["notes"] = "; ".join(self.notes)
        return meta

    def summary(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.applied.items())) or "none"
        text = (
            f"{self.target}: {self.mode}; changes applied: {ops}; rows {self.rows_inserted} inserted, "
            f"{self.rows_updated} updated, {self.rows_deleted} deleted; position "
            f"{value_text(self.position_before, 'none')} -> {value_text(self.position_after, 'none')}; "
            f"pending {self.pending}; lag {self.lag_seconds:.1f} s; "
            f"{self.seconds:.2f} s"
        )
        if self.mode == "snapshot":
            text += f"; snapshot rows {self.rows_snapshot}"
        if self.held_back_by:
            text += f"; held back by {self.held_back_by}"
        return text


def auto_prune() -> bool:
    """Whether each run prunes the entries every consumer has applied (``ETL_CDC_AUTO_PRUNE``, default on;
    set it to 0 to keep applied entries, e.g. as an audit trail, and prune with ``etl-assets cdc prune``)."""
    return os.environ.get(AUTO_PRUNE_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def wait_seconds() -> float:
    raw = os.environ.get(WAIT_VAR)
    try:
        return float(raw) if raw else DEFAULT_WAIT_SECONDS
    except ValueError:
        return DEFAULT_WAIT_SECONDS


def consumer_name(wh: psycopg.Connection, target: TableRef) -> str:
    """Identifies this warehouse target among a log's consumers (no host, user or password)."""
    try:
        with wh.transaction():
            sysid = wh.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    except psycopg.Error:
        sysid = "?"
    dbname = wh.execute("SELECT current_database()").fetchone()[0]
    if not wh.autocommit:
        wh.commit()
    return f"{sysid}/{dbname}/{target}"


def dsn_connector(dsn: str, role: str, env_var: str) -> Connector:
    """A ``connect(autocommit=...)`` callable for a DSN (what ``PostgresResource.connect`` is)."""
    return functools.partial(connect, dsn, role=role, env_var=env_var)


def sync_table(
    spec: TableSpec,
    source: Connector | None = None,
    warehouse: Connector | None = None,
    *,
    run_id: str | None = None,
    wait: float | None = None,
    auto_install: bool = False,
    prune_after: bool | None = None,
) -> CdcReport:
    """Bring ``spec.target`` up to date with ``spec.source`` through its change log.

    ``auto_install`` (the shipped demo) installs capture when it is missing and takes a new snapshot
    when the log was recreated; otherwise both fail with the command that fixes them.
    """
    started = time.monotonic()
    source = source or dsn_connector(os.environ[SOURCE_DSN_VAR], "source", SOURCE_DSN_VAR)
    warehouse = warehouse or dsn_connector(os.environ[WAREHOUSE_DSN_VAR], "warehouse", WAREHOUSE_DSN_VAR)
    target = spec.target
    with source(autocommit=True) as src, warehouse(autocommit=False) as wh:
        state = load_state(wh, target, apply.KIND)
        table = describe(src, spec)
        notes: list[str] = []
        cap = capture.get_capture(src, spec.source)
        broken = cap is None or not capture.health(src, cap).intact
        if broken:
            if not auto_install:
                capture.require_capture(src, spec.source)  # raises with the command to run
            cap, _ = capture.install(src, spec.source, spec.primary_key or None)
            notes.append(f"capture installed on {spec.source} (log {cap.log_id})")
        assert cap is not None
        if spec.primary_key and set(spec.primary_key) != set(cap.key_columns):
            if not auto_install:
                raise ConfigError(
                    f"Capture on {spec.source} logs changes by key {list(cap.key_columns)}, but the "
                    f"declaration gives primary_key {list(spec.primary_key)}. Correct the declaration, or "
                    f"reinstall capture with the new key (`etl-assets cdc uninstall {spec.source}` then "
                    f"`etl-assets cdc install {spec.source}`) and `etl-assets reset {target}`."
                )
            capture.uninstall(src, spec.source)
            cap, _ = capture.install(src, spec.source, spec.primary_key)
            notes.append(f"capture reinstalled on {spec.source} with key {list(spec.primary_key)}")
        consumer = consumer_name(wh, target)
        if state and state.get("log_id") == cap.log_id:
            try:
                report = _apply_window(
                    src,
                    wh,
                    cap,
                    table,
                    spec,
                    state,
                    consumer,
                    run_id,
                    wait_seconds() if wait is None else wait,
                )
            except reader.ChangeLogGap as exc:
                if not auto_install:
                    raise
                notes.append(f"new snapshot: {exc}")
                report = _snapshot(src, wh, cap, table, spec, consumer, run_id)
        else:
            if state and not auto_install:
                reader.check_continuity(
                    src, cap, state.get("log_id", "?"), int(state.get("position", 0)), str(target)
                )
            if state:
                notes.append(f"new snapshot: the change log of {spec.source} was recreated")
            report = _snapshot(src, wh, cap, table, spec, consumer, run_id)
        report.notes = notes + report.notes
        report.column_schema = table_schema(wh, target)
        wh.commit()
        if auto_prune() if prune_after is None else prune_after:
            try:
                result, _ = capture.prune(src, spec.source)
                if result.removed:
                    report.notes.append(f"pruned {result.removed} applied log entries")
            except psycopg.Error as exc:  # pruning is housekeeping: report, never fail the load
                report.notes.append(f"prune skipped: {exc.diag.message_primary or exc}")
    report.seconds = time.monotonic() - started
    return report


def _snapshot(
    src: psycopg.Connection,
    wh: psycopg.Connection,
    cap: capture.Capture,
    table: SourceTable,
    spec: TableSpec,
    consumer: str,
    run_id: str | None,
) -> CdcReport:
    result = snapshot.take_snapshot(src, wh, cap, table, spec.target, spec.primary_key, consumer, run_id)
    pending, lag = reader.pending_after(src, cap, result.position)
    return CdcReport(
        str(spec.source),
        str(spec.target),
        "snapshot",
        {},
        None,
        result.position,
        pending,
        lag,
        rows_snapshot=result.rows,
        rows_inserted=result.rows,
        rows_replaced=result.replaced,
        rows_total=result.rows,
    )


def batch_changes() -> int:
    raw = os.environ.get(BATCH_VAR)
    try:
        return max(1, int(raw)) if raw else DEFAULT_BATCH_CHANGES
    except ValueError:
        return DEFAULT_BATCH_CHANGES


def _apply_window(
    src: psycopg.Connection,
    wh: psycopg.Connection,
    cap: capture.Capture,
    table: SourceTable,
    spec: TableSpec,
    state: dict[str, Any],
    consumer: str,
    run_id: str | None,
    wait: float,
) -> CdcReport:
    """Apply everything final, in batches of about :func:`batch_changes` log entries, each batch
    one warehouse transaction with its position (a crash loses at most the batch in flight). A
    batch ends only between source transactions, so it may be larger by the rest of the last one
    (a single transaction larger than the batch size is applied in one batch)."""
    target = spec.target
    applied = int(state["position"])
    horizons = [reader.Horizon(int(p), int(x)) for p, x in state.get("horizons", [])]
    now = reader.take_horizon(src, cap)
    reader.wait_for_horizon(src, now, wait)
    report = CdcReport(str(spec.source), str(target), "apply", position_before=applied)
    foreign = reader.foreign_xids(src)  # before the read transaction's snapshot (see reader)
    with src.transaction():
        reader.begin_snapshot(src)
        fresh = capture.get_capture(src, spec.source)
        if fresh is None:
            capture.require_capture(src, spec.source)
        assert fresh is not None
        reader.check_continuity(src, fresh, state["log_id"], applied, str(target))
        candidates = [*horizons, now]
        bound = reader.safe_bound(src, applied, candidates, foreign)
        if bound < now.position:
            report.held_back_by = reader.describe_transaction(src, reader.blocker(src, now, foreign))
        while True:
            # Each batch ends at a clean cut: whole source transactions only (see reader).
            end, spanning = applied, None
            if applied < bound:
                limit = min(bound, reader.batch_end(src, fresh, applied, bound, batch_changes()))
                end, spanning = reader.whole_transactions_end(src, fresh, applied, limit, bound)
            state = _apply_batch(src, wh, fresh, table, spec, state, end, candidates, run_id, report)
            if end <= applied:
                if spanning is not None and report.held_back_by is None:
                    report.held_back_by = (
                        f"transaction {spanning} (committed; its changes continue past position {bound}, "
                        "beyond positions an open transaction still holds: it is applied whole later)"
                    )
                break
            applied = end
            if applied >= bound:
                break
        report.position_after = applied
        report.rows_total = state.get("rows")
        report.pending, report.lag_seconds = reader.pending_after(src, fresh, applied)
    if applied != int(report.position_before or 0):
        capture.register_consumer(src, fresh, consumer, str(target), applied)
    return report


def _apply_batch(
    src: psycopg.Connection,
    wh: psycopg.Connection,
    cap: capture.Capture,
    table: SourceTable,
    spec: TableSpec,
    state: dict[str, Any],
    end: int,
    candidates: list[reader.Horizon],
    run_id: str | None,
    report: CdcReport,
) -> dict[str, Any]:
    """One warehouse transaction: the entries ``(state.position, end]`` and the new position."""
    target = spec.target
    window = reader.Window(cap, int(state["position"]), end)
    if state.get("snapshot") and state.get("snapshot_max") is not None:
        window.exclude_snapshot = state["snapshot"]
        window.exclude_through = int(state["snapshot_max"])
    reader.describe_window(src, window)
    new_state = dict(state)
    new_state["position"] = end
    new_state["horizons"] = [[h.position, h.xid] for h in reader.keep_horizons(candidates, end)]
    if window.exclude_through is not None and end >= window.exclude_through:
        new_state["snapshot"] = None
        new_state["snapshot_max"] = None
    with wh.transaction():
        current = apply.lock_state(wh, target)
        apply.check_unchanged(current, state, target)
        if window.changes:
            shape = apply.ensure_target(wh, target, table, spec.primary_key)
            counts = apply.apply_net_effect(
                src,
                wh,
                target,
                table,
                spec.primary_key,
                shape.columns,
                window,
                truncate_first=window.last_truncate is not None,
            )
            report.rows_inserted += counts.inserted
            report.rows_updated += counts.updated
            report.rows_deleted += counts.removed
            if shape.added:
                report.notes.append(f"columns added: {', '.join(shape.added)}")
            if shape.missing_in_source and not report.notes_about_missing:
                report.notes_about_missing = True
                report.notes.append(
                    "columns no longer in the source (NULL in new rows): "
                    + ", ".join(shape.missing_in_source)
                )
            if "rows" in state:  # kept exactly: rows after = before - removed + written
                new_state["rows"] = int(state["rows"]) - counts.removed + counts.inserted
        if new_state != state:
            apply.save(wh, target, new_state, run_id)
            report.batches += 1
    for op, n in window.counts.items():
        report.applied[op] = report.applied.get(op, 0) + n
    return new_state
