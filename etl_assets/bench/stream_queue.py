"""Side-by-side throughput of the two queue candidates: PGMQ (plain-SQL install) and our table.

Both are driven through one psycopg connection with the same batch size: enqueue ``n`` messages in
transactions of ``batch``, then claim ``batch`` at a time with a visibility timeout and acknowledge
(delete) each claimed batch. PGMQ is measured only when its PyPI client (which carries the SQL) is
installed; it is not a dependency of the project.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from etl_assets.stream import queue


@dataclass(frozen=True)
class QueueFigures:
    name: str
    messages: int
    enqueue_s: float
    drain_s: float

    @property
    def per_second(self) -> float:
        return self.messages / (self.enqueue_s + self.drain_s)


def _payloads(lo: int, n: int) -> list[dict]:
    return [{"order_id": i, "version": 1, "kind": "created", "amount": "12.50"} for i in range(lo, lo + n)]


def measure_table(dsn: str, n: int = 100_000, batch: int = 1000) -> QueueFigures:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queue.uninstall(conn)
        queue.install(conn)
        began = time.perf_counter()
        for lo in range(0, n, batch):
            with conn.transaction():
                queue.enqueue(conn, _payloads(lo, min(batch, n - lo)))
        enqueued = time.perf_counter()
        done = 0
        while True:
            messages = queue.claim(conn, batch, vt=30)
            if not messages:
                break
            done += queue.ack(conn, [m.id for m in messages])
        drained = time.perf_counter()
        queue.uninstall(conn)
    assert done == n, (done, n)
    return QueueFigures("table + SKIP LOCKED", n, enqueued - began, drained - enqueued)


def measure_pgmq(dsn: str, n: int = 100_000, batch: int = 1000) -> QueueFigures | None:
    try:
        import pgmq
    except ImportError:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS pgmq CASCADE")
    with psycopg.connect(dsn) as conn:
        pgmq.install_pgmq_from_sql(conn=conn)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgmq.create('bench')")
        began = time.perf_counter()
        for lo in range(0, n, batch):
            conn.execute(
                "SELECT pgmq.send_batch('bench', %s::jsonb[])",
                ([Jsonb(p) for p in _payloads(lo, min(batch, n - lo))],),
            )
        enqueued = time.perf_counter()
        done = 0
        while True:
            ids = [r[0] for r in conn.execute("SELECT msg_id FROM pgmq.read('bench', 30, %s)", (batch,))]
            if not ids:
                break
            done += len(conn.execute("SELECT pgmq.delete('bench', %s::bigint[])", (ids,)).fetchall())
        drained = time.perf_counter()
        conn.execute("DROP SCHEMA pgmq CASCADE")
    assert done == n, (done, n)
    return QueueFigures(
        f"PGMQ {pgmq.get_embedded_sql_version()} (SQL install)", n, enqueued - began, drained - enqueued
    )
