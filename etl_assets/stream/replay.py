"""Replaying the stream's dead letters (asset ``stream/orders``) through the processor as it is now.

``etl-assets dlq replay`` (the ``dlq_replay`` job) hands this module the pending entries of
``stream/orders``; in the replay's transaction each is rebuilt into its event and written by
:func:`etl_assets.stream.processor.write`, the same code as the stream, so the version rule holds
(a replayed event older than the order's applied version is recorded but changes nothing). The
speed layer is left alone: it follows the source, and already holds every event's delta.

An entry of the ``validate`` stage is rebuilt from its fields (correct them in
``etl.dead_letters.payload`` before replaying); a ``parse``-stage entry from the message it kept
(``raw``). Entries that pass are marked replayed; entries that fail again stay pending with the new
error and ``attempts + 1``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from etl_assets import dlq
from etl_assets.stream import processor, queue, sink


def _payload(letter: dlq.DeadLetter) -> Any:
    p = letter.payload
    if letter.stage != "validate":
        return p.get("raw")
    new = {k: p.get(k) for k in ("user_id", "category_id", "amount", "status", "created_at")}
    return {"order_id": p.get("order_id"), "version": p.get("version"), "kind": p.get("kind"), "new": new}


def replay_letters(
    conn: psycopg.Connection, letter_ids: list[int], *, run_id: str, step: str | None, report: Any
) -> None:
    """Replay pending entries in the caller's transaction; fills ``report`` (an ``AssetReplay``)."""
    sink.ensure_tables(conn)
    letters = dlq.fetch(conn, ids=letter_ids, status="pending", lock=True)
    report.considered = len(letters)
    now = dt.datetime.now(dt.UTC)
    for letter in letters:
        event_id = int(letter.payload["event_id"])
        conn.execute(
            "DELETE FROM stream.processed_events WHERE event_id = %s AND outcome = 'dead'", (event_id,)
        )
        message = queue.Message(event_id, _payload(letter), now, 1)
        result = processor.write(
            conn, [message], run_id=run_id, speed=False, identities={event_id: letter.row_hash}
        )
        if result.dead:
            report.failed_again += 1
            for name, n in result.dead_by_class.items():
                report.by_class[name] = report.by_class.get(name, 0) + n
        else:
            dlq.mark_replayed(conn, [letter.id], run_id)
            report.replayed += 1
