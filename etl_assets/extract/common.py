"""What every extract mode shares: connections, the target's preparation, and the report.

The target is created from the SOURCE's column types (not from a frame's), so a warehouse copy
keeps ``numeric(12,2)``, ``timestamp with time zone``, arrays and so on exactly; later runs add new
source columns and keep columns the source dropped (their new rows get NULL, and the run warns).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from etl_assets.io.swap import build_and_swap
from etl_assets.io.tables import TableRef
from etl_assets.io.target import LOADED_AT, ensure_target, with_bookkeeping
from etl_assets.io.typemap import PgType
from etl_assets.io.writer import lock_target, table_schema
from etl_assets.pipeline_config import TableSpec

from .source import SourceTable
from .state import save_state

if TYPE_CHECKING:  # the transports build on this module
    from .transport import Transport

Connector = Callable[..., AbstractContextManager[psycopg.Connection]]


@dataclass
class ExtractReport:
    """What one extract did; mirrored into Dagster metadata (never read back: etl.state is the truth)."""

    target: TableRef
    extract: str
    load: str
    path: str = "frame"  # "frame" or "copy" (the COPY-to-COPY fast path)
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    lag_seconds: float | None = None
    null_cursor_rows: int = 0
    lower_bound_held_by: str | None = None  # the session whose open transaction holds the bound back
    chunks: int = 0
    resumed_after: list[Any] | None = None
    table_rows: int | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    columns_added: list[str] = field(default_factory=list)
    column_schema: Any = None
    started: float = field(default_factory=time.perf_counter)
    lock_waited_seconds: float = 0.0  # waited for another run of this table (etl_assets/extract/runlock.py)
    lock_acquired_at: float | None = None  # time.time() when this run took the table's run lock
    lock_released_at: float | None = None  # time.time() just before it let go (after its last commit)
    source_name: str | None = None  # the named source read (None: the default source, no cap)
    source_waited_seconds: float = 0.0  # waited for a slot of the source (etl_assets/extract/sourcecap.py)
    source_acquired_at: float | None = None  # time.time() when this run took its source slot
    source_released_at: float | None = None  # time.time() just before it let the slot go

    def finish(self) -> ExtractReport:
        self.seconds = time.perf_counter() - self.started
        return self

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else float(self.rows_read)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "dagster/table_name": str(self.target),
            "extract": self.extract,
            "write_mode": self.load,
            "extract_path": self.path,
            "rows_read": self.rows_read,
            "rows_inserted": self.inserted,
            "rows_updated": self.updated,
            "rows_unchanged": self.unchanged,
            "rows_deleted": self.deleted,
            "duration_seconds": round(self.seconds, 4),
            "rows_per_second": round(self.rows_per_second, 1),
        }
        if self.table_rows is not None:
            meta["dagster/row_count"] = self.table_rows
        if self.column_schema is not None:
            meta["dagster/column_schema"] = self.column_schema
        if self.extract == "incremental":
            meta["cursor_before"] = self.cursor_before or "(none: first run)"
            meta["cursor_after"] = self.cursor_after or "(none)"
            meta["null_cursor_rows"] = self.null_cursor_rows
            if self.lag_seconds is not None:
                meta["lag_seconds"] = round(self.lag_seconds, 3)
            if self.lower_bound_held_by is not None:
                meta["lower_bound_held_by"] = self.lower_bound_held_by
        if self.extract == "chunked":
            meta["chunks"] = self.chunks
            meta["resumed_after_key"] = "(no)" if self.resumed_after is None else str(self.resumed_after)
        if self.source_name is not None:
            meta["source_name"] = self.source_name
        if self.source_waited_seconds >= 0.01:
            meta["source_wait_seconds"] = round(self.source_waited_seconds, 2)
        if self.lock_waited_seconds >= 0.01:
            meta["lock_wait_seconds"] = round(self.lock_waited_seconds, 2)
        if self.columns_added:
            meta["columns_added"] = ", ".join(self.columns_added)
        if self.warnings:
            meta["warnings"] = "\n".join(self.warnings)
        return meta


@contextmanager
def snapshot(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A read-only REPEATABLE READ transaction: every query inside sees one point in time."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn


@dataclass
class TargetInfo:
    created: bool
    types: dict[str, PgType]
    added: list[str]
    kept: list[str]  # target columns the source no longer has
    key_unique: bool = False  # the source guarantees unique keys (SourceTable.key_unique)


def target_columns(spec: TableSpec, table: SourceTable) -> dict[str, PgType]:
    """The target's columns: the source's (with their warehouse types), then the bookkeeping ones."""
    return with_bookkeeping({c.name: c.pg_type for c in table.columns},
                            (LOADED_AT,) if spec.load == "insert" else ())


def target_key(spec: TableSpec) -> tuple[str, ...]:
    """The target's primary key: the declared key, plus the snapshot time for snapshot history."""
    if not spec.primary_key:
        return ()
    return (*spec.primary_key, LOADED_AT) if spec.load == "insert" else spec.primary_key


def prepare_target(conn: psycopg.Connection, spec: TableSpec, table: SourceTable) -> TargetInfo:
    """Create the target with the source's types, or add the source's new columns to it and widen
    columns whose source type widened (:func:`etl_assets.io.target.ensure_target`).

    Runs in its own short transaction under the target's write lock; the data write that follows
    takes the same lock again.
    """
    with conn.transaction():
        lock_target(conn, spec.target)
        shape = ensure_target(conn, spec.target, target_columns(spec, table), target_key(spec))
    return TargetInfo(shape.created, shape.types, shape.added, shape.kept, key_unique=table.key_unique)


def note_schema_changes(report: ExtractReport, spec: TableSpec, info: TargetInfo) -> None:
    report.columns_added = list(info.added)
    if info.kept:
        report.warnings.append(
            f"Source table {spec.source} no longer has column(s) {', '.join(info.kept)}; they stay in "
            f"{spec.target} and new rows get NULL there."
        )


def count_rows(conn: psycopg.Connection, ref: TableRef) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ref.ident)).fetchone()[0]


ROWS_KEY = "table_rows"  # the target's exact row count, kept in the extract's etl.state row


def target_rows(conn: psycopg.Connection, ref: TableRef, kind: str, *, created: bool = False) -> int:
    """The target's exact row count before this write; call it under the target's lock, inside the
    write's transaction.

    The count is kept in the extract's state row and moved by inserted - deleted in the same
    transaction as the data, so it stays exact across crashes without a ``count(*)`` over the whole
    target on every run (on a large target that scan costs more than picking up a small increment).
    Only when no count is stored (first run, after ``etl-assets reset``, a state written before the
    count was kept, or by another extract kind) is the table counted once. ``created``: the target
    was created empty by this run (a stale state row of a dropped table must not be trusted).
    """
    if created:
        return 0
    row = conn.execute(
        "SELECT state -> %s FROM etl.state WHERE target = %s AND kind = %s", (ROWS_KEY, str(ref), kind)
    ).fetchone()
    if row is not None and isinstance(row[0], int) and not isinstance(row[0], bool):
        return row[0]
    return count_rows(conn, ref)


def load_whole(wh: psycopg.Connection, spec: TableSpec, move: Transport, query: sql.Composable,
               params: Sequence[Any], columns: Sequence[str], info: TargetInfo, report: ExtractReport,
               state: Callable[[], tuple[str, dict[str, Any]]], run_id: str | None,
               count_nulls: str | None = None) -> None:
    """Write the rows of ``query`` (one read, through the transport ``move``) into the target in the
    declared load mode, in ONE warehouse transaction that ends with the state.

    ``truncate_insert`` truncates and appends; ``swap`` fills a new table and swaps it in; ``insert``
    appends; ``upsert`` merges by key. ``state()`` is called after the rows are written, so it can
    include counts, and is saved inside the same transaction: data and state commit together or not
    at all. ``count_nulls``: a column whose NULLs the upsert counts (the incremental cursor).
    """
    target = spec.target
    with wh.transaction():
        lock_target(wh, target)
        before = 0 if spec.load == "swap" else target_rows(wh, target, spec.extract, created=info.created)
        if spec.load == "swap":
            def fill(into: TableRef) -> int:
                return move.append(query, params, into, columns)

            report.rows_read, report.deleted = build_and_swap(wh, target, fill, run_id=run_id)
        elif spec.load == "upsert":
            move.upsert(query, params, columns, report, run_id, before, count_nulls)
        else:
            if spec.load == "truncate_insert":
                report.deleted = before
                wh.execute(sql.SQL("TRUNCATE TABLE ONLY {}").format(target.ident))
            report.rows_read = move.append(query, params, target, columns)
        if spec.load != "upsert":
            report.inserted = report.rows_read
        # A full refresh holds exactly the rows it loaded; insert/upsert add theirs to the stored count.
        report.table_rows = report.inserted + (0 if spec.load in ("swap", "truncate_insert") else before)
        kind, value = state()
        save_state(wh, target, kind, {**value, ROWS_KEY: report.table_rows}, run_id)


def finish_target(wh: psycopg.Connection, report: ExtractReport) -> None:
    """Row count and column schema of the target for the materialization (the schema lets
    Dagster's column-schema change checks see the extracted table). The count normally comes from
    the write (``target_rows``); the table is counted here only when a path did not set it."""
    if report.table_rows is None:
        report.table_rows = count_rows(wh, report.target)
    report.column_schema = table_schema(wh, report.target)
