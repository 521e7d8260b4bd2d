"""One micro-batch, the one code path both drivers share (the Dagster asset and ``stream run``).

:func:`process_once` claims up to ``max_events`` messages from the source queue, writes everything
they cause to the warehouse in ONE transaction (:mod:`etl_assets.stream.sink`), and acknowledges the
messages only after that COMMIT. A crash anywhere before the acknowledgement leaves the messages to
reappear after their visibility timeout; the sink then finds their ids in ``stream.processed_events``
and skips them. So delivery is at-least-once and the effect exactly-once.

Per event:

- a payload that cannot be read (missing fields, bad numbers or dates) is dead-lettered as
  ``MalformedEvent``; a message delivered more than ``max_deliveries`` times (it kept crashing its
  processor) as ``TooManyDeliveries``: a poison event never blocks the stream;
- a new state failing clean.orders' rules is dead-lettered with the rule's name;
- otherwise the order's sink row is replaced when the event's version is newer (else ``stale``);
- whatever the outcome, its additive delta (new minus old contribution) goes to the speed layer,
  because the source changed either way.

Fault injection for the crash drills: ``ETL_STREAM_FAULT=before_commit`` or ``after_commit`` makes
the process SIGKILL itself at that point (a drill sets it for one process only).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg

from etl_assets import dlq
from etl_assets.stream import queue, sink
from etl_assets.stream.lambda_.measures import contribution, passing
from etl_assets.transforms.orders import MESSAGES

FAULT_VAR = "ETL_STREAM_FAULT"
DEFAULT_MAX_DELIVERIES = 5
DLQ_TYPES = {
    "event_id": "int",
    "order_id": "int",
    "version": "int",
    "kind": "str",
    "user_id": "int",
    "category_id": "int",
    "amount": "decimal",
    "status": "str",
    "created_at": "datetime[UTC]",
    "raw": "json",
}


class MalformedEvent(ValueError):
    """The payload is not an order event this processor can read."""


@dataclass(frozen=True)
class Event:
    id: int
    order_id: int
    version: int
    kind: str
    new: dict[str, Any]
    old: dict[str, Any] | None
    enqueued_at: dt.datetime


@dataclass
class BatchResult:
    claimed: int = 0
    applied: int = 0
    stale: int = 0
    duplicate: int = 0
    dead: int = 0
    deltas: int = 0
    max_event_id: int | None = None
    oldest_enqueued_at: dt.datetime | None = None
    committed_at: float | None = None
    seconds: float = 0.0
    dead_by_class: dict[str, int] = field(default_factory=dict)


def _state(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise MalformedEvent("state is not a JSON object")
    try:
        created = dt.datetime.fromisoformat(raw["created_at"])
        return {
            "user_id": int(raw["user_id"]),
            "category_id": int(raw["category_id"]),
            "amount": Decimal(str(raw["amount"])),
            "status": str(raw["status"]),
            "created_at": created if created.tzinfo else created.replace(tzinfo=dt.UTC),
        }
    except KeyError as exc:
        raise MalformedEvent(f"field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise MalformedEvent(f"unreadable value ({type(exc).__name__}: {exc})") from None


def parse(message: queue.Message) -> Event:
    p = message.payload
    if not isinstance(p, dict):
        raise MalformedEvent("payload is not a JSON object")
    try:
        order_id, version, kind = int(p["order_id"]), int(p["version"]), str(p["kind"])
    except KeyError as exc:
        raise MalformedEvent(f"field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(f"unreadable order id or version ({exc})") from None
    if version < 1:
        raise MalformedEvent(f"version {version} is not positive")
    old = None if p.get("old") is None else _state(p["old"])
    return Event(message.id, order_id, version, kind, _state(p.get("new")), old, message.enqueued_at)


def _dead_row(message: queue.Message, event: Event | None) -> dict[str, Any]:
    row: dict[str, Any] = {"event_id": message.id, "raw": message.payload}
    if event is not None:
        row.update({"order_id": event.order_id, "version": event.version, "kind": event.kind, **event.new})
    return row


def _fault(point: str) -> None:
    if os.environ.get(FAULT_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def write(
    warehouse: psycopg.Connection,
    messages: Sequence[queue.Message],
    *,
    run_id: str,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    now: dt.datetime | None = None,
    speed: bool = True,
    identities: dict[int, str] | None = None,
) -> BatchResult:
    """Write the effects of ``messages`` in one warehouse transaction (not acknowledged here).

    A replay of dead letters passes ``speed=False`` (the speed layer already holds the event's
    delta: it follows the source, not corrections) and ``identities`` (event id -> the dead letter's
    row hash, so an event failing again updates its entry instead of adding one).
    """
    identities = identities or {}
    result = BatchResult(claimed=len(messages))
    if not messages:
        return result
    result.max_event_id = max(m.id for m in messages)
    result.oldest_enqueued_at = min(m.enqueued_at for m in messages)
    origin = dlq.Origin(asset_key=sink.SINK_ASSET, run_id=run_id, step="stream", target="stream.orders")
    with warehouse.transaction():
        seen = sink.already_processed(warehouse, [m.id for m in messages])
        result.duplicate = len(seen)
        events: list[Event] = []
        rejected: list[dlq.Rejected] = []
        outcomes: list[tuple[int, int | None, int | None, str, object]] = []
        for message in messages:
            if message.id in seen:
                continue
            event: Event | None = None
            try:
                event = parse(message)
                if message.deliveries > max_deliveries:
                    raise MalformedEvent(f"delivered {message.deliveries} times without being processed")
            except MalformedEvent as exc:
                error_class = "TooManyDeliveries" if event is not None else "MalformedEvent"
                rejected.append(
                    dlq.Rejected.of(
                        _dead_row(message, event),
                        DLQ_TYPES,
                        stage="parse",
                        error_class=error_class,
                        message=str(exc),
                        identity=identities.get(message.id),
                    )
                )
                outcomes.append((message.id, None, None, "dead", message.enqueued_at))
                result.dead_by_class[error_class] = result.dead_by_class.get(error_class, 0) + 1
                continue
            events.append(event)
        new_reasons = passing([e.new for e in events], now)
        old_reasons = passing([e.old or {} for e in events], now)
        valid: list[sink.SinkRow] = []
        by_message = {m.id: m for m in messages}
        deltas: dict[tuple[int, dt.date, int], list[Any]] = {}
        for event, reason, old_reason in zip(events, new_reasons, old_reasons, strict=True):
            for state, why, sign in ((event.old, old_reason, -1), (event.new, reason, 1)):
                c = contribution(state, why)
                if c is not None:
                    day, category, orders, amount = c
                    acc = deltas.setdefault((event.id, day, category), [0, Decimal(0)])
                    acc[0] += sign * orders
                    acc[1] += sign * amount
            if reason is not None:
                rejected.append(
                    dlq.Rejected.of(
                        _dead_row(by_message[event.id], event),
                        DLQ_TYPES,
                        stage="validate",
                        error_class=reason,
                        message=MESSAGES[reason],
                        identity=identities.get(event.id),
                    )
                )
                outcomes.append((event.id, event.order_id, event.version, "dead", event.enqueued_at))
                result.dead_by_class[reason] = result.dead_by_class.get(reason, 0) + 1
                continue
            n = event.new
            valid.append(
                sink.SinkRow(
                    event.id,
                    event.order_id,
                    event.version,
                    n["user_id"],
                    n["category_id"],
                    n["amount"],
                    n["status"],
                    n["created_at"],
                )
            )
        applied = sink.upsert_latest(warehouse, valid)
        by_id = {e.id: e for e in events}
        for event_id, outcome in [(i, "applied") for i in applied.applied] + [
            (i, "stale") for i in applied.stale
        ]:
            e = by_id[event_id]
            outcomes.append((event_id, e.order_id, e.version, outcome, e.enqueued_at))
        delta_rows = [sink.Delta(k[0], k[1], k[2], v[0], v[1]) for k, v in deltas.items() if v[0] or v[1]]
        if speed:
            sink.add_deltas(warehouse, delta_rows)
        dlq.record(warehouse, origin, rejected)
        # last before COMMIT: processed_at is then (nearly) the sink's commit time, which the
        # benchmark's latency reads
        sink.record_processed(warehouse, outcomes)
        result.applied, result.stale = len(applied.applied), len(applied.stale)
        result.dead, result.deltas = len(rejected), len(delta_rows)
        _fault("before_commit")
    result.committed_at = time.time()
    return result


def process_once(
    source: psycopg.Connection,
    warehouse: psycopg.Connection,
    *,
    max_events: int = 1000,
    vt: float = queue.DEFAULT_VT,
    run_id: str = "stream",
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
) -> BatchResult:
    """Claim, write, commit, then acknowledge one micro-batch; both connections autocommit."""
    began = time.perf_counter()
    messages = queue.claim(source, max_events, vt)
    result = write(warehouse, messages, run_id=run_id, max_deliveries=max_deliveries)
    _fault("after_commit")
    queue.ack(source, [m.id for m in messages])
    result.seconds = time.perf_counter() - began
    return result
