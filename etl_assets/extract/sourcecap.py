"""At most N extracts at once against one named source: a semaphore of advisory locks in the warehouse.

Why: a source is another team's production database. Dagster's ``warehouse`` pool bounds the steps
writing the warehouse, not how many of them read one application's database at the same time;
``sources: {crm: {dsn_env: CRM_DSN, max_concurrent: 2}}`` bounds that, across every process, worker
and host that shares the warehouse (the one place they all see).

How: the source has ``max_concurrent`` slots, each a session-level advisory lock on the key pair
(``hashtext('etl-assets source: <name>')``, slot number). An extract tries slots 1..N with
``pg_try_advisory_lock`` on a warehouse connection of its own; when every slot is taken it waits
on one slot at a time for a growing pause (``lock_timeout``; a wait without end on one slot would miss
another slot coming free) and tries them all again, and says so through ``log``, naming what the
holders extract. The slot is let go when the extract ends,
and a crashed process frees its slot with its session. The two-key form lives in a key space of its
own (``objsubid = 2`` in ``pg_locks``), so it never meets the run lock or the target locks.

The slot is taken BEFORE the table's run lock (``etl_assets.extract.runlock``) and let go after it: a
run holding a table never waits for a slot, so two runs cannot wait for each other.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from etl_assets.io.tables import TableRef

POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 0.25  # bounds how late a freed slot is seen when max_concurrent > 1
ANNOUNCE_EVERY_SECONDS = 30.0  # a waiting extract says again whom it waits for
APPLICATION_PREFIX = "etl-assets slot"


def slot_name(source: str) -> str:
    """The text hashed into the first key of the source's slots."""
    return f"etl-assets source: {source}"


@dataclass
class HeldSlot:
    """Which slot an extract held and for how long, copied into its report."""

    source: str
    slot: int = 0
    waited_seconds: float = 0.0
    acquired_at: float = 0.0  # time.time() when the slot was taken
    released_at: float | None = None  # time.time() just before it was let go


def _holders(conn: psycopg.Connection, key: int) -> list[str]:
    """What the sessions holding the source's slots say they extract (their application name)."""
    rows = conn.execute(
        """
        SELECT l.objid::int, coalesce(a.application_name, ''), l.pid
          FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = %s::bigint::oid
         ORDER BY 1
        """,
        (key & 0xFFFFFFFF,),  # pg_locks shows the int4 key as an unsigned oid
    ).fetchall()
    return [f"slot {slot}: {app.removeprefix(APPLICATION_PREFIX + ' ').strip() or f'session {pid}'}"
            for slot, app, pid in rows]


def _lock_within(conn: psycopg.Connection, key: int, slot: int, seconds: float) -> bool:
    """Wait at most ``seconds`` for ``slot`` (a blocking wait on the server)."""
    conn.execute(f"SET lock_timeout = {max(1, int(seconds * 1000))}")
    try:
        conn.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (key, slot))
        return True
    except psycopg.errors.LockNotAvailable:
        return False
    finally:
        conn.execute("RESET lock_timeout")


@contextmanager
def source_slot(source: str, slots: int, warehouse: Callable, target: TableRef | str, *,
                log: Callable[[str], None] | None = None) -> Iterator[HeldSlot]:
    """Hold one of ``source``'s ``slots`` for the body (see the module docstring).

    ``warehouse``: a ``connect(autocommit=...)`` callable; the slot lives on a connection of its own,
    idle while the extract works, whose application name says which table holds it (waiters name it).
    """
    log = log or (lambda _text: None)
    held = HeldSlot(source)
    with warehouse(autocommit=True) as conn:
        label = f"{APPLICATION_PREFIX} {source}: {target}"
        conn.execute("SELECT set_config('application_name', %s, false)", (label[:63],))
        key = conn.execute("SELECT hashtext(%s)", (slot_name(source),)).fetchone()[0]
        started = time.monotonic()
        pause, announced, waits = POLL_FIRST_SECONDS, None, 0
        while not held.slot:
            for slot in range(1, slots + 1):
                if conn.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)", (key, slot)).fetchone()[0]:
                    held.slot = slot
                    break
            else:
                now = time.monotonic()
                if announced is None or now - announced >= ANNOUNCE_EVERY_SECONDS:
                    holders = "; ".join(_holders(conn, key)) or "sessions that just let go"
                    log(f"{target}: all {slots} slot(s) of source {source} are taken (max_concurrent); "
                        f"waiting ({now - started:.0f} s so far) for one of: {holders}")
                    announced = now
                # Wait on one slot (in turn) for the pause: taken the moment it comes free, while the
                # next round of tries still sees any other slot that freed meanwhile.
                waits += 1
                if _lock_within(conn, key, 1 + waits % slots, pause):
                    held.slot = 1 + waits % slots
                pause = min(pause * 2, POLL_MAX_SECONDS)
        held.waited_seconds = time.monotonic() - started
        held.acquired_at = time.time()
        try:
            yield held
        finally:
            held.released_at = time.time()
            # A connection that is gone took its session, and the slot with it.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", (key, held.slot))
