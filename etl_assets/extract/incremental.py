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
  A ``timestamp``/``date`` cursor is stamped in the WRITER's session zone, which no other session
  can see: the start times are converted with ``cursor_time_zone``, and without it only a ``lag`` of
  26 h (any zone) is accepted. Refused as well, before anything is read: a hot-standby source
  without ``lag`` (its pg_stat_activity does not show the primary's transactions) and a role without
  ``pg_read_all_stats`` (it cannot see other roles' transactions) unless ``lag`` or
  ``late_commits: ignore`` is declared. A pending prepared transaction holds the bound where it was
  (its start time is recorded nowhere). The session whose transaction holds the bound back is
  reported with its pid. docs/late-commits.md has the user-facing version.
* Rows with a NULL cursor cannot be placed before or after any mark: they are read on EVERY run
  (through the cursor's index: ``IS NULL``), upserted (so never duplicated), counted in the metadata
  as ``null_cursor_rows`` and warned about.
* Deletes at the source are not seen by this mode.

The stored state (``etl.state``) commits in the same transaction as the upserted rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from etl_assets.errors import ConfigError
from etl_assets.migrations import migrated
from etl_assets.pipeline_config import ANY_ZONE_LAG_SECONDS, TableSpec

from .common import (
    Connector,
    ExtractReport,
    finish_target,
    load_whole,
    note_schema_changes,
    prepare_target,
    snapshot,
)
from .source import (
    SourceTable,
    copy_query_to_frame,
    cursor_index_warning,
    describe,
    prepare_session,
    select_list,
)
from .state import load_state
from .transport import FrameTransport, TransportFactory

KIND = "incremental"
TIME_BASES = ("timestamptz", "timestamp", "date")
NUMBER_BASES = ("smallint", "integer", "bigint", "numeric", "real", "double precision")


@dataclass(frozen=True)
class OpenTransactions:
    """What ``pg_stat_activity`` and ``pg_prepared_xacts`` showed just before the snapshot."""

    observed_at: str  # the source's clock, text
    oldest_start: str | None  # the oldest open transaction's start, text; None when none is open
    hidden: int  # sessions whose details this role may not see
    default_timezone: str
    oldest_pid: int | None = None  # the session holding that oldest transaction
    oldest_state: str | None = None  # its pg_stat_activity.state, e.g. 'idle in transaction'
    prepared: int = 0  # prepared (two-phase) transactions pending in the source database
    oldest_prepared: str | None = None  # the oldest one's PREPARE time, text
    reads_all_stats: bool = True  # the role sees every session (pg_read_all_stats or superuser)


def open_transactions(conn: psycopg.Connection) -> OpenTransactions:
    """Read outside (before) the snapshot: pg_stat_activity is not MVCC, and a transaction that
    commits between the snapshot and this read would otherwise be neither seen nor waited for."""
    row = conn.execute(
        """
        WITH open AS (
            SELECT pid, state, xact_start FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND xact_start IS NOT NULL
               AND backend_type NOT IN ('autovacuum worker', 'autovacuum launcher')
             ORDER BY xact_start LIMIT 1)
        SELECT clock_timestamp()::text,
               (SELECT xact_start::text FROM open),
               (SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND query = '<insufficient privilege>'),
               (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'),
               (SELECT pid FROM open), (SELECT state FROM open),
               (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()),
               (SELECT min(prepared)::text FROM pg_prepared_xacts WHERE database = current_database()),
               pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
        """
    ).fetchone()
    return OpenTransactions(row[0], row[1], int(row[2]), row[3], row[4], row[5], int(row[6]), row[7],
                            bool(row[8]))


def source_in_recovery(conn: psycopg.Connection) -> bool:
    """Whether the source is a hot standby: its ``pg_stat_activity`` shows only the standby's own
    sessions, never the primary's open transactions, so the late-commit bound sees nothing there."""
    return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])


def _where(spec: TableSpec) -> str:
    return f" (declared at line {spec.line})" if spec.line else ""


def refuse_unsafe_bound(spec: TableSpec, ctype: str, base: str, seen: OpenTransactions,
                        standby: bool) -> None:
    """Refuse, before anything is read, a declaration whose late commits could be lost silently
    (docs/late-commits.md): each message names the keys that make it safe."""
    if base not in TIME_BASES:
        return  # numeric cursors are covered by lag only, as documented
    where = _where(spec)
    if base != "timestamptz" and spec.cursor_time_zone is None and spec.lag < ANY_ZONE_LAG_SECONDS:
        raise ConfigError(
            f"Table {spec.source}{where}: cursor {spec.cursor!r} has type {ctype} (no time zone), and the "
            "zone the writers stamp it in cannot be seen from here, so late commits could be lost; declare "
            "cursor_time_zone: <zone the writers use, e.g. UTC or America/Los_Angeles>, or lag: "
            f"{ANY_ZONE_LAG_SECONDS} (26 h, covers any zone)."
        )
    if standby and not spec.lag:
        raise ConfigError(
            f"Table {spec.source}{where}: the source database is a hot standby (pg_is_in_recovery()), whose "
            "pg_stat_activity does not show the primary's open transactions, so late commits could be lost; "
            "declare lag: <seconds longer than the primary's longest write transaction>, or extract from "
            "the primary."
        )
    if not seen.reads_all_stats and not spec.lag and spec.late_commits != "ignore":
        raise ConfigError(
            f"Table {spec.source}{where}: the source role lacks pg_read_all_stats, so it cannot see other "
            "roles' open transactions and late commits could be lost; GRANT pg_read_all_stats to it, or "
            "declare lag: <seconds>, or late_commits: ignore to accept that risk."
        )


def cursor_base(table: SourceTable, spec: TableSpec) -> tuple[str, str]:
    column = table.column(spec.cursor or "")
    return column.type_sql, column.pg_type.base


ROUTED_KEY = "routed"  # state: rows the data-quality routing moved out of the target (key, cursor)


def routed_filter(table: SourceTable, spec: TableSpec, routed: list[Any]) -> tuple[sql.Composable, list[Any]]:
    """``AND NOT EXISTS (…)``: leave out the rows that ``on_fail: dead_letter`` routing moved from the
    target to the dead-letter table (etl_assets/quality/routing.py records their key and cursor value
    in the state) while they are unchanged at the source, i.e. still have that cursor value; the
    boundary re-read would otherwise bring them back. A changed row has a new cursor value and is read.
    """
    if not routed:
        return sql.SQL(""), []
    cur = sql.Identifier(spec.cursor or "")
    keys = sql.SQL(" AND ").join(
        sql.SQL("(r.value -> 'k' ->> {i})::{t} = {c}").format(
            i=sql.Literal(i), t=sql.SQL(table.column(k).type_sql), c=sql.Identifier(k))
        for i, k in enumerate(spec.primary_key))
    cond = sql.SQL(" AND NOT EXISTS (SELECT FROM jsonb_array_elements(%s::jsonb) r WHERE {} AND "
                   "(r.value ->> 'c')::{} = {})").format(keys, sql.SQL(cursor_base(table, spec)[0]), cur)
    return cond, [Jsonb(routed)]


def extract_queries(table: SourceTable, spec: TableSpec, lower: str | None, upper: str | None,
                    routed: list[Any] | None = None) -> tuple[sql.Composed, sql.Composed, list[Any]]:
    """The high-water-mark query and the extract query (with its parameters).

    Both are answered from an index on the cursor column: ``max()`` by one backward index step, the
    range and ``IS NULL`` by index range scans. ``routed``: see :func:`routed_filter` (rows with a
    NULL cursor are not held back: without a cursor value a change could not be told apart).
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
        held_back, held_params = routed_filter(table, spec, routed or [])
        parts.append(sql.SQL("SELECT {} FROM {} WHERE {}{}").format(cols, table.ref.ident, cond, held_back))
        params += held_params
    parts.append(sql.SQL("SELECT {} FROM {} WHERE {} IS NULL").format(cols, table.ref.ident, cur))
    return hwm, sql.SQL(" UNION ALL ").join(parts), params


def still_routed(conn: psycopg.Connection, ctype: str, routed: list[Any], lower: str | None) -> list[Any]:
    """The routed rows the next run can still re-read (cursor at or past its lower bound)."""
    if not routed or lower is None:
        return list(routed)
    query = sql.SQL("SELECT coalesce(jsonb_agg(r.value), '[]') FROM jsonb_array_elements(%s::jsonb) r "
                    "WHERE (r.value ->> 'c')::{t} >= %s::{t}").format(t=sql.SQL(ctype))
    return conn.execute(query, (Jsonb(routed), lower)).fetchone()[0]


@dataclass(frozen=True)
class LowerBound:
    value: str | None  # the next run's lower bound (None: read from the beginning)
    held: bool  # the oldest open transaction holds it below this run's upper bound


def next_lower_bound(conn: psycopg.Connection, ctype: str, base: str, upper: str, seen: OpenTransactions,
                     lag: float, tz: str | None = None, previous: str | None = None) -> LowerBound:
    """The next run's lower bound: see the module docstring.

    ``tz``: the zone the writers stamp a ``timestamp``/``date`` cursor in (``cursor_time_zone``;
    the source's default zone otherwise, declared safe only with a 26 h lag). While a prepared
    transaction is pending, the bound does not move past ``previous``: the start of a prepared
    transaction (the time its rows are stamped with) is not recorded anywhere, only its PREPARE
    time, which is later; a transaction prepared since the previous run started after that run's
    observation, so at or past ``previous``.
    """
    typ = sql.SQL(ctype)
    if base in TIME_BASES:
        if base == "timestamptz":
            as_cursor = sql.SQL("%s::timestamptz")
            zone: tuple = ()
        else:
            as_cursor = sql.SQL("(%s::timestamptz AT TIME ZONE %s)")
            zone = (tz or seen.default_timezone,)
        query = sql.SQL(
            "SELECT (least(%s::{t}, {a}, {a}, {a}) - make_interval(secs => %s))::{t}::text, {a} < %s::{t}"
        ).format(t=typ, a=as_cursor)
        params = (upper, seen.oldest_start, *zone, seen.observed_at, *zone, seen.oldest_prepared, *zone, lag,
                  seen.oldest_start, *zone, upper)
        value, held = conn.execute(query, params).fetchone()
        if seen.prepared:
            if previous is None:
                return LowerBound(None, bool(held))
            value = conn.execute(sql.SQL("SELECT least(%s::{t}, %s::{t})::text").format(t=typ),
                                 (value, previous)).fetchone()[0]
        return LowerBound(value, bool(held))
    if base in NUMBER_BASES:
        if not lag:
            return LowerBound(upper, False)
        query = sql.SQL("SELECT (%s::{t} - %s)::{t}::text").format(t=typ)
        return LowerBound(conn.execute(query, (upper, lag)).fetchone()[0], False)
    return LowerBound(upper, False)


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
    routed: list[Any]  # the routed rows this run leaves out (the state keeps those it can re-read)


def read_increment(spec: TableSpec, src: psycopg.Connection, previous: dict[str, Any],
                   report: ExtractReport, *, to_frame: bool = True) -> IncrementalRead:
    """Read this run's rows (``to_frame``) and compute the state that will commit with them."""
    prepare_session(src)
    standby = source_in_recovery(src)
    seen = open_transactions(src)
    tz = spec.cursor_time_zone or seen.default_timezone
    with snapshot(src):
        table = describe(src, spec)
        ctype, base = cursor_base(table, spec)
        refuse_unsafe_bound(spec, ctype, base, seen, standby)  # before anything is read
        missing_index = cursor_index_warning(src, spec)
        if missing_index:
            report.warnings.append(missing_index)
        lower = previous.get("next_from")
        routed_now = routed = previous.get(ROUTED_KEY) or []
        hwm, _, _ = extract_queries(table, spec, lower, None)
        upper = src.execute(hwm).fetchone()[0]
        _, query, params = extract_queries(table, spec, lower, upper, routed)
        frame = copy_query_to_frame(src, query, params, table.names) if to_frame else None
        bound = LowerBound(lower, False) if upper is None else next_lower_bound(
            src, ctype, base, upper, seen, spec.lag, tz, lower)
        new_lower = bound.value
        routed = still_routed(src, ctype, routed, new_lower)
        lag = lag_seconds(src, base, ctype, upper, tz)
    if lag is not None and lag < 0:
        report.warnings.append(
            f"The newest {spec.cursor!r} of {spec.source} is {-lag:,.0f} s ahead of the source's clock "
            "(future-dated rows); the next lower bound is capped at the extract's time, so they cost a "
            "re-read per run but hide no other change."
        )
    report.lag_seconds = None if lag is None else max(0.0, lag)
    report.cursor_before = previous.get("cursor")
    report.cursor_after = upper if upper is not None else previous.get("cursor")
    if bound.held and seen.oldest_pid is not None:
        report.lower_bound_held_by = (f"pid {seen.oldest_pid} ({seen.oldest_state or 'state hidden'}, "
                                      f"transaction open since {seen.oldest_start})")
        if (seen.oldest_state or "").startswith("idle in transaction") or \
                seen.oldest_start < str(previous.get("observed_at") or ""):
            report.warnings.append(
                f"Session {report.lower_bound_held_by} holds the next lower bound of {spec.source} at its "
                "start: every run re-reads from there until that transaction ends. End it (e.g. "
                f"pg_terminate_backend({seen.oldest_pid})) or set idle_in_transaction_session_timeout."
            )
    if seen.prepared and base in TIME_BASES:
        report.warnings.append(
            f"{seen.prepared} prepared transaction(s) pending in the source database (pg_prepared_xacts, "
            f"oldest prepared at {seen.oldest_prepared}): the lower bound of {spec.source} does not advance "
            "until they are committed or rolled back (COMMIT/ROLLBACK PREPARED)."
        )
    if not seen.reads_all_stats and spec.late_commits == "ignore" and not spec.lag and base in TIME_BASES:
        report.warnings.append(
            f"late_commits: ignore: transactions of other roles are not waited for, so their late commits to "
            f"{spec.source} can be missed (the source role lacks pg_read_all_stats)."
        )
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
        # For the data-quality routing, which records the rows it moves out (ROUTED_KEY):
        "cursor_column": spec.cursor,
        "primary_key": list(spec.primary_key),
        ROUTED_KEY: routed,
        "oldest_open_transaction": seen.oldest_start,
        "oldest_open_transaction_pid": seen.oldest_pid,
        "prepared_transactions": seen.prepared,
        "observed_at": seen.observed_at,
    }
    return IncrementalRead(table, frame, state, report, lower, upper, routed_now)


def extract_incremental(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None,
                        transport: TransportFactory = FrameTransport) -> ExtractReport:
    """Stream the increment (bounded memory, through ``transport``) into one upsert transaction that
    ends with the state. The bounds and refusals come first: a refused declaration creates no target."""
    report = ExtractReport(spec.target, spec.extract, spec.load, path=transport.path)
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        previous = load_state(wh, spec.target, KIND)
        read = read_increment(spec, src, previous, report, to_frame=False)
        info = prepare_target(wh, spec, read.table)
        note_schema_changes(report, spec, info)
        move = transport(src, wh, spec, read.table, info)
        _, query, params = extract_queries(read.table, spec, read.lower, read.upper, read.routed)

        def state() -> tuple[str, dict[str, Any]]:
            read.state["rows_read"] = report.rows_read
            return KIND, read.state

        # A snapshot bounded by the same upper value as the bounds above: rows committed since are
        # read at most once more (they lie at or past the next lower bound anyway).
        with snapshot(src):
            load_whole(wh, spec, move, query, params, read.table.names, info, report, state, run_id,
                       count_nulls=spec.cursor or "")
        finish_target(wh, report)
    if report.null_cursor_rows:
        report.warnings.append(
            f"{report.null_cursor_rows} row(s) of {spec.source} have a NULL {spec.cursor!r}; they are "
            "read and upserted on every run (never dropped): give them a cursor value to stop that."
        )
    return report.finish()
