"""The demo's event producer: order changes written with the outbox pattern.

Each batch is ONE source transaction holding the order changes (``shop.orders`` INSERT, UPDATE of
amount/status, cancellation = status ``cancelled``) and their events in ``etl_stream.events``, so the
event stream and ``shop.orders`` can never disagree. Each event carries the order's version (1, 2, 3…
per order, counted in ``etl_stream.order_versions``), its new state and its state before the change
(``old``), so a consumer can derive an additive delta from the event alone, in any order.

Dirty events come in the demo's kinds (see :mod:`etl_assets.demo.seed`): negative or huge amounts,
creation dates in the future, unknown category ids (the last is not a rejection in clean.orders).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from etl_assets.demo.seed import CATEGORIES, DEFAULT_DIRTY_SHARE, FUTURE_AFTER_DAYS, HUGE_AMOUNT, NEXT_STATUS
from etl_assets.stream import queue

KINDS = ("created", "updated", "cancelled")
ORDER_FIELDS = ("user_id", "category_id", "amount", "status", "created_at")


@dataclass(frozen=True)
class Change:
    """One order change. ``order_id`` None means a new order; ``new`` holds the fields that change
    (for a creation: every field in :data:`ORDER_FIELDS`)."""

    kind: str
    order_id: int | None = None
    new: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProduceResult:
    events: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    first_id: int | None = None
    last_id: int | None = None
    seconds: float = 0.0


def _state(row: Sequence[Any]) -> dict[str, Any]:
    user_id, category_id, amount, status, created_at = row
    return {
        "user_id": user_id,
        "category_id": category_id,
        "amount": str(amount),
        "status": status,
        "created_at": created_at.isoformat(),
    }


def apply_changes(conn: psycopg.Connection, changes: Sequence[Change]) -> list[int]:
    """Apply ``changes`` and enqueue their events in the caller's transaction; returns the event ids.

    An order may appear once per call. Updates and cancellations of orders that no longer exist are
    dropped (no change, no event). Takes the producers' lock first (see :mod:`queue`), which also
    makes new order ids (max + 1) safe between concurrent producers.
    """
    queue.lock_for_enqueue(conn)
    existing_ids = [c.order_id for c in changes if c.order_id is not None]
    if len(set(existing_ids)) != len(existing_ids):
        raise ValueError("an order may change at most once per batch")
    old: dict[int, dict[str, Any]] = {}
    if existing_ids:
        rows = conn.execute(
            "SELECT id, user_id, category_id, amount, status, created_at FROM shop.orders"
            " WHERE id = ANY(%s) FOR UPDATE",
            (existing_ids,),
        ).fetchall()
        old = {r[0]: _state(r[1:]) for r in rows}
    next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM shop.orders").fetchone()[0]
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    events: list[tuple[int, str, dict[str, Any], dict[str, Any] | None]] = []
    for change in changes:
        if change.order_id is None:
            new = dict(change.new)
            order_id, next_id = next_id, next_id + 1
            inserts.append((order_id, *(new[f] for f in ORDER_FIELDS)))
            state = {**new, "amount": str(new["amount"]), "created_at": new["created_at"].isoformat()}
            events.append((order_id, change.kind, state, None))
            continue
        before = old.get(change.order_id)
        if before is None:
            continue
        state = {**before, **{k: str(v) for k, v in change.new.items()}}
        updates.append((change.order_id, Decimal(state["amount"]), state["status"]))
        events.append((change.order_id, change.kind, state, before))
    if inserts:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO shop.orders (id, user_id, category_id, amount, status, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, now())",
                inserts,
            )
    if updates:
        conn.execute(
            """UPDATE shop.orders o SET amount = u.amount, status = u.status,
                   updated_at = greatest(now(), o.updated_at + interval '1 millisecond')
               FROM unnest(%s::bigint[], %s::numeric[], %s::text[]) AS u(id, amount, status)
               WHERE o.id = u.id""",
            ([u[0] for u in updates], [u[1] for u in updates], [u[2] for u in updates]),
        )
    if not events:
        return []
    versions = dict(
        conn.execute(
            """INSERT INTO etl_stream.order_versions AS v (order_id, version)
               SELECT unnest(%s::bigint[]), 1
               ON CONFLICT (order_id) DO UPDATE SET version = v.version + 1
               RETURNING order_id, version""",
            ([e[0] for e in events],),
        ).fetchall()
    )
    payloads = [
        {"order_id": oid, "version": versions[oid], "kind": kind, "new": state, "old": before}
        for oid, kind, state, before in events
    ]
    return queue.enqueue(conn, payloads)


class ChangeMaker:
    """Random application-like changes: half creations, a third updates, the rest cancellations."""

    def __init__(self, seed: int | None = None, dirty_share: float = DEFAULT_DIRTY_SHARE) -> None:
        self.rng = random.Random(seed)
        self.dirty_share = dirty_share

    def _dirty(self) -> bool:
        return self.rng.random() < self.dirty_share

    def creation(self, now: datetime, max_user: int) -> Change:
        rng = self.rng
        amount = Decimal(str(round(5 * 200 ** rng.random(), 2))).quantize(Decimal("0.01"))
        category = rng.randint(1, len(CATEGORIES))
        created = now - timedelta(seconds=rng.randint(0, 3600))
        if self._dirty():
            kind = rng.randrange(4)
            if kind == 0:
                category = 900 + rng.randrange(100)  # unknown category (kept by clean.orders)
            elif kind == 1:
                amount = -amount
            elif kind == 2:
                amount = Decimal(HUGE_AMOUNT) + amount * 10000
            else:
                created = now + timedelta(days=FUTURE_AFTER_DAYS + rng.randrange(365))
        new = {
            "user_id": rng.randint(1, max(1, max_user)),
            "category_id": category,
            "amount": amount,
            "status": "pending",
            "created_at": created,
        }
        return Change("created", None, new)

    def update(self, order_id: int, status: str, amount: Decimal) -> Change:
        if self._dirty():
            return Change("updated", order_id, {"amount": -abs(amount) - Decimal("0.01")})
        if status in ("pending", "paid") and self.rng.random() < 0.5:
            return Change(
                "updated", order_id, {"amount": (amount * Decimal("1.05")).quantize(Decimal("0.01"))}
            )
        return Change("updated", order_id, {"status": NEXT_STATUS.get(status, status)})

    def batch(self, conn: psycopg.Connection, n: int) -> list[Change]:
        """``n`` changes, picking existing orders (old and new: late events for past days) at random."""
        now, max_order, max_user = conn.execute(
            "SELECT now(), (SELECT coalesce(max(id), 0) FROM shop.orders),"
            " (SELECT coalesce(max(id), 0) FROM shop.customers)"
        ).fetchone()
        picks: dict[int, str] = {}
        kinds = []
        for _ in range(n):
            r = self.rng.random()
            kind = "created" if r < 0.5 or not max_order else ("updated" if r < 0.85 else "cancelled")
            kinds.append(kind)
            if kind != "created":
                picks[self.rng.randint(1, max_order)] = kind
        rows = {}
        if picks:
            rows = {
                r[0]: (r[1], r[2])
                for r in conn.execute(
                    "SELECT id, status, amount FROM shop.orders WHERE id = ANY(%s)", (list(picks),)
                ).fetchall()
            }
        changes = [self.creation(now, max_user) for k in kinds if k == "created"]
        for order_id, kind in picks.items():
            if order_id not in rows:
                changes.append(self.creation(now, max_user))
                continue
            status, amount = rows[order_id]
            if kind == "cancelled" and status != "cancelled":
                changes.append(Change("cancelled", order_id, {"status": "cancelled"}))
            else:
                changes.append(self.update(order_id, status, amount))
        while len(changes) < n:
            changes.append(self.creation(now, max_user))
        return changes


def produce(
    dsn: str,
    events: int,
    *,
    rate: float | None = None,
    seed: int | None = None,
    dirty_share: float | None = None,
    batch_size: int | None = None,
    on_commit: Callable[[list[int], float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ProduceResult:
    """Write ``events`` order events, ``rate`` per second when given (else as fast as possible).

    Each batch is one transaction; at a rate the batch is a tenth of a second's worth (ten commits a
    second: on a loaded 2-core machine a transaction of a few events costs tens of milliseconds, so
    smaller batches could not keep 1,000 events/s). ``on_commit(ids, time.time())`` is called after
    each COMMIT (the benchmark measures latency from there).
    """
    from etl_assets.connections import connect
    from etl_assets.settings import SOURCE_DSN_VAR

    size = batch_size or (max(1, int(rate // 10)) if rate else 500)
    maker = ChangeMaker(seed, DEFAULT_DIRTY_SHARE if dirty_share is None else dirty_share)
    result = ProduceResult()
    began = time.perf_counter()
    with connect(dsn, role="source", env_var=SOURCE_DSN_VAR) as conn:
        queue.require_installed(conn)
        conn.rollback()
        while result.events < events and not (should_stop and should_stop()):
            n = min(size, events - result.events)
            with conn.transaction():
                changes = maker.batch(conn, n)
                ids = apply_changes(conn, changes)
            committed = time.time()
            if on_commit:
                on_commit(ids, committed)
            result.batches += 1
            result.events += len(ids)
            for change in changes:
                result.by_kind[change.kind] = result.by_kind.get(change.kind, 0) + 1
            if ids:
                result.first_id = ids[0] if result.first_id is None else result.first_id
                result.last_id = ids[-1]
            if rate:
                delay = began + result.events / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
    result.seconds = time.perf_counter() - began
    return result
