"""Reading a change log safely: which positions are final, and the net effect of a range of them.

Why not simply ``WHERE position > last ORDER BY position``: positions are drawn when a change is
made, not when it commits. A transaction that drew position 100 and commits after 101 was read would
be skipped forever (dlt #933, Airbyte #14732 are the cursor variant of this). Reading only entries
whose ``txid`` is below ``pg_snapshot_xmin`` is not enough on its own either: a transaction with a
smaller id can draw a *larger* position than a still-running one with a larger id.

The rule used here (a "horizon"): at time t0 read the sequence's ``last_value`` L (every position
<= L has been handed out by t0), then draw a fresh transaction id N (every transaction that drew a
position <= L had its id before t0 — the trigger takes its id before drawing a position — so its id
is < N). Once a snapshot has ``pg_snapshot_xmin > N`` — or every transaction <= N still running
belongs to another database of the server (``pg_snapshot_xip`` matched against ``pg_stat_activity``
and ``pg_prepared_xacts``; such transactions cannot write this database's logs) — every transaction
that could hold a position <= L has ended, so in that snapshot the entries with position <= L are
final: committed ones are visible and no other will ever appear. The range ``(applied, L]`` is then
read in position order, which for any one row is the order its changes happened (row locks and
unique-index waits serialise writers of a key, the AFTER trigger, statement or row, runs before
the commit, the sequence has CACHE 1, and keys must be non-deferrable; a statement trigger logs each
key of its statement once, a row trigger logs a statement's rows in an order that can be replayed).
When an old transaction is still running the run waits a little, then applies up to the newest
earlier horizon that is final, and reports what holds it back.

After the initial snapshot a range also skips the entries the snapshot already contains:
``pg_visible_in_snapshot(txid, snapshot)`` for positions up to the snapshot's highest visible one.

Whole transactions: a window never ends between two entries of one source transaction, or the
warehouse would show a state the source never had (half a transfer between two accounts). The end
chosen by the horizon or the batch size is moved to a *clean cut*, a position that no transaction
spans (:func:`whole_transactions_end`): first forward, to the last entry of the transactions that
span it, as long as the range added is final (within the final bound, or every position in it is
a committed, visible entry: no open transaction can hold one of them); otherwise back, to just
before the first entry of the spanning transactions. A contiguous range ending at a clean cut holds
each of its transactions whole, and for every key all of its events up to that cut, so it is
replayed exactly as the source committed it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.cdc.capture import Capture
from etl_assets.errors import EtlError
from etl_assets.extract.source import SourceTable

MAX_HORIZONS = 8
OPS = {"I": "insert", "U": "update", "D": "delete", "T": "truncate"}


class ChangeLogGap(EtlError):
    """Entries between the applied position and the log's first available one are gone."""


@dataclass(frozen=True)
class Horizon:
    """Positions <= ``position`` were all handed out by transactions with ids < ``xid``."""

    position: int
    xid: int


def take_horizon(conn: psycopg.Connection, capture: Capture) -> Horizon:
    """Read the sequence, then burn a transaction id: two autocommit statements, in this order."""
    if not conn.autocommit:
        raise ValueError("take_horizon needs an autocommit connection (two separate transactions)")
    last_value, is_called = conn.execute(
        sql.SQL("SELECT last_value, is_called FROM {}").format(capture.sequence_ident)
    ).fetchone()
    position = int(last_value) if is_called else int(last_value) - 1
    xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    return Horizon(position, xid)


def snapshot_xmin(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetchone()[0])


def begin_snapshot(conn: psycopg.Connection) -> None:
    """First statement of a read transaction: one REPEATABLE READ snapshot for every query in it."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


# Transactions that cannot write this database's change logs: sessions of another database of the
# server, autovacuum workers (they never fire triggers), prepared transactions of another database.
# Read in its own statement *before* the snapshot it is used with: a transaction that is running in
# that snapshot and has an id <= N (assigned before this read) was running during this read too, so
# it is listed here if it is foreign. (Reading it after the snapshot would race with transactions
# that end in between.) 32-bit ids, as pg_stat_activity shows them.
_FOREIGN = """
SELECT coalesce(array_agg(x), '{}') FROM (
    SELECT backend_xid::text::bigint AS x FROM pg_stat_activity
     WHERE backend_xid IS NOT NULL
       AND (datid IS DISTINCT FROM (SELECT oid FROM pg_database WHERE datname = current_database())
            OR backend_type = 'autovacuum worker')
    UNION ALL
    SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database <> current_database()
) f
"""

# The oldest transaction keeping a horizon from being final in the current snapshot: an id <= N
# still running that is not known to be foreign. One the role may not see (other users' sessions
# without pg_read_all_stats) counts as a blocker: wait rather than guess.
_BLOCKER = """
SELECT x.xid::text
  FROM (SELECT pg_current_snapshot() AS s) q, pg_snapshot_xip(q.s) AS x(xid)
 WHERE pg_snapshot_xmin(q.s) <= %(n)s::text::xid8
   AND x.xid <= %(n)s::text::xid8
   AND NOT (x.xid::text::bigint %% 4294967296) = ANY(%(foreign)s::bigint[])
 ORDER BY x.xid
 LIMIT 1
"""


def foreign_xids(conn: psycopg.Connection) -> list[int]:
    """Running transactions that cannot write this database's logs; call outside a transaction,
    just before the snapshot the result is used with."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("foreign_xids must run before the read transaction's snapshot")
    return list(conn.execute(_FOREIGN).fetchone()[0])


def blocker(conn: psycopg.Connection, horizon: Horizon, foreign: list[int]) -> int | None:
    """The oldest transaction keeping ``horizon`` from being final in the current snapshot, or None."""
    row = conn.execute(_BLOCKER, {"n": str(horizon.xid), "foreign": foreign}).fetchone()
    return int(row[0]) if row else None


def horizon_final(conn: psycopg.Connection, horizon: Horizon, foreign: list[int]) -> bool:
    """Whether every position <= ``horizon.position`` is final in the current snapshot."""
    return blocker(conn, horizon, foreign) is None


def safe_bound(conn: psycopg.Connection, applied: int, horizons: list[Horizon], foreign: list[int]) -> int:
    """The highest position whose range ``(applied, bound]`` is final in the current snapshot."""
    bound = applied
    for h in sorted(horizons, key=lambda h: h.position, reverse=True):
        if h.position <= bound:
            break
        if horizon_final(conn, h, foreign):
            bound = h.position
            break
    return bound


def keep_horizons(horizons: list[Horizon], bound: int) -> list[Horizon]:
    """Horizons still useful after applying up to ``bound``: the oldest and the newest few."""
    left = sorted({h for h in horizons if h.position > bound}, key=lambda h: h.position)
    if len(left) > MAX_HORIZONS:
        left = left[:1] + left[-(MAX_HORIZONS - 1) :]
    return left


def describe_transaction(conn: psycopg.Connection, xid: int | None) -> str:
    """Who runs transaction ``xid`` (pid, user, database, state, age), for reports and warnings."""
    if xid is None:
        return "an older transaction"
    try:
        row = conn.execute(
            """SELECT pid, coalesce(datname, '?'), coalesce(usename, '?'), backend_type, coalesce(state, '?'),
                      extract(epoch FROM clock_timestamp() - xact_start)::float8
                 FROM pg_stat_activity
                WHERE backend_xid IS NOT NULL AND backend_xid::text::bigint = %s %% 4294967296""",
            (xid,),
        ).fetchone()
    except psycopg.Error:
        row = None
    if row is None:
        return (
            f"transaction {xid} (ended meanwhile, prepared, or a session this role may not see: "
            "grant it pg_read_all_stats)"
        )
    pid, db, user, kind, state, seconds = row
    return (
        f"transaction {xid}: pid {pid} ({kind}, user {user}, database {db}, {state}, "
        f"open {seconds or 0:.0f} s)"
    )


@dataclass
class Window:
    """A range ``(start, end]`` of a log, final in the read transaction's snapshot."""

    capture: Capture
    start: int
    end: int
    exclude_snapshot: str | None = None  # entries visible in it are already in the target
    exclude_through: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    last_truncate: int | None = None
    moved_keys: int = 0  # updates logged with ``old_key`` (by the row trigger: partitions, earlier versions)
    held_back_by: str | None = None

    @property
    def changes(self) -> int:
        return sum(self.counts.values())

    def where(self, lower: int | None = None) -> tuple[sql.Composable, list[Any]]:
        """The WHERE clause selecting this window's entries (above ``lower`` if given)."""
        parts: list[sql.Composable] = [sql.SQL("position > %s"), sql.SQL("position <= %s")]
        params: list[Any] = [max(self.start, lower or self.start), self.end]
        if self.exclude_snapshot is not None and self.exclude_through is not None:
            parts.append(sql.SQL("NOT (position <= %s AND pg_visible_in_snapshot(txid, %s::pg_snapshot))"))
            params += [self.exclude_through, self.exclude_snapshot]
        return sql.SQL(" AND ").join(parts), params


def check_continuity(
    conn: psycopg.Connection, capture: Capture, log_id: str, applied: int, target: str
) -> None:
    """Fail loudly when the log cannot continue from ``applied``: recreated, pruned past it, or reset."""
    reset = (
        f"Run `etl-assets reset {target}` and run {target} again: it takes a new snapshot of "
        f"{capture.source} and continues from there."
    )
    if capture.log_id != log_id:
        raise ChangeLogGap(
            f"The change log of {capture.source} was recreated (log id {capture.log_id}, installed "
            f"{capture.installed_at:%Y-%m-%d %H:%M:%S %Z}); {target} applied up to position {applied} of an "
            f"earlier log ({log_id}), and the changes in between are lost. {reset}"
        )
    if capture.pruned_through > applied:
        raise ChangeLogGap(
            f"The change log of {capture.source} was pruned through position {capture.pruned_through}, but "
            f"{target} applied only up to {applied}: changes {applied + 1}..{capture.pruned_through} "
            "are gone. "
            f"{reset}"
        )
    last_value, is_called = conn.execute(
        sql.SQL("SELECT last_value, is_called FROM {}").format(capture.sequence_ident)
    ).fetchone()
    handed_out = int(last_value) if is_called else int(last_value) - 1
    if handed_out < applied:
        raise ChangeLogGap(
            f"The change log sequence of {capture.source} is at {handed_out}, below the position {applied} "
            f"that {target} applied: the log was reset or restored from an older backup. {reset}"
        )


def describe_window(conn: psycopg.Connection, window: Window) -> None:
    """Fill ``counts``, ``last_truncate`` and ``moved_keys`` (inside the read transaction)."""
    where, params = window.where()
    rows = conn.execute(
        sql.SQL(
            "SELECT op, count(*), max(position), count(old_key) FROM {} WHERE {} GROUP BY op"
        ).format(window.capture.log_ident, where),
        params,
    ).fetchall()
    window.counts = {OPS[op]: int(n) for op, n, _, _ in rows}
    truncates = [int(top) for op, _, top, _ in rows if op == "T"]
    window.last_truncate = max(truncates) if truncates else None
    window.moved_keys = sum(int(moved) for _, _, _, moved in rows)


#: Type categories whose jsonb image (``key ->> 'col'``) is the type's own text input: numbers,
#: strings, booleans, date/time, intervals, bit strings, enums, network addresses.
_SCALAR_CATEGORIES = frozenset("NSBDTVEI")


def scalar_key_columns(conn: psycopg.Connection, capture: Capture) -> set[str]:
    """The key columns whose logged value casts back from ``key ->> 'col'`` (cheaper than
    ``jsonb_populate_record``, which the other key columns, arrays, composites, json, use)."""
    rows = conn.execute(
        """SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = %s::oid AND a.attname = ANY(%s) AND NOT a.attisdropped
              AND (t.typcategory::text = ANY(%s) OR t.typname = 'uuid')""",
        (capture.relid, list(capture.key_columns), sorted(_SCALAR_CATEGORIES)),
    ).fetchall()
    return {r[0] for r in rows}


def net_effect_query(
    window: Window,
    table: SourceTable,
    key: Sequence[str],
    columns: Sequence[str],
    scalar_keys: set[str],
    flag: str,
) -> tuple[sql.Composable, list[Any]]:
    """One row per key touched after the last truncate, typed: ``flag`` (true: the key's final
    state is deleted), then ``columns`` (the key's final row; NULL but the key when deleted).

    Equivalent to replaying the range in position order, because each entry carries the whole row
    and each key's final state is its last event: a delete (D, or the old key of an update that
    moved the row, logged by the row trigger) or a row (I, U). Keys are compared as their columns'
    own types (one sort on typed values, far cheaper than on jsonb), and only each key's last row
    is converted from jsonb (``jsonb_populate_record`` with the source table's row type); columns of
    user-defined types travel as text, as in the snapshot.
    """
    where, params = window.where(window.last_truncate)
    source = window.capture.source.ident

    def key_value(col: str, image: str) -> sql.Composable:
        column = table.column(col)
        if col in scalar_keys:
            value = sql.SQL("({} ->> {})::" + column.type_sql).format(sql.Identifier(image), sql.Literal(col))
        else:
            value = sql.SQL("(jsonb_populate_record(NULL::{}, {})).{}").format(
                source, sql.Identifier(image), sql.Identifier(col)
            )
        return value

    def keys(image: str) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(key_value(k, image), sql.Identifier(f"etl_cdc_k{i}"))
            for i, k in enumerate(key)
        )

    key_names = sql.SQL(", ").join(sql.Identifier(f"etl_cdc_k{i}") for i in range(len(key)))
    position = {k: i for i, k in enumerate(key)}

    def output(col: str) -> sql.Composable:
        value: sql.Composable = (
            sql.SQL("e.{}").format(sql.Identifier(f"etl_cdc_k{position[col]}"))
            if col in position
            else sql.SQL("r.{}").format(sql.Identifier(col))
        )
        return value if table.column(col).builtin else sql.SQL("{}::text").format(value)

    # The old keys of moved rows exist only in logs of the row trigger: a second scan only then.
    moved = sql.SQL(
        """UNION ALL
               SELECT {old_keys}, position, 0, true, NULL::jsonb
                 FROM {log} WHERE {where} AND op = 'U' AND old_key IS NOT NULL"""
        if window.moved_keys
        else ""
    ).format(old_keys=keys("old_key"), log=window.capture.log_ident, where=where)
    query = sql.SQL(
        """SELECT e.etl_cdc_delete AS {flag}, {outputs} FROM (
             SELECT DISTINCT ON ({key_names}) {key_names}, etl_cdc_delete, data FROM (
               SELECT {new_keys}, position, 1 AS sub, op = 'D' AS etl_cdc_delete, data
                 FROM {log} WHERE {where} AND op IN ('I', 'U', 'D')
               {moved}
             ) x ORDER BY {key_names}, position DESC, sub DESC
           ) e LEFT JOIN LATERAL jsonb_populate_record(NULL::{source}, e.data) r ON NOT e.etl_cdc_delete"""
    ).format(
        moved=moved,
        flag=sql.Identifier(flag),
        outputs=sql.SQL(", ").join(output(c) for c in columns),
        key_names=key_names,
        new_keys=keys("key"),
        log=window.capture.log_ident,
        where=where,
        source=source,
    )
    return query, (params + params) if window.moved_keys else params


def batch_end(conn: psycopg.Connection, capture: Capture, start: int, bound: int, limit: int) -> int:
    """The position ending the first ``limit`` entries after ``start`` (``bound`` when fewer remain):
    an index range scan on the log's primary key, so batches stay bounded however far behind a
    target is. Positions are unique, so a range no wider than ``limit`` needs no look."""
    if bound - start <= limit:
        return bound
    top, count = conn.execute(
        sql.SQL(
            "SELECT max(position), count(*) FROM (SELECT position FROM {} WHERE position > %s "
            "AND position <= %s ORDER BY position LIMIT %s) x"
        ).format(capture.log_ident),
        (start, bound, limit),
    ).fetchone()
    return bound if int(count) < limit else int(top)


def _spanning(
    conn: psycopg.Connection, capture: Capture, start: int, end: int
) -> tuple[int | None, int | None, int | None]:
    """Of the transactions with entries in ``(start, end]`` that also have entries after ``end``:
    the first position of their entries in the range, the last position of their entries after it,
    and the id of the one starting first (all None when ``end`` is a clean cut)."""
    row = conn.execute(
        sql.SQL(
            """WITH w AS (SELECT txid, min(position) AS first FROM {log}
                           WHERE position > %(s)s AND position <= %(e)s GROUP BY txid)
               SELECT min(w.first), max(h.position), (array_agg(w.txid::text ORDER BY w.first))[1]
                 FROM {log} h JOIN w ON h.txid = w.txid
                WHERE h.position > %(e)s"""
        ).format(log=capture.log_ident),
        {"s": start, "e": end},
    ).fetchone()
    if row is None or row[1] is None:
        return None, None, None
    return int(row[0]), int(row[1]), int(row[2])


def _dense(conn: psycopg.Connection, capture: Capture, after: int, through: int) -> bool:
    """Whether every position in ``(after, through]`` is a visible entry: then none is held by an
    open transaction (each position is drawn once), so the range is final in this snapshot."""
    count = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE position > %s AND position <= %s").format(capture.log_ident),
        (after, through),
    ).fetchone()[0]
    return int(count) == through - after


def whole_transactions_end(
    conn: psycopg.Connection, capture: Capture, start: int, end: int, final: int
) -> tuple[int, int | None]:
    """The end to use for a window ``(start, end]`` so that it holds whole transactions only.

    ``final`` is the bound below which every position is final in the read transaction's snapshot
    (``end <= final``). Returns ``(clean_end, None)``, or, when no clean cut above ``start`` exists
    yet, ``(start, xid)`` with the transaction that spans the bound (its later entries lie beyond
    positions still held by an open transaction; a later run applies it whole).
    """
    cut, forward = end, True
    spanning_xid: int | None = None
    while cut > start:
        first, last, xid = _spanning(conn, capture, start, cut)
        if last is None:
            return cut, None
        if forward and (last <= final or _dense(conn, capture, max(cut, final), last)):
            cut = last  # the added range is final: extend to the end of the spanning transactions
            continue
        forward = False  # back to just before the spanning transactions (never forward again)
        assert first is not None
        cut = first - 1
        spanning_xid = xid
    return start, spanning_xid


def pending_after(conn: psycopg.Connection, capture: Capture, position: int) -> tuple[int, float]:
    """(entries after ``position`` visible now, age in seconds of the oldest of them; 0 when none)."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(changed_at)), 0)::float8 "
            "FROM {} WHERE position > %s"
        ).format(capture.log_ident),
        (position,),
    ).fetchone()
    return int(row[0]), max(0.0, float(row[1]))


def wait_for_horizon(conn: psycopg.Connection, horizon: Horizon, wait_seconds: float) -> bool:
    """Poll (two cheap statements per try, growing pauses) until the horizon is final, for at most
    ``wait_seconds``; True if it became final."""
    deadline = time.monotonic() + wait_seconds
    pause = 0.02
    while True:
        if horizon_final(conn, horizon, foreign_xids(conn)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.5)
