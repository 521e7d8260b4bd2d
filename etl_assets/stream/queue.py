"""The stream's queue: a plain table in the source database, claimed with ``FOR UPDATE SKIP LOCKED``.

Everything lives in the source schema ``etl_stream`` (installed by ``etl-assets stream install``):

- ``etl_stream.events``: one row per message. ``id`` comes from a sequence and, because every
  producer takes :data:`PRODUCER_LOCK` right before its INSERT and holds it to COMMIT, ids become
  visible in commit order (a reader that sees id N sees every committed id below N: the Lambda batch
  layer's watermark relies on it). ``visible_at`` is the visibility timeout: a claim pushes it
  ``vt`` seconds ahead, an acknowledgement deletes the row, so a consumer that dies before
  acknowledging lets the message reappear (at-least-once). ``deliveries`` counts claims: a message
  claimed too often is a poison message the processor dead-letters.
- ``etl_stream.order_versions``: the latest version handed out per order (the producer's counter).
- a statement trigger that sends ``NOTIFY etl_stream`` after each INSERT, which is delivered at
  COMMIT: consumers sleeping in LISTEN wake exactly when there is something to claim.

Why a plain table and not PGMQ: see docs/streams.md (measured side by side; no dependency, and
the claim, ack and visibility timeout are four short statements this module owns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.errors import MissingObject

SCHEMA = "etl_stream"
CHANNEL = "etl_stream"
DEFAULT_VT = 30.0  # seconds a claimed message stays invisible to other consumers
# An arbitrary fixed advisory-lock key ("etlstrm"): held by producers from their INSERT to COMMIT.
PRODUCER_LOCK = 0x65746C7374726D

INSTALL_DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS etl_stream",
    """CREATE TABLE IF NOT EXISTS etl_stream.events (
    id           bigserial PRIMARY KEY,
    payload      jsonb       NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    visible_at   timestamptz NOT NULL DEFAULT '-infinity',
    deliveries   integer     NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS etl_stream.order_versions (
    order_id  bigint  PRIMARY KEY,
    version   integer NOT NULL
)""",
    """CREATE OR REPLACE FUNCTION etl_stream.notify_events() RETURNS trigger
LANGUAGE plpgsql AS $etl_stream$
BEGIN
    PERFORM pg_notify('etl_stream', '');
    RETURN NULL;
END
$etl_stream$""",
    "DROP TRIGGER IF EXISTS events_notify ON etl_stream.events",
    """CREATE TRIGGER events_notify AFTER INSERT ON etl_stream.events
FOR EACH STATEMENT EXECUTE FUNCTION etl_stream.notify_events()""",
)

UNINSTALL_DDL: tuple[str, ...] = ("DROP SCHEMA IF EXISTS etl_stream CASCADE",)


@dataclass(frozen=True)
class Message:
    """One claimed message. ``payload`` is the producer's JSON object."""

    id: int
    payload: dict[str, Any] = field(repr=False)
    enqueued_at: datetime
    deliveries: int


@dataclass(frozen=True)
class QueueStatus:
    installed: bool
    messages: int = 0
    invisible: int = 0  # claimed, not yet acknowledged
    oldest_enqueued_at: datetime | None = None
    max_id: int | None = None


def is_installed(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('etl_stream.events') IS NOT NULL").fetchone()[0]


def require_installed(conn: psycopg.Connection) -> None:
    """Raise a clear error when the queue is missing from the source."""
    if not is_installed(conn):
        raise MissingObject(
            "The stream queue etl_stream.events does not exist in the source database; "
            "run `etl-assets stream install` first (`--dry-run` prints its SQL)."
        )


def install(conn: psycopg.Connection) -> bool:
    """Create the queue in one transaction; False when it was already there (it is then left as is)."""
    with conn.transaction():
        existed = is_installed(conn)
        for statement in INSTALL_DDL:
            conn.execute(statement)
    return not existed


def uninstall(conn: psycopg.Connection) -> bool:
    """Drop the queue and every message still in it; False when there was nothing to drop."""
    with conn.transaction():
        existed = is_installed(conn)
        for statement in UNINSTALL_DDL:
            conn.execute(statement)
    return existed


def status(conn: psycopg.Connection) -> QueueStatus:
    if not is_installed(conn):
        return QueueStatus(installed=False)
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE visible_at > clock_timestamp()), min(enqueued_at), max(id)"
        " FROM etl_stream.events"
    ).fetchone()
    return QueueStatus(True, row[0], row[1], row[2], row[3])


def lock_for_enqueue(conn: psycopg.Connection) -> None:
    """Take the producers' lock (to COMMIT) so that message ids become visible in commit order."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRODUCER_LOCK,))


def enqueue(conn: psycopg.Connection, payloads: Sequence[dict[str, Any]]) -> list[int]:
    """Insert messages in the caller's transaction (the outbox: they commit with the change they
    describe); returns their ids. Takes :func:`lock_for_enqueue` first."""
    if not payloads:
        return []
    lock_for_enqueue(conn)
    from psycopg.types.json import Jsonb

    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO etl_stream.events (payload) SELECT unnest(%s::jsonb[]) RETURNING id",
            ([Jsonb(p) for p in payloads],),
        )
        return [r[0] for r in cur.fetchall()]


_CLAIM = sql.SQL(
    """WITH c AS (
    SELECT id FROM etl_stream.events
    WHERE visible_at <= now()
    ORDER BY id
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
UPDATE etl_stream.events e
SET visible_at = clock_timestamp() + make_interval(secs => %(vt)s), deliveries = e.deliveries + 1
FROM c WHERE e.id = c.id
RETURNING e.id, e.payload, e.enqueued_at, e.deliveries"""
)


def claim(conn: psycopg.Connection, n: int, vt: float = DEFAULT_VT) -> list[Message]:
    """Claim up to ``n`` visible messages, oldest first, hiding them for ``vt`` seconds.

    Runs and commits in its own transaction (the connection may be autocommit), so the claim holds
    no lock while the batch is processed: another consumer skips these rows until ``vt`` passes.
    """
    with conn.transaction():
        rows = conn.execute(_CLAIM, {"n": n, "vt": vt}).fetchall()
    return sorted((Message(r[0], r[1], r[2], r[3]) for r in rows), key=lambda m: m.id)


def ack(conn: psycopg.Connection, ids: Sequence[int]) -> int:
    """Acknowledge (delete) messages; call only after their effects committed in the sink."""
    if not ids:
        return 0
    with conn.transaction():
        return conn.execute(
            "DELETE FROM etl_stream.events WHERE id = ANY(%b)", (list(ids),), binary=True
        ).rowcount


def release(conn: psycopg.Connection, ids: Sequence[int]) -> int:
    """Make claimed messages visible again now (a consumer that stops cleanly hands them back)."""
    if not ids:
        return 0
    with conn.transaction():
        return conn.execute(
            "UPDATE etl_stream.events SET visible_at = '-infinity' WHERE id = ANY(%s)", (list(ids),)
        ).rowcount
