"""One run at a time per extracted table: a session-level advisory lock in the warehouse.

Why a run lock: every write transaction of an extract already takes the target's transaction-level
lock (``etl_assets.io.writer.lock_target``), but a run is more than one transaction. It reads its
cursor or checkpoint first and commits later, and a chunked pass commits many times; two runs of one
table that overlap (several workers, two clicks in the UI, automation next to a manual run) would
both start from the same state, and their cursors and chunk checkpoints would interleave.

So :func:`extract_lock` takes a session-level advisory lock keyed by the target, on a warehouse
connection of its own, BEFORE the extract reads any state, and holds it until after the extract's
last commit. A process that dies loses its session and with it the lock: a crash never leaves a
table locked. The key differs from ``lock_target``'s, so other writers of the table (the IO manager,
routing, housekeeping) still wait only for single transactions.

The holder records itself in ``etl.extract_runs`` (run id, pid, host, start) so that a refused run
can name it. The lock is the truth, the row only a label: a row counts only while its session
(``backend_pid``) holds the lock in ``pg_locks``, so a row left behind by a killed holder never
names a run that is gone.

A run that finds the table held either stops at once with :class:`ExtractBusy` (manual runs: the
person retries) or, launched by automation, waits up to ``ETL_EXTRACT_LOCK_WAIT`` seconds, so that a
sensor's run key is not spent on a refusal.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from etl_assets.errors import ConfigError, ExtractBusy
from etl_assets.io.tables import TableRef

WAIT_VAR = "ETL_EXTRACT_LOCK_WAIT"
DEFAULT_WAIT_SECONDS = 600.0
HOLD_VAR = "ETL_TEST_EXTRACT_HOLD"  # tests only: seconds to sleep while holding the lock
WAIT_SLICE_SECONDS = 30.0  # a waiting run says again whom it waits for after each slice
# A holder whose process is gone (killed a moment ago on this host) is waited for this long even by a
# manual run: the server ends its session, and frees its lock, as soon as it sees the connection closed.
DEAD_HOLDER_GRACE_SECONDS = 10.0
# Tags that mark a run launched by a sensor, a schedule or an automation condition. The project's
# own sensors and schedules tag their runs with etl_assets.automation.sensors.AUTOMATION_TAG.
AUTOMATION_TAGS = ("etl/automation", "dagster/sensor_name", "dagster/schedule_name",
                   "dagster/from_automation_condition", "dagster/auto_materialize")


def lock_wait_seconds() -> float:
    """How long an automated run waits for the holder of its table (``ETL_EXTRACT_LOCK_WAIT``)."""
    text = os.environ.get(WAIT_VAR, "").strip()
    if not text:
        return DEFAULT_WAIT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{WAIT_VAR}={text!r} is not a number of seconds >= 0; set e.g. {WAIT_VAR}=600.")
    return value


def launched_by_automation(tags: Mapping[str, str] | None) -> bool:
    """Whether a run's tags say a sensor, a schedule or an automation condition launched it."""
    tags = tags or {}
    return any(tags.get(tag) for tag in AUTOMATION_TAGS)


def lock_name(target: TableRef) -> str:
    """The text hashed into the run lock's key; never equal to ``lock_target``'s (``io.tables.lock_key``)."""
    return f"etl-assets extract run: {target}"


@dataclass(frozen=True)
class Holder:
    """The run holding an extract, as far as the warehouse can tell."""

    backend_pid: int  # the warehouse session holding the lock (pg_locks: the truth)
    run_id: str | None = None
    pid: int | None = None
    host: str | None = None
    started_at: str | None = None  # UTC, "YYYY-MM-DD HH:MM:SS"
    recorded: bool = False  # False: the session has not written its etl.extract_runs row (yet)
    application: str | None = None

    def __str__(self) -> str:
        if not self.recorded:
            return (f"warehouse session {self.backend_pid}"
                    + (f" ({self.application})" if self.application else "")
                    + ", which has not recorded its run")
        run = "a run outside Dagster" if not self.run_id else f"run {short_id(self.run_id)}"
        return f"{run} (pid {self.pid} on host {self.host}, since {self.started_at} UTC)"


def short_id(run_id: str) -> str:
    return run_id if len(run_id) <= 8 else f"{run_id[:8]}…"


@dataclass
class HeldLock:
    """What the lock did for one run, copied into its report."""

    waited_seconds: float = 0.0
    acquired_at: float = 0.0  # time.time() when the lock was taken
    released_at: float | None = None  # time.time() just before it was let go


def _key(conn: psycopg.Connection, target: TableRef) -> int:
    return conn.execute("SELECT hashtextextended(%s, 0)", (lock_name(target),)).fetchone()[0]


def _try_lock(conn: psycopg.Connection, key: int) -> bool:
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])


def _lock_within(conn: psycopg.Connection, key: int, seconds: float) -> bool:
    """Wait for the lock at most ``seconds`` (a blocking wait: taken the moment it is free)."""
    conn.execute(f"SET lock_timeout = {max(1, int(seconds * 1000))}")
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        return True
    except psycopg.errors.LockNotAvailable:
        return False
    finally:
        conn.execute("RESET lock_timeout")


def holder_of(conn: psycopg.Connection, target: TableRef, key: int | None = None, *,
              settle: float = 1.0) -> Holder | None:
    """The session holding the run lock of ``target`` and its recorded run; None when it is free.

    The holder writes its row just after taking the lock: a session without a matching row is asked
    again for up to ``settle`` seconds before it is reported as unnamed.
    """
    if key is None:
        key = _key(conn, target)
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    deadline = time.monotonic() + settle
    while True:
        row = conn.execute(
            """
            SELECT l.pid, r.run_id, r.pid, r.host,
                   to_char(r.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                   (SELECT application_name FROM pg_stat_activity a WHERE a.pid = l.pid)
              FROM pg_locks l
              LEFT JOIN etl.extract_runs r ON r.target = %s AND r.backend_pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
            """,
            (str(target), unsigned >> 32, unsigned & 0xFFFFFFFF),
        ).fetchone()
        if row is None:
            return None
        if row[1] is not None or row[2] is not None or time.monotonic() >= deadline:
            return Holder(row[0], row[1], row[2], row[3], row[4], recorded=row[2] is not None,
                          application=row[5])
        time.sleep(0.05)


def busy_message(target: TableRef, holder: Holder, waited: float | None = None) -> str:
    if waited is None:
        return f"{target} is being extracted by {holder}; retry later."
    return (f"{target} is still being extracted by {holder} after waiting {waited:.0f} s "
            f"({WAIT_VAR}); retry later.")


def _record(conn: psycopg.Connection, target: TableRef, run_id: str | None) -> None:
    conn.execute(
        """
        INSERT INTO etl.extract_runs (target, run_id, pid, host, backend_pid, started_at)
        VALUES (%s, %s, %s, %s, pg_backend_pid(), now())
        ON CONFLICT (target) DO UPDATE
           SET run_id = EXCLUDED.run_id, pid = EXCLUDED.pid, host = EXCLUDED.host,
               backend_pid = EXCLUDED.backend_pid, started_at = EXCLUDED.started_at
        """,
        (str(target), run_id, os.getpid(), socket.gethostname()),
    )


def _process_gone(holder: Holder) -> bool:
    """Whether the holder's process is known to be gone: it ran on this host and no such pid exists."""
    if not holder.recorded or holder.host != socket.gethostname() or holder.pid is None:
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: someone else's live process
        return False
    return False


def _acquire(conn: psycopg.Connection, target: TableRef, key: int, run_id: str | None, wait: float,
             log: Callable[[str], None]) -> float:
    """Take the lock; returns the seconds waited. Raises :class:`ExtractBusy` when it stays held.

    An earlier attempt of the SAME run (a Celery task delivered again after a broker cut, while its
    first copy still finishes) is waited for like automation waits, manual run or not: refusing
    would fail a run whose extract is, in fact, being done. A holder whose process is gone (same
    host, no such pid) is waited for briefly: a run started right after a kill is not refused.
    """
    started = time.monotonic()
    announced: Holder | None = None
    while True:
        if _try_lock(conn, key):
            return time.monotonic() - started
        holder = holder_of(conn, target, key)
        if holder is None:
            continue  # let go between the two statements: try again
        same_run = run_id is not None and holder.run_id == run_id
        limit = max(wait, lock_wait_seconds()) if same_run else wait
        if _process_gone(holder):  # killed a moment ago: its session is ending, its lock with it
            limit = max(limit, DEAD_HOLDER_GRACE_SECONDS)
        waited = time.monotonic() - started
        remaining = limit - waited
        if remaining <= 0:
            raise ExtractBusy(busy_message(target, holder, waited if limit > 0 else None))
        if holder != announced:
            if _process_gone(holder):
                log(f"{target} is held by {holder}, whose process is gone; waiting for the warehouse to "
                    f"end its session (at most {remaining:.0f} s)")
            else:
                who = "an earlier attempt of this run, " if same_run else ""
                log(f"{target} is being extracted by {who}{holder}; this "
                    f"{'attempt' if same_run else 'automated run'} waits for it "
                    f"(at most {remaining:.0f} s more, {WAIT_VAR})")
            announced = holder
        if _lock_within(conn, key, min(remaining, WAIT_SLICE_SECONDS)):
            return time.monotonic() - started


@contextmanager
def extract_lock(target: TableRef, warehouse: Callable, run_id: str | None, *, wait: float = 0.0,
                 log: Callable[[str], None] | None = None) -> Iterator[HeldLock]:
    """Hold the run lock of ``target`` for the body (the whole extract); see the module docstring.

    ``warehouse``: a ``connect(autocommit=...)`` callable; the lock lives on a connection of its own,
    idle while the extract works. ``wait``: 0 refuses at once if another run holds the table;
    otherwise wait up to that many seconds, saying whom for through ``log``. An earlier attempt of
    the same ``run_id`` is always waited for (up to ``ETL_EXTRACT_LOCK_WAIT``).
    """
    from etl_assets.migrations import migrated

    log = log or (lambda _text: None)
    held = HeldLock()
    with warehouse(autocommit=True) as conn:
        migrated(conn)
        key = _key(conn, target)
        held.waited_seconds = _acquire(conn, target, key, run_id, wait, log)
        held.acquired_at = time.time()
        try:
            _record(conn, target, run_id)
            hold = _test_hold()
            if hold > 0:  # tests only: makes an overlap with another run certain
                time.sleep(hold)
            yield held
        finally:
            held.released_at = time.time()
            try:
                conn.execute("DELETE FROM etl.extract_runs WHERE target = %s "
                             "AND backend_pid = pg_backend_pid()", (str(target),))
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except psycopg.Error:
                pass  # the connection is gone: so is the session's lock (the row is stale, thus ignored)


def _test_hold() -> float:
    """``ETL_TEST_EXTRACT_HOLD`` (tests only): seconds to hold the lock before extracting."""
    raw = os.environ.get(HOLD_VAR, "").strip()
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        raise ConfigError(f"{HOLD_VAR}={raw!r} is not a number of seconds (it is for tests only: unset "
                          "it).") from None
