"""``etl-assets stream run``: the long-running consumer, waking on LISTEN/NOTIFY with a poll fallback.

The hot path is :func:`etl_assets.stream.processor.process_once` in a loop: while batches come back
full it goes on at once (a backlog drains at full speed); otherwise it sleeps on the source's
``etl_stream`` channel (delivered at the producer's COMMIT) or at most ``poll_s`` seconds, lingers
``max_wait_ms`` to let a burst gather into one batch, and claims again.

Unreachable databases are retried forever with exponential backoff and full jitter (capped at
``max_backoff_s``), reconnecting every connection: a source or warehouse outage stalls the stream,
it never loses or duplicates an event (claimed messages not acknowledged reappear after their
visibility timeout and are recognised as processed).

Dagster hears about progress off the hot path, from a reporter thread: at most one
``AssetObservation`` of the sink per ``observe_every_s`` (lag, throughput, counts: plotted in the UI)
and a runless ``AssetMaterialization`` at most every ``materialize_every_s`` (60 s), so automation
downstream does not fire once per batch. SIGTERM and SIGINT finish the batch in hand and stop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue as stdqueue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from etl_assets.connections import connect
from etl_assets.console import plural
from etl_assets.retry import is_transient
from etl_assets.settings import SOURCE_DSN_VAR, WAREHOUSE_DSN_VAR
from etl_assets.stream import processor, queue, sink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumerConfig:
    max_events: int = 1000
    max_wait_ms: int = 20
    poll_s: float = 5.0
    vt: float = queue.DEFAULT_VT
    max_backoff_s: float = 5.0
    report_to_dagster: bool = True
    observe_every_s: float = 5.0
    materialize_every_s: float = 60.0
    stop_when_idle: bool = False
    max_deliveries: int = processor.DEFAULT_MAX_DELIVERIES


@dataclass
class ConsumerStats:
    batches: int = 0
    applied: int = 0
    stale: int = 0
    duplicate: int = 0
    dead: int = 0
    reconnects: int = 0
    last_event_id: int | None = None
    started: float = field(default_factory=time.time)

    def add(self, b: processor.BatchResult) -> None:
        self.batches += 1
        self.applied += b.applied
        self.stale += b.stale
        self.duplicate += b.duplicate
        self.dead += b.dead
        if b.max_event_id is not None:
            self.last_event_id = max(self.last_event_id or 0, b.max_event_id)


class DagsterReporter:
    """Reports sink progress to the Dagster instance from its own thread, rate-limited."""

    def __init__(self, config: ConsumerConfig, instance: Any | None = None) -> None:
        self.config = config
        self.instance = instance
        self.inbox: stdqueue.Queue[tuple[processor.BatchResult, ConsumerStats] | None] = stdqueue.Queue()
        self.thread = threading.Thread(target=self._loop, name="dagster-reporter", daemon=True)
        self.last_observed = 0.0
        self.last_materialized = 0.0
        self.window: list[tuple[float, int]] = []

    def start(self) -> DagsterReporter:
        self.thread.start()
        return self

    def submit(self, batch: processor.BatchResult, stats: ConsumerStats) -> None:
        self.inbox.put((batch, stats))

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        import dagster as dg

        try:
            instance = self.instance or dg.DagsterInstance.get()
        except Exception as exc:
            log.warning("stream: not reporting to Dagster (%s)", exc)
            instance = None
        key = dg.AssetKey(sink.SINK_ASSET.split("/"))
        pending: tuple[processor.BatchResult, ConsumerStats] | None = None
        while True:
            item = self.inbox.get()
            if item is None:
                if pending is not None and instance is not None:
                    self._emit(instance, dg, key, *pending, force=True)
                return
            batch, stats = item
            self.window.append((time.time(), batch.applied + batch.stale + batch.dead))
            pending = item
            if instance is not None and self._emit(instance, dg, key, batch, stats, force=False):
                pending = None

    def _emit(
        self,
        instance: Any,
        dg: Any,
        key: Any,
        batch: processor.BatchResult,
        stats: ConsumerStats,
        *,
        force: bool,
    ) -> bool:
        now = time.time()
        if not force and now - self.last_observed < self.config.observe_every_s:
            return False
        self.window = [(t, n) for t, n in self.window if now - t <= 60]
        span = max(1.0, now - self.window[0][0]) if self.window else 1.0
        lag = (
            (dt.datetime.now(dt.UTC) - batch.oldest_enqueued_at).total_seconds()
            if batch.oldest_enqueued_at
            else 0.0
        )
        metadata = {
            "lag_seconds": dg.MetadataValue.float(round(lag, 3)),
            "events_per_second": dg.MetadataValue.float(round(sum(n for _, n in self.window) / span, 1)),
            "applied_total": dg.MetadataValue.int(stats.applied),
            "dead_lettered_total": dg.MetadataValue.int(stats.dead),
            "redelivered_skipped_total": dg.MetadataValue.int(stats.duplicate),
            "last_event_id": dg.MetadataValue.int(stats.last_event_id or 0),
        }
        try:
            instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, metadata=metadata))
            self.last_observed = now
            if now - self.last_materialized >= self.config.materialize_every_s:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset_key=key, metadata=metadata, description="reported by etl-assets stream run"
                    )
                )
                self.last_materialized = now
        except Exception as exc:
            log.warning("stream: reporting to Dagster failed (%s)", exc)
        return True


class _Connections:
    """The consumer's three connections, reopened together after a failure."""

    def __init__(self, source_dsn: str, warehouse_dsn: str) -> None:
        self.source_dsn, self.warehouse_dsn = source_dsn, warehouse_dsn
        self.stack: contextlib.ExitStack | None = None

    def open(self) -> tuple[psycopg.Connection, psycopg.Connection, psycopg.Connection]:
        self.close()
        stack = contextlib.ExitStack()
        try:
            source = stack.enter_context(
                connect(
                    self.source_dsn, role="source", env_var=SOURCE_DSN_VAR, autocommit=True, connect_timeout=5
                )
            )
            listen = stack.enter_context(
                connect(
                    self.source_dsn, role="source", env_var=SOURCE_DSN_VAR, autocommit=True, connect_timeout=5
                )
            )
            warehouse = stack.enter_context(
                connect(self.warehouse_dsn, role="warehouse", env_var=WAREHOUSE_DSN_VAR, connect_timeout=5)
            )
            queue.require_installed(source)
            sink.ensure_tables(warehouse)
            listen.execute(f"LISTEN {queue.CHANNEL}")
        except BaseException:
            stack.close()
            raise
        self.stack = stack
        return source, listen, warehouse

    def close(self) -> None:
        if self.stack is not None:
            with contextlib.suppress(Exception):
                self.stack.close()
            self.stack = None


def _wait(listen: psycopg.Connection, seconds: float, stopping: Callable[[], bool]) -> bool:
    """Sleep on the channel up to ``seconds`` (in slices, so a stop request is seen); True if notified."""
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for _ in listen.notifies(timeout=min(left, 0.5), stop_after=1):
            return True
    return False


def run(
    source_dsn: str,
    warehouse_dsn: str,
    config: ConsumerConfig = ConsumerConfig(),
    *,
    out: Callable[[str], None] = print,
    instance: Any | None = None,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
) -> ConsumerStats:
    """Consume until SIGTERM/SIGINT (or ``stop_event``, or an empty queue with ``stop_when_idle``)."""
    stop = stop_event or threading.Event()
    previous: dict[int, Any] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    stats = ConsumerStats()
    reporter = DagsterReporter(config, instance).start() if config.report_to_dagster else None
    conns = _Connections(source_dsn, warehouse_dsn)
    rng = random.Random()
    failures = 0
    run_id = f"stream-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    try:
        source = listen = warehouse = None
        out(f"stream run: consuming (batches of at most {config.max_events}, poll every {config.poll_s:g} s)")
        while not stop.is_set():
            try:
                if source is None:
                    source, listen, warehouse = conns.open()
                    if failures:
                        out(f"stream run: reconnected after {plural(failures, 'failed attempt')}")
                        stats.reconnects += 1
                    failures = 0
                batch = processor.process_once(
                    source,
                    warehouse,
                    max_events=config.max_events,
                    vt=config.vt,
                    run_id=run_id,
                    max_deliveries=config.max_deliveries,
                )
                if batch.claimed:
                    stats.add(batch)
                    if reporter:
                        reporter.submit(batch, stats)
                if batch.claimed >= config.max_events:
                    continue
                if config.stop_when_idle and not batch.claimed:
                    break
                # The wait listens on the source too: an outage can surface here as well as in a batch.
                if _wait(listen, config.poll_s, stop.is_set) and config.max_wait_ms:
                    stop.wait(config.max_wait_ms / 1000)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                conns.close()
                source = listen = warehouse = None
                wait = rng.uniform(0, min(config.max_backoff_s, 0.2 * 2 ** (failures - 1)))
                what = type(exc).__name__
                out(f"stream run: database unreachable ({what}); retry {failures} in {wait:.2f} s")
                stop.wait(wait)
    finally:
        conns.close()
        if reporter:
            reporter.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stats
