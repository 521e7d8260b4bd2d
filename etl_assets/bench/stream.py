"""``etl-assets bench --only stream``: latency and drain rate of the stream, measured end to end.

Runs in two scratch databases (source and warehouse) created next to the configured ones and
dropped afterwards, so the user's demo is never touched:

1. **Latency.** ``etl-assets stream run`` (the real command, its own process, default settings) is
   started; this process then writes order events at a steady ``rate`` per second for ``seconds``
   seconds through the outbox producer (one transaction per tenth of a second) and notes the
   wall-clock time of each COMMIT. The latency of an event is its sink's ``processed_at`` (written
   as the sink transaction's last statement, right before its COMMIT) minus its producer COMMIT
   time: same machine, same clock. p50 and p95 over every event.
2. **Drain.** ``backlog`` events are written first with no consumer; then the consumer (the same
   code, in this process, default batch size) drains them; events per second over the drain.
3. **Queue candidates.** With ``--queues``: enqueue + claim + ack of 100,000 messages on our table
   and on PGMQ (when its client is installed) side by side (:mod:`etl_assets.bench.stream_queue`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from etl_assets.bench.scratch import create_database, drop_database
from etl_assets.settings import PROJECT_ROOT

GOAL_P95_S = 1.0
GOAL_DRAIN = 5000.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _fresh(source_dsn: str, warehouse_dsn: str, orders: int) -> None:
    from etl_assets.demo import seed as demo
    from etl_assets.stream import queue, sink

    demo.seed(source_dsn, rows=orders, until=demo.today())
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        queue.install(conn)
    with psycopg.connect(warehouse_dsn) as conn:
        sink.ensure_tables(conn)


def measure_latency(source_dsn: str, warehouse_dsn: str, rate: float, seconds: float, log=print) -> dict:
    from etl_assets.stream.producer import produce

    env = {**os.environ, "ETL_SOURCE_DSN": source_dsn, "ETL_WAREHOUSE_DSN": warehouse_dsn}
    env.pop("ETL_STREAM_FAULT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "stream", "run", "--no-dagster"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if "consuming" not in first:
            raise RuntimeError(
                f"stream run did not start: {first} {proc.stderr.read() if proc.stderr else ''}"
            )
        commits: dict[int, float] = {}

        def noted(ids: list[int], at: float) -> None:
            for i in ids:
                commits[i] = at

        events = int(rate * seconds)
        log(f"  latency: {events:,} events at {rate:,.0f}/s with `etl-assets stream run` consuming")
        result = produce(source_dsn, events, rate=rate, seed=1, on_commit=noted)
        deadline = time.monotonic() + 120
        with psycopg.connect(warehouse_dsn) as conn:
            while time.monotonic() < deadline:
                done = conn.execute("SELECT count(*) FROM stream.processed_events").fetchone()[0]
                conn.rollback()
                if done >= len(commits):
                    break
                time.sleep(0.5)
            rows = conn.execute(
                "SELECT event_id, extract(epoch FROM processed_at)::float8 FROM stream.processed_events"
            ).fetchall()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    latencies = [at - commits[i] for i, at in rows if i in commits]
    if len(latencies) != len(commits):
        raise RuntimeError(f"{len(commits) - len(latencies)} events never reached the sink")
    return {
        "events": len(latencies),
        "rate_asked": rate,
        "rate_achieved": round(result.events / result.seconds, 1),
        "p50_s": round(_percentile(latencies, 0.50), 4),
        "p95_s": round(_percentile(latencies, 0.95), 4),
        "max_s": round(max(latencies), 4),
        "mean_s": round(statistics.fmean(latencies), 4),
        "consumer_summary": out.strip().splitlines()[-1] if out.strip() else "",
    }


def measure_drain(source_dsn: str, warehouse_dsn: str, backlog: int, log=print) -> dict:
    from etl_assets.stream import consumer
    from etl_assets.stream.producer import produce

    log(f"  drain: writing a backlog of {backlog:,} events")
    produce(source_dsn, backlog, seed=2, batch_size=1000)
    config = consumer.ConsumerConfig(report_to_dagster=False, stop_when_idle=True)
    began = time.perf_counter()
    stats = consumer.run(source_dsn, warehouse_dsn, config, out=lambda s: None, handle_signals=False)
    seconds = time.perf_counter() - began
    handled = stats.applied + stats.stale + stats.dead
    if handled != backlog:
        raise RuntimeError(f"drained {handled:,} of {backlog:,} events")
    return {
        "events": backlog,
        "seconds": round(seconds, 2),
        "events_per_second": round(backlog / seconds, 1),
        "batches": stats.batches,
        "batch_size": config.max_events,
    }


def run_stream_bench(
    source_dsn: str,
    out: Path,
    *,
    rate: float = 1000.0,
    seconds: float = 60.0,
    backlog: int = 100_000,
    queues: bool = False,
    log=print,
) -> int:
    """Measure, print and write ``stream.json`` into ``out``; exit status 0 when both goals are met."""
    tag = f"etl_bench_stream_{secrets.token_hex(3)}"
    names = {"source": f"{tag}_source", "warehouse": f"{tag}_warehouse"}
    report: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        dsns = {role: create_database(source_dsn, name) for role, name in names.items()}
        log(f"etl-assets bench --only stream: scratch databases {', '.join(names.values())}")
        _fresh(dsns["source"], dsns["warehouse"], 100_000)
        report["latency"] = measure_latency(dsns["source"], dsns["warehouse"], rate, seconds, log)
        lat = report["latency"]
        log(
            f"  latency: p50 {lat['p50_s'] * 1000:.0f} ms, p95 {lat['p95_s'] * 1000:.0f} ms, "
            f"max {lat['max_s'] * 1000:.0f} ms over {lat['events']:,} events "
            f"({lat['rate_achieved']:,.0f}/s achieved); goal p95 < {GOAL_P95_S:g} s"
        )
        for name in names.values():
            drop_database(source_dsn, name)
        names = {role: f"{tag}_drain_{role}" for role in names}  # new names: nothing cached carries over
        dsns = {role: create_database(source_dsn, name) for role, name in names.items()}
        _fresh(dsns["source"], dsns["warehouse"], 100_000)
        report["drain"] = measure_drain(dsns["source"], dsns["warehouse"], backlog, log)
        dr = report["drain"]
        log(
            f"  drain: {dr['events']:,} events in {dr['seconds']:.1f} s = {dr['events_per_second']:,.0f} "
            f"events/s ({dr['batches']} batches of up to {dr['batch_size']}); goal >= {GOAL_DRAIN:,.0f}/s"
        )
        if queues:
            from etl_assets.bench.stream_queue import measure_pgmq, measure_table

            figures = [f for f in (measure_table(dsns["source"]), measure_pgmq(dsns["source"])) if f]
            report["queues"] = [
                {
                    "name": f.name,
                    "messages": f.messages,
                    "enqueue_s": round(f.enqueue_s, 2),
                    "claim_ack_s": round(f.drain_s, 2),
                    "per_second": round(f.per_second),
                }
                for f in figures
            ]
            for f in figures:
                log(
                    f"  queue {f.name}: enqueue {f.enqueue_s:.1f} s, claim+ack {f.drain_s:.1f} s "
                    f"({f.per_second:,.0f} messages/s overall)"
                )
    finally:
        for name in names.values():
            drop_database(source_dsn, name)
    with open("/proc/loadavg") as fh:
        report["load_average"] = fh.read().split()[:3]
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(report, indent=2))
    log(f"results: {out / 'stream.json'}")
    met = report["latency"]["p95_s"] < GOAL_P95_S and report["drain"]["events_per_second"] >= GOAL_DRAIN
    return 0 if met else 1
