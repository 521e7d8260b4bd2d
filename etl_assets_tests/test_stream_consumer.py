"""``etl-assets stream run``: crash drills (SIGKILL before and after the sink commit), a clean stop on
SIGTERM, and a source outage through a proxy the test owns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from etl_assets.settings import PROJECT_ROOT
from etl_assets.stream import consumer, producer
from etl_assets_tests.stream_helpers import outcome_counts, queue_size, sink_latest, source_latest
from etl_assets_tests.tcp_proxy import Proxy


def _consumer(dbs: dict[str, str], *args: str, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "ETL_SOURCE_DSN": dbs["source"], "ETL_WAREHOUSE_DSN": dbs["warehouse"]}
    env.pop("ETL_STREAM_FAULT", None)
    if fault:
        env["ETL_STREAM_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "stream", "run", "--no-dagster", "--vt", "1", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_sink_equals_source(dbs: dict[str, str]) -> None:
    expected = source_latest(dbs["source"])
    got = sink_latest(dbs["warehouse"])
    assert expected and {k: got.get(k) for k in expected} == expected


def _processed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('stream.processed_events') IS NOT NULL").fetchone()[0]
        return conn.execute("SELECT count(*) FROM stream.processed_events").fetchone()[0] if exists else 0


@pytest.mark.parametrize("fault", ["before_commit", "after_commit"])
def test_sigkill_around_the_sink_commit_then_restart(stream_dbs: dict[str, str], fault: str) -> None:
    producer.produce(stream_dbs["source"], 600, seed=5, dirty_share=0.05, batch_size=100)
    killed = _consumer(stream_dbs, "--max-events", "250", fault=fault)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    committed = _processed(stream_dbs["warehouse"])
    assert committed == (0 if fault == "before_commit" else 250)
    assert queue_size(stream_dbs["source"]) == 600  # nothing acknowledged
    time.sleep(1.2)  # the killed consumer's claim times out
    again = _consumer(stream_dbs, "--max-events", "250", "--stop-when-idle")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert queue_size(stream_dbs["source"]) == 0
    assert sum(outcome_counts(stream_dbs["warehouse"]).values()) == 600
    skipped = 250 if fault == "after_commit" else 0
    assert f"{skipped:,} redelivered and skipped" in out
    _assert_sink_equals_source(stream_dbs)


def test_sigterm_finishes_the_batch_and_stops_cleanly(stream_dbs: dict[str, str]) -> None:
    proc = _consumer(stream_dbs, "--poll-s", "30")
    time.sleep(3)
    producer.produce(stream_dbs["source"], 200, seed=6, dirty_share=0)
    deadline = time.monotonic() + 60
    while _processed(stream_dbs["warehouse"]) < 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - began < 5  # woke from a 30 s wait at once
    assert "stream run stopped" in out
    assert sum(outcome_counts(stream_dbs["warehouse"]).values()) == 200
    _assert_sink_equals_source(stream_dbs)


def test_a_source_outage_is_retried_with_backoff_and_nothing_is_lost(stream_dbs: dict[str, str]) -> None:
    proxy = Proxy(stream_dbs["source"])
    stop = threading.Event()
    lines: list[str] = []
    config = consumer.ConsumerConfig(max_events=100, vt=1, poll_s=0.5, report_to_dagster=False)
    stats: list[consumer.ConsumerStats] = []
    thread = threading.Thread(
        target=lambda: stats.append(
            consumer.run(
                proxy.dsn,
                stream_dbs["warehouse"],
                config,
                out=lines.append,
                stop_event=stop,
                handle_signals=False,
            )
        )
    )
    thread.start()
    try:
        producer.produce(stream_dbs["source"], 300, seed=7, dirty_share=0.05, batch_size=20, rate=300)
        proxy.cut()
        producer.produce(stream_dbs["source"], 300, seed=8, dirty_share=0.05, batch_size=20)
        time.sleep(3)
        proxy.restore()
        producer.produce(stream_dbs["source"], 300, seed=9, dirty_share=0.05, batch_size=20)
        deadline = time.monotonic() + 60
        while (queue_size(stream_dbs["source"]) or _processed(stream_dbs["warehouse"]) < 900) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
        proxy.close()
    assert stats and stats[0].reconnects >= 1
    assert any("database unreachable" in line for line in lines)
    assert queue_size(stream_dbs["source"]) == 0
    assert sum(outcome_counts(stream_dbs["warehouse"]).values()) == 900
    _assert_sink_equals_source(stream_dbs)
