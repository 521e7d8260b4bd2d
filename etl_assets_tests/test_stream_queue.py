"""The stream's queue in the source: install/uninstall/status, claims, visibility timeout, acks."""

from __future__ import annotations

import time

import psycopg

from etl_assets.stream import queue
from etl_assets_tests.test_cli import etl


def test_install_is_explicit_idempotent_and_dry_run_changes_nothing(stream_dbs: dict[str, str]) -> None:
    env_dsn = stream_dbs["source"]
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        assert queue.uninstall(conn) is True
        assert queue.is_installed(conn) is False
    env = {"ETL_SOURCE_DSN": env_dsn, "ETL_WAREHOUSE_DSN": stream_dbs["warehouse"]}
    import os

    env = {**os.environ, **env}
    result = etl("stream", "install", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE IF NOT EXISTS etl_stream.events" in result.stdout
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        assert queue.is_installed(conn) is False
    result = etl("stream", "status", env=env)
    assert result.returncode == 3 and "not installed" in result.stdout
    result = etl("stream", "install", env=env)
    assert result.returncode == 0 and "installed" in result.stdout, result.stderr
    assert "already installed" in etl("stream", "install", env=env).stdout
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        queue.enqueue(conn, [{"x": 1}, {"x": 2}])
    result = etl("stream", "status", env=env)
    assert result.returncode == 0 and "2 messages (0 claimed)" in result.stdout, result.stdout
    result = etl("stream", "uninstall", "--dry-run", env=env)
    assert "DROP SCHEMA IF EXISTS etl_stream CASCADE" in result.stdout
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        assert queue.status(conn).messages == 2
    assert "removed" in etl("stream", "uninstall", env=env).stdout
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        assert queue.is_installed(conn) is False
    result = etl("simulate", "--events", "5", env=env)
    assert result.returncode == 2 and "etl-assets stream install" in result.stderr
    assert "Traceback" not in result.stderr


def test_claims_are_disjoint_hidden_for_the_visibility_timeout_and_acked_by_delete(
    stream_dbs: dict[str, str],
) -> None:
    dsn = stream_dbs["source"]
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        ids = queue.enqueue(a, [{"n": i} for i in range(10)])
        assert ids == sorted(ids) and len(ids) == 10
        first = queue.claim(a, 4, vt=1.0)
        second = queue.claim(b, 4, vt=30)
        assert [m.id for m in first] == ids[:4]
        assert [m.id for m in second] == ids[4:8]
        assert [m.payload["n"] for m in second] == [4, 5, 6, 7]
        assert queue.ack(b, [m.id for m in second]) == 4
        rest = queue.claim(b, 10, vt=30)
        assert [m.id for m in rest] == ids[8:]  # the first four are still invisible
        time.sleep(1.2)
        again = queue.claim(b, 10, vt=30)
        assert [m.id for m in again] == ids[:4]  # a claim not acknowledged comes back
        assert [m.deliveries for m in again] == [2, 2, 2, 2]
        assert queue.release(b, [m.id for m in rest]) == 2
        assert [m.id for m in queue.claim(a, 10)] == ids[8:]
        assert queue.status(a).messages == 6


def test_an_insert_notifies_listeners_at_commit(stream_dbs: dict[str, str]) -> None:
    dsn = stream_dbs["source"]
    with psycopg.connect(dsn, autocommit=True) as listen, psycopg.connect(dsn) as producer:
        listen.execute(f"LISTEN {queue.CHANNEL}")
        queue.enqueue(producer, [{"n": 1}])
        assert list(listen.notifies(timeout=0.3, stop_after=1)) == []  # not before COMMIT
        producer.commit()
        got = list(listen.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in got] == [queue.CHANNEL]
