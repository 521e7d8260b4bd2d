"""Retries with backoff for calls inside a step (database work, HTTP requests), built on tenacity.

Which applies where:

- Inside a step, a call that may hit a *transient* failure (a dropped or refused connection, a
  timeout, a serialization failure or deadlock, HTTP 429 or 5xx) is wrapped with :func:`retrying`:
  exponential backoff with full jitter (each wait uniform in ``[0, min(cap, base * 2**n)]``), a cap on
  each wait and on the total time, one log line per failed attempt, and no sleep after the last
  attempt. A ``Retry-After`` header is honoured (capped). *Permanent* failures (bad SQL, a missing
  table, invalid credentials, HTTP 4xx other than 429) are raised at once.
- A whole step is retried by Dagster's ``RetryPolicy`` (:data:`STEP_RETRY_POLICY`); assets raise
  ``dagster.Failure(allow_retries=False)`` for permanent errors so the step is not retried in vain.

Only idempotent units of work may be wrapped: a database unit must open its own connection and
transaction per attempt (:func:`with_connection_retry`), so a retried attempt starts from scratch.
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import ssl
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import dagster as dg
import psycopg
import tenacity

from etl_assets.errors import DatabaseUnreachable

log = logging.getLogger("etl_assets.retry")

T = TypeVar("T")

#: Whole-step retries (Dagster): two more tries after waits of about (2^n - 1) * 2 s, full jitter.
#: Dagster retries any exception raised in the step (including in the IO manager); assets raise
#: ``dagster.Failure(allow_retries=False)`` for the permanent errors they can tell apart.
STEP_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL
)

# SQLSTATEs that mean "try again": connection exceptions (class 08), admin/crash shutdown and
# "cannot connect now" (57P01-57P03), too many connections, serialization failure, deadlock, lock
# not available, and query cancelled by a statement timeout.
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03", "57014"}
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class HttpStatusError(Exception):
    """An HTTP response with an error status; carries the status and any ``Retry-After`` seconds."""

    def __init__(self, url: str, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {reason} from {url}")
        self.url = url
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` may succeed; False for errors that will fail the same way again."""
    if isinstance(exc, HttpStatusError):
        return exc.status in _TRANSIENT_HTTP
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in _TRANSIENT_HTTP
    if isinstance(exc, urllib.error.URLError):
        # refused, reset, timed out: transient; unknown host and TLS failures: configuration
        reason = exc.reason
        return isinstance(reason, OSError) and not isinstance(reason, (socket.gaierror, ssl.SSLError))
    if isinstance(exc, ssl.SSLError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return True
    if isinstance(exc, DatabaseUnreachable):
        cause = exc.__cause__ or exc.__context__
        text = str(exc).lower()
        if "password" in text or "authentication" in text or "does not exist" in text:
            return False
        return cause is None or is_transient(cause)
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # no server answer: refused, reset, closed, timed out
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        if state.startswith("28"):  # invalid authorization / password
            return False
        return state.startswith("08") or state in _TRANSIENT_SQLSTATES
    return False


def _retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, HttpStatusError):
        return exc.retry_after
    if isinstance(exc, urllib.error.HTTPError):
        return parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
    return None


@dataclass(frozen=True)
class Backoff:
    """How long to keep trying. Waits: full jitter over ``base * 2**n`` capped at ``max_wait``;
    the attempts stop at ``max_attempts`` or when the next wait would pass ``max_total`` seconds."""

    max_attempts: int = 5
    base: float = 0.5
    max_wait: float = 10.0
    max_total: float = 60.0

    def wait_for(self, attempt: int, exc: BaseException | None, rng: random.Random) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(hinted, self.max_wait)
        ceiling = min(self.max_wait, self.base * (2 ** (attempt - 1)))
        return rng.uniform(0.0, ceiling)


def retrying(
    what: str,
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    logger: logging.Logger | Any | None = None,
    classify: Callable[[BaseException], bool] = is_transient,
    rng: random.Random | None = None,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` for one unit of work named ``what`` (used in the log lines).

    Use as ``retrying("fetch rates")(fn, *args)``. ``sleep`` can be replaced (tests record the waits
    instead of sleeping); the total-time cap counts both the elapsed time and the waits planned, so it
    holds with a fake sleep too. The last exception is re-raised unchanged.
    """
    policy = backoff or Backoff()
    generator = rng or random.Random()
    out = logger or log

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return policy.wait_for(state.attempt_number, exc, generator)

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        spent = max(state.seconds_since_start or 0.0, state.idle_for)
        return spent + (state.upcoming_sleep or 0.0) > policy.max_total

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        out.warning(
            f"{what}: attempt {state.attempt_number} of {policy.max_attempts} failed "
            f"({type(exc).__name__}: {_first_line(exc)}); retrying in {state.upcoming_sleep:.2f}s"
        )

    def give_up(state: tenacity.RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None and classify(exc):
            out.warning(
                f"{what}: attempt {state.attempt_number} failed ({type(exc).__name__}: "
                f"{_first_line(exc)}); giving up after {state.attempt_number} attempts"
            )
        assert exc is not None
        raise exc

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(classify),
        wait=wait,
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        reraise=True,
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip()
    return text.splitlines()[0][:300] if text else ""


def with_connection_retry(
    open_connection: Callable[[], Any],
    work: Callable[[psycopg.Connection], T],
    *,
    what: str,
    **options: Any,
) -> T:
    """Run ``work(conn)`` on a fresh connection per attempt, retrying transient database failures.

    ``open_connection`` is a context-manager factory such as ``PostgresResource.connect``. ``work`` must
    be idempotent (read-only, or writing in one transaction it commits at the end): a connection
    dropped mid-way rolls its transaction back, so the next attempt starts from the same state.
    """

    def attempt() -> T:
        with open_connection() as conn:
            return work(conn)

    return retrying(what, **options)(attempt)
