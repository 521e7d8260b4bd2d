"""Retries: which failures are transient, the waits (full jitter, caps, Retry-After, no sleep after
the last attempt), and a real connection dropped mid-read by ``pg_terminate_backend`` being retried
with the data exact. Waits are recorded by a fake sleep, never slept."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import random
import threading
import time
import urllib.error

import psycopg
import pytest
from psycopg import sql

from etl_assets.db import connect
from etl_assets.errors import DatabaseUnreachable
from etl_assets.io.tables import TableRef
from etl_assets.retry import Backoff, HttpStatusError, is_transient, parse_retry_after, retrying
from etl_assets.transforms import aggregate

TRANSIENT = [
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.LockNotAvailable("could not obtain lock"),
    psycopg.errors.TooManyConnections("too many clients"),
    psycopg.OperationalError("server closed the connection unexpectedly"),  # no SQLSTATE: no answer
    HttpStatusError("http://x/", 429, "Too Many Requests"),
    HttpStatusError("http://x/", 503, "Service Unavailable"),
    urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
    TimeoutError("timed out"),
    ConnectionResetError(104, "Connection reset by peer"),
]
PERMANENT = [
    psycopg.errors.InvalidPassword("password authentication failed"),
    psycopg.errors.UndefinedTable('relation "nope" does not exist'),
    psycopg.errors.SyntaxError("syntax error at or near"),
    psycopg.errors.UniqueViolation("duplicate key"),
    HttpStatusError("http://x/", 404, "Not Found"),
    HttpStatusError("http://x/", 401, "Unauthorized"),
    DatabaseUnreachable("Cannot connect: password authentication failed for user x"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)


def flaky(failures: list[BaseException], result: str = "done"):
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= len(failures):
            raise failures[calls["n"] - 1]
        return result

    return call, calls


def test_waits_are_full_jitter_within_caps_and_none_after_the_last_attempt() -> None:
    policy = Backoff(max_attempts=6, base=1.0, max_wait=5.0, max_total=1000)
    call, calls = flaky([TimeoutError()] * 10)
    waits: list[float] = []
    with pytest.raises(TimeoutError):
        retrying("flaky", backoff=policy, sleep=waits.append, rng=random.Random(7))(call)
    assert calls["n"] == 6 and len(waits) == 5
    ceilings = [1.0, 2.0, 4.0, 5.0, 5.0]  # base * 2^(n-1), capped at max_wait
    assert all(0.0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert len(set(waits)) == 5  # jittered, not a fixed schedule


def test_success_after_transient_failures_returns_the_result() -> None:
    call, calls = flaky([psycopg.errors.SerializationFailure("x"), psycopg.errors.DeadlockDetected("y")])
    waits: list[float] = []
    assert retrying("tx", sleep=waits.append)(call) == "done"
    assert calls["n"] == 3 and len(waits) == 2


def test_permanent_failure_is_raised_at_once() -> None:
    call, calls = flaky([psycopg.errors.UndefinedTable("no such table")] * 3)
    waits: list[float] = []
    with pytest.raises(psycopg.errors.UndefinedTable):
        retrying("read", sleep=waits.append)(call)
    assert calls["n"] == 1 and waits == []


def test_total_cap_counts_planned_waits() -> None:
    call, calls = flaky([HttpStatusError("u", 503, "x", retry_after=4)] * 10)
    waits: list[float] = []
    with pytest.raises(HttpStatusError):
        retrying("t", backoff=Backoff(max_attempts=10, max_wait=10, max_total=10), sleep=waits.append)(call)
    assert waits == [4, 4] and calls["n"] == 3


def test_retry_after_header_forms() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_a_real_missing_table_is_not_retried(warehouse_dsn: str) -> None:
    attempts = {"n": 0}

    def work() -> None:
        attempts["n"] += 1
        with connect(warehouse_dsn) as conn:
            conn.execute("SELECT * FROM no_such_table_here")

    with pytest.raises(psycopg.errors.UndefinedTable):
        retrying("read", sleep=lambda s: None)(work)
    assert attempts["n"] == 1


def test_connection_dropped_mid_read_is_retried_and_data_is_exact(
    warehouse_dsn: str, warehouse_conn: psycopg.Connection, fresh_schema: str
) -> None:
    table = TableRef(fresh_schema, "orders_enriched")
    warehouse_conn.execute(
        sql.SQL(
            "CREATE TABLE {} AS SELECT g AS id, DATE '2025-03-01' + (g % 3) AS order_date, "
            "1 + g % 4 AS category_id, "
            "'c' || (1 + g % 4) AS category_name, 1 + g % 50 AS user_id, (g % 997)::numeric(12,2) AS amount, "
            "round((g % 997) * 0.9, 2)::float8 AS amount_eur FROM generate_series(1, 3000) g"
        ).format(table.ident)
    )
    expected = warehouse_conn.execute(
        sql.SQL(
            "SELECT order_date, category_id, category_name, user_id, amount, amount_eur FROM {} "
            "WHERE order_date >= '2025-03-02' AND order_date < '2025-03-03' "
            "ORDER BY order_date, user_id, amount"
        ).format(table.ident)
    ).fetchall()

    app = f"etl-test-drop-{fresh_schema}"
    holder = psycopg.connect(warehouse_dsn)  # holds a lock so the read blocks where we can see it
    holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table.ident))
    waits: list[float] = []
    out: dict[str, object] = {}

    def read() -> None:
        try:
            out["frame"] = aggregate.read_day(
                functools.partial(connect, warehouse_dsn, application_name=app),
                table,
                dt.date(2025, 3, 2),
                dt.date(2025, 3, 3),
                sleep=waits.append,
            )
        except BaseException as exc:  # reported by the assertion below
            out["error"] = exc

    thread = threading.Thread(target=read)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:  # poll the database, not the clock
            row = warehouse_conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (app,),
            ).fetchone()
            pid = row[0] if row else None
        assert pid is not None, "the read never started waiting on the table"
        assert warehouse_conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    finally:
        holder.rollback()
        holder.close()
        thread.join(60)
    assert "error" not in out, out.get("error")
    assert len(waits) == 1  # one failed attempt, one retry
    frame = out["frame"]
    got = sorted(
        frame.select("order_date", "category_id", "category_name", "user_id", "amount", "amount_eur").rows(),
        key=lambda r: (r[0], r[3], r[4]),
    )
    assert got == expected and len(got) == 1000
