"""Cheap questions to a source: did this table move since its extract's stored state?

A probe costs one index step per table, whatever the table's size: the newest cursor value through
the cursor's index (``max(cursor)`` is answered by a backward index scan), or the newest position
of a change log through its primary key. Every probe returns what it saw, in words, for the
sensor's skip reason and log.

Two cases request a run although the newest value did not move:

* **Late-commit window (incremental).** A row committed late with a cursor value below the newest
  one does not move ``max(cursor)``. While such a row can still appear — the table's ``lag`` has
  not yet elapsed since the stored high-water mark (timestamp cursors), or a transaction that was
  open when the last extract read the source may have committed since — the table counts as moved. Each
  such run re-reads the window (the extract's lower bound already covers it) and stores new state,
  so the next request has a new run key.
* **CDC behind.** The applied position is below the newest committed position of the change log
  (for example a run that stopped below an old open transaction): moved until the run catches up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.pipeline_config import TableSpec

INCREMENTAL_KIND = "incremental"  # etl_assets.extract.incremental.KIND
CDC_KIND = "cdc"  # etl_assets.cdc.apply.KIND
TIME_BASES = ("timestamp with time zone", "timestamp without time zone", "timestamptz", "timestamp", "date")


@dataclass
class Probe:
    """One table's answer. ``fingerprint`` (stored state + probed value) goes into the run key."""

    target: str
    moved: bool
    seen: str  # what was seen, for skip reasons: "raw.orders: no row newer than ..."
    fingerprint: str
    warnings: list[str] = field(default_factory=list)


def stored_states(wh: psycopg.Connection, targets: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``etl.state`` rows of ``targets``: target -> (kind, state). Read only (no migration): a
    warehouse without the table simply has no state yet."""
    if not wh.execute("SELECT to_regclass('etl.state') IS NOT NULL").fetchone()[0]:
        return {}
    rows = wh.execute(
        "SELECT target, kind, state FROM etl.state WHERE target = ANY(%s)", (targets,)
    ).fetchall()
    return {r[0]: (r[1], r[2] if isinstance(r[2], dict) else json.loads(r[2])) for r in rows}


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def newest_cursor_query(spec: TableSpec, cursor_type: str | None) -> sql.Composed:
    """``max(cursor)`` (an index step) and, when the stored type is known, whether it is past the
    stored mark (compared by the server in the cursor's own type)."""
    cur = sql.Identifier(spec.cursor or "")
    table = sql.Identifier(spec.source.schema, spec.source.name)
    if cursor_type:
        return sql.SQL("SELECT max({c})::text, max({c}) > %s::{t} FROM {tb}").format(
            c=cur, t=sql.SQL(cursor_type), tb=table)
    return sql.SQL("SELECT max({c})::text, true FROM {tb}").format(c=cur, tb=table)


def _mark(ctype: str) -> sql.Composable:
    """The stored cursor text as a timestamptz (naive timestamps and dates in the server's zone)."""
    if ctype.startswith("timestamp with") or ctype == "timestamptz":
        return sql.SQL("%s::timestamptz")
    return sql.SQL("%s::timestamp::timestamptz")


def late_window(src: psycopg.Connection, spec: TableSpec, state: dict[str, Any]) -> str | None:
    """Why rows below the stored mark may still commit, or None when they cannot.

    * A transaction that was open when the last extract read the source (``etl.state`` keeps the
      oldest one's start, read from ``pg_stat_activity``) stamps rows from its start time on; if it
      started at or before the mark, its rows may commit below it without moving ``max(cursor)``.
      One more run (whose lower bound waits for it) is needed; that run stores the transactions open
      then, so the window closes when none older than the mark is left.
    * ``lag`` (timestamp cursors): rows stamped up to ``lag`` before they commit may still appear
      until ``lag`` has elapsed after the mark.
    """
    cursor, ctype = state.get("cursor"), (state.get("cursor_type") or "").strip()
    is_time = ctype.split("(")[0].strip() in TIME_BASES
    oldest = state.get("oldest_open_transaction")
    if oldest and cursor:
        older = True
        if is_time:
            query = sql.SQL("SELECT %s::timestamptz <= {m}").format(m=_mark(ctype))
            older = src.execute(query, (oldest, cursor)).fetchone()[0]
        if older:
            return (f"a transaction open at the last extract (since {oldest}) may have committed rows "
                    "below the mark")
    if spec.lag and cursor and is_time:
        mark = _mark(ctype)
        query = sql.SQL(
            "SELECT ({m} + make_interval(secs => %s))::text, now() < {m} + make_interval(secs => %s)"
        ).format(m=mark)
        until, open_ = src.execute(query, (cursor, spec.lag, cursor, spec.lag)).fetchone()
        if open_:
            return f"its lag ({spec.lag:g} s) after the mark {cursor} runs until {until}"
    return None


def probe_incremental(src: psycopg.Connection, spec: TableSpec, stored: tuple[str, dict[str, Any]] | None
                      ) -> Probe:
    """Compare the source's newest cursor value with the stored mark (see module docstring)."""
    from etl_assets.extract.source import cursor_index_warning

    target = str(spec.target)
    state = stored[1] if stored and stored[0] == INCREMENTAL_KIND else {}
    warnings = []
    missing_index = cursor_index_warning(src, spec)
    if missing_index:
        warnings.append(f"configuration: {missing_index} The sensor's probe scans it too.")
    mark = state.get("cursor")
    typed = state.get("cursor_type") if mark is not None else None
    newest, past = src.execute(newest_cursor_query(spec, typed), (mark,) if typed else None).fetchone()
    fingerprint = _digest(mark, state.get("next_from"), state.get("observed_at"), newest)
    if not state:
        return Probe(target, True, f"{target}: never extracted (newest {spec.cursor} {newest})",
                     fingerprint, warnings)
    if newest is None:
        return Probe(target, False, f"{target}: {spec.source} has no row with a {spec.cursor}", fingerprint,
                     warnings)
    if past or mark is None:
        return Probe(target, True, f"{target}: newest {spec.cursor} {newest} is past the mark {mark}",
                     fingerprint, warnings)
    window = late_window(src, spec, state)
    if window:
        return Probe(target, True, f"{target}: no row newer than {mark}, but the late-commit window is "
                     f"open: {window}", fingerprint, warnings)
    return Probe(target, False, f"{target}: no row newer than {mark}", fingerprint, warnings)


def probe_cdc(src: psycopg.Connection, spec: TableSpec, stored: tuple[str, dict[str, Any]] | None) -> Probe:
    """Compare the change log's newest committed position with the applied one."""
    from etl_assets.cdc.capture import get_capture

    target = str(spec.target)
    state = stored[1] if stored and stored[0] == CDC_KIND else {}
    cap = get_capture(src, spec.source)
    if cap is None:
        fingerprint = _digest(state.get("log_id"), state.get("position"), None)
        command = "etl-assets cdc install" + (f" --source {spec.source_name}" if spec.source_name else "")
        return Probe(target, True, f"{target}: no change capture on {spec.source} yet (the run installs "
                     f"it for the shipped demo; otherwise run `{command}`)", fingerprint)
    newest = src.execute(sql.SQL("SELECT max(position) FROM {}").format(cap.log_ident)).fetchone()[0]
    applied = state.get("position")
    fingerprint = _digest(state.get("log_id"), applied, cap.log_id, newest)
    if not state or state.get("log_id") != cap.log_id:
        return Probe(target, True, f"{target}: no snapshot of change log {cap.log_id} yet", fingerprint)
    if newest is not None and int(newest) > int(applied):
        return Probe(target, True, f"{target}: change log at position {newest}, applied {applied}",
                     fingerprint)
    return Probe(target, False, f"{target}: no change after position {applied}", fingerprint)
