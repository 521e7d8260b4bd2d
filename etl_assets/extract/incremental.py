"""``extract: incremental``: rows whose cursor is at or past the stored lower bound, upserted by key.

How no row is lost (README, "Declaring tables", has the user-facing version):

* One REPEATABLE READ snapshot of the source per run. Its upper bound ``max(cursor)`` is fixed when
  the extract starts; the rows read are ``lower <= cursor <= upper`` (inclusive, so rows sharing the
  boundary value are read again and the upsert finds them unchanged; the primary key deduplicates).
* Late commits. A transaction that is still open when the snapshot is taken may later commit rows
  whose cursor is *earlier* than ``upper`` (``updated_at = now()`` is its *start* time). Just before
  the snapshot we read the start time of the oldest transaction open in the source database
  (``pg_stat_activity.xact_start``) and the current time; the next run's lower bound is the earliest
  of ``upper``, that start time and that time, minus the optional ``lag``. Any transaction not yet
  visible to the snapshot started after that bound, so every row it stamps from its own clock
  (``now()``, ``clock_timestamp()``, a trigger) is at or past it. Cursors that the application
  stamps from another clock, or numeric cursors from a sequence, need ``lag`` (seconds or units).
* Rows with a NULL cursor cannot be placed before or after any mark: they are read on EVERY run
  (through the cursor's index: ``IS NULL``), upserted (so never duplicated), counted in the metadata
  as ``null_cursor_rows`` and warned about.
* Deletes at the source are not seen by this mode.

The stored state (``etl.state``) commits in the same transaction as the upserted rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.pipeline_config import TableSpec

from .common import (
    Connector,
    ExtractReport,
    load_frames,
    migrated,
    note_schema_changes,
    prepare_target,
    snapshot,
)
from .source import (
    SourceTable,
    copy_query_to_frame,
    cursor_index_warning,
    describe,
    iter_copy_frames,
    prepare_session,
    select_list,
)
from .state import load_state

KIND = "incremental"
TIME_BASES = ("timestamptz", "timestamp", "date")
NUMBER_BASES = ("smallint", "integer", "bigint", "numeric", "real", "double precision")


@dataclass(frozen=True)
class OpenTransactions:
    """What ``pg_stat_activity`` showed just before the snapshot."""

    observed_at: str  # the source's clock, text
    oldest_start: str | None  # the oldest open transaction's start, text; None when none is open
    hidden: int  # sessions whose details this role may not see
    default_timezone: str


def open_transactions(conn: psycopg.Connection) -> OpenTransactions:
    """Read outside (before) the snapshot: pg_stat_activity is not MVCC, and a transaction that
    commits between the snapshot and this read would otherwise be neither seen nor waited for."""
    row = conn.execute(
        """
        SELECT clock_timestamp()::text,
               (SELECT min(xact_start) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND xact_start IS NOT NULL
                   AND backend_type NOT IN ('autovacuum worker', 'autovacuum launcher'))::text,
               (SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND query = '<insufficient privilege>'),
               (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone')
        """
    ).fetchone()
    return OpenTransactions(row[0], row[1], int(row[2]), row[3])


def cursor_base(table: SourceTable, spec: TableSpec) -> tuple[str, str]:
    column = table.column(spec.cursor or "")
    return column.type_sql, column.pg_type.base


def extract_queries(table: SourceTable, spec: TableSpec, lower: str | None, upper: str | None
                    ) -> tuple[sql.Composed, sql.Composed, list[Any]]:
    """The high-water-mark query and the extract query (with its parameters).

    Both are answered from an index on the cursor column: ``max()`` by one backward index step, the
    range and ``IS NULL`` by index range scans.
    """
    ctype, _ = cursor_base(table, spec)
    cur = sql.Identifier(spec.cursor or "")
    typ = sql.SQL(ctype)
    hwm = sql.SQL("SELECT max({})::text FROM {}").format(cur, table.ref.ident)
    parts: list[sql.Composable] = []
    params: list[Any] = []
    cols = select_list(table)
    if upper is not None:
        if lower is not None:
            cond = sql.SQL("{c} >= %s::{t} AND {c} <= %s::{t}").format(c=cur, t=typ)
            params += [lower, upper]
        else:
            cond = sql.SQL("{c} <= %s::{t}").format(c=cur, t=typ)
            params.append(upper)
        parts.append(sql.SQL("SELECT {} FROM {} WHERE {}").format(cols, table.ref.ident, cond))
    parts.append(sql.SQL("SELECT {} FROM {} WHERE {} IS NULL").format(cols, table.ref.ident, cur))
    return hwm, sql.SQL(" UNION ALL ").join(parts), params


def next_lower_bound(conn: psycopg.Connection, ctype: str, base: str, upper: str, seen: OpenTransactions,
                     lag: float) -> str:
    """The next run's lower bound: see the module docstring."""
    typ = sql.SQL(ctype)
    if base in TIME_BASES:
        if base == "timestamptz":
            as_cursor = sql.SQL("%s::timestamptz")
            tz: tuple = ()
        else:
            as_cursor = sql.SQL("(%s::timestamptz AT TIME ZONE %s)")
            tz = (seen.default_timezone,)
        query = sql.SQL("SELECT (least(%s::{t}, {a}, {a}) - make_interval(secs => %s))::{t}::text").format(
            t=typ, a=as_cursor)
        params = (upper, seen.oldest_start, *tz, seen.observed_at, *tz, lag)
        return conn.execute(query, params).fetchone()[0]
    if base in NUMBER_BASES:
        if not lag:
            return upper
        query = sql.SQL("SELECT (%s::{t} - %s)::{t}::text").format(t=typ)
        return conn.execute(query, (upper, lag)).fetchone()[0]
    return upper


def lag_seconds(conn: psycopg.Connection, base: str, ctype: str, upper: str | None, tz: str) -> float | None:
    """Seconds between the source's clock at the snapshot and the newest cursor value loaded."""
    if upper is None or base not in TIME_BASES:
        return None
    if base == "timestamptz":
        q = sql.SQL("SELECT extract(epoch FROM now() - %s::timestamptz)::float8")
        params: tuple = (upper,)
    else:
        q = sql.SQL("SELECT extract(epoch FROM (now() AT TIME ZONE %s) - %s::{t}::timestamp)::float8").format(
            t=sql.SQL(ctype))
        params = (tz, upper)
    return conn.execute(q, params).fetchone()[0]


@dataclass
class IncrementalRead:
    table: SourceTable
    frame: Any
    state: dict[str, Any]
    report: ExtractReport
    lower: str | None
    upper: str | None


def read_increment(spec: TableSpec, src: psycopg.Connection, previous: dict[str, Any],
                   report: ExtractReport, *, to_frame: bool = True) -> IncrementalRead:
    """Read this run's rows (``to_frame``) and compute the state that will commit with them."""
    prepare_session(src)
    seen = open_transactions(src)
    with snapshot(src):
        table = describe(src, spec)
        missing_index = cursor_index_warning(src, spec)
        if missing_index:
            report.warnings.append(missing_index)
        ctype, base = cursor_base(table, spec)
        lower = previous.get("next_from")
        hwm, _, _ = extract_queries(table, spec, lower, None)
        upper = src.execute(hwm).fetchone()[0]
        _, query, params = extract_queries(table, spec, lower, upper)
        frame = copy_query_to_frame(src, query, params, table.names) if to_frame else None
        new_lower = lower if upper is None else next_lower_bound(src, ctype, base, upper, seen, spec.lag)
        lag = lag_seconds(src, base, ctype, upper, seen.default_timezone)
    if lag is not None and lag < 0:
        report.warnings.append(
            f"The newest {spec.cursor!r} of {spec.source} is {-lag:,.0f} s ahead of the source's clock "
            "(future-dated rows); the next lower bound is capped at the extract's time, so they cost a "
            "re-read per run but hide no other change."
        )
    report.lag_seconds = None if lag is None else max(0.0, lag)
    report.cursor_before = previous.get("cursor")
    report.cursor_after = upper if upper is not None else previous.get("cursor")
    if seen.hidden:
        report.warnings.append(
            f"{seen.hidden} session(s) in the source database are hidden from this role, so transactions "
            "they hold open cannot be waited for; grant it pg_read_all_stats, or set lag: for this table."
        )
    if base not in TIME_BASES and base not in NUMBER_BASES:
        report.warnings.append(
            f"Cursor {spec.cursor!r} has type {ctype}: late-committing transactions are only covered for "
            "timestamp, date and numeric cursors."
        )
    state = {
        "cursor": report.cursor_after,
        "next_from": new_lower,
        "cursor_type": ctype,
        "oldest_open_transaction": seen.oldest_start,
        "observed_at": seen.observed_at,
    }
    return IncrementalRead(table, frame, state, report, lower, upper)


def extract_incremental(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                        ) -> ExtractReport:
    """Stream the increment (bounded memory) into one upsert transaction that ends with the state."""
    report = ExtractReport(spec.target, spec.extract, spec.load)
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        previous = load_state(wh, spec.target, KIND)
        read = read_increment(spec, src, previous, report, to_frame=False)
        info = prepare_target(wh, spec, read.table)
        note_schema_changes(report, spec, info)
        _, query, params = extract_queries(read.table, spec, read.lower, read.upper)

        def frames() -> Iterator[Any]:
            for frame in iter_copy_frames(src, query, params, read.table.names):
                report.rows_read += frame.height
                report.null_cursor_rows += frame.get_column(spec.cursor or "").null_count()
                yield frame

        def state() -> tuple[str, dict[str, Any]]:
            read.state["rows_read"] = report.rows_read
            return KIND, read.state

        # A snapshot bounded by the same upper value as the bounds above: rows committed since are
        # read at most once more (they lie at or past the next lower bound anyway).
        with snapshot(src):
            load_frames(wh, spec, frames(), info, report, state, run_id)
    if report.null_cursor_rows:
        report.warnings.append(
            f"{report.null_cursor_rows} row(s) of {spec.source} have a NULL {spec.cursor!r}; they are "
            "read and upserted on every run (never dropped): give them a cursor value to stop that."
        )
    return report.finish()
