"""One micro-batch and the sink: exactly once in effect, stale and redelivered events skipped,
dirty and poison events dead-lettered, two processors at once."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import psycopg

from etl_assets.stream import processor, producer, queue, sink
from etl_assets_tests.stream_helpers import drain, outcome_counts, queue_size, sink_latest, source_latest


def _assert_sink_equals_source(dbs: dict[str, str]) -> None:
    expected = source_latest(dbs["source"])
    got = sink_latest(dbs["warehouse"])
    assert expected, "the producer wrote no clean order"
    assert {k: got.get(k) for k in expected} == expected
    with psycopg.connect(dbs["source"]) as conn:
        versions = dict(conn.execute("SELECT order_id, version FROM etl_stream.order_versions").fetchall())
    assert all(v[0] <= versions[k] for k, v in got.items())


def test_outbox_events_carry_versions_and_commit_with_the_order_change(stream_dbs: dict[str, str]) -> None:
    dsn = stream_dbs["source"]
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            ids = producer.apply_changes(conn, [producer.Change("updated", 7, {"status": "refunded"})])
        with conn.transaction():
            producer.apply_changes(conn, [producer.Change("cancelled", 7, {"status": "cancelled"})])
        try:
            with conn.transaction():
                producer.apply_changes(conn, [producer.Change("updated", 7, {"amount": Decimal("1.00")})])
                raise RuntimeError("the application fails before COMMIT")
        except RuntimeError:
            pass
        rows = conn.execute("SELECT id, payload FROM etl_stream.events ORDER BY id").fetchall()
        amount, status = conn.execute("SELECT amount, status FROM shop.orders WHERE id = 7").fetchone()
    assert [r[0] for r in rows][:1] == ids
    assert [(p["order_id"], p["version"], p["kind"]) for _, p in rows] == [
        (7, 1, "updated"),
        (7, 2, "cancelled"),
    ]
    assert rows[1][1]["old"]["status"] == "refunded" and rows[1][1]["new"]["status"] == "cancelled"
    assert status == "cancelled" and Decimal(rows[1][1]["new"]["amount"]) == amount


def test_every_clean_event_applied_once_dirty_ones_dead_lettered(stream_dbs: dict[str, str]) -> None:
    result = producer.produce(stream_dbs["source"], 1500, seed=3, dirty_share=0.1, batch_size=100)
    assert result.events == 1500
    batches = drain(stream_dbs["source"], stream_dbs["warehouse"], max_events=400)
    assert sum(b.claimed for b in batches) == 1500 and queue_size(stream_dbs["source"]) == 0
    counts = outcome_counts(stream_dbs["warehouse"])
    assert sum(counts.values()) == 1500
    _assert_sink_equals_source(stream_dbs)
    with psycopg.connect(stream_dbs["warehouse"]) as conn:
        dead = conn.execute(
            "SELECT error_class, count(*) FROM etl.dead_letters WHERE asset_key = %s GROUP BY 1",
            (sink.SINK_ASSET,),
        ).fetchall()
        bad = conn.execute(
            "SELECT count(*) FROM etl.dead_letters d JOIN stream.processed_events p"
            " ON p.event_id = (d.payload->>'event_id')::bigint WHERE p.outcome <> 'dead'"
        ).fetchone()[0]
    assert sum(n for _, n in dead) == counts["dead"] > 50
    assert {c for c, _ in dead} <= {"NegativeAmount", "AmountTooLarge", "FutureDate"}
    assert bad == 0


def test_redelivered_and_older_events_are_skipped(stream_dbs: dict[str, str]) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    with psycopg.connect(src) as conn, conn.transaction():
        producer.apply_changes(conn, [producer.Change("updated", 5, {"status": "paid"})])
    with psycopg.connect(src) as conn, conn.transaction():
        producer.apply_changes(conn, [producer.Change("updated", 5, {"status": "shipped"})])
    with psycopg.connect(src, autocommit=True) as s, psycopg.connect(wh) as w:
        sink.ensure_tables(w)
        messages = queue.claim(s, 10)
        v1, v2 = messages
        # a second consumer got version 2 first; then version 1 arrives: stale, not applied
        assert processor.write(w, [v2], run_id="t").applied == 1
        late = processor.write(w, [v1], run_id="t")
        assert (late.applied, late.stale) == (0, 1)
        # the same messages delivered again (an ack was lost): recognised, nothing changes
        again = processor.write(w, messages, run_id="t")
        assert (again.duplicate, again.applied, again.stale, again.deltas) == (2, 0, 0, 0)
    assert sink_latest(wh)[5][0] == 2 and sink_latest(wh)[5][2] == "shipped"
    assert outcome_counts(wh) == {"applied": 1, "stale": 1}


def test_a_poison_event_is_dead_lettered_and_the_stream_moves_on(stream_dbs: dict[str, str]) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    producer.produce(src, 20, seed=1, dirty_share=0)
    with psycopg.connect(src) as conn, conn.transaction():
        queue.enqueue(conn, [{"order_id": "seven", "version": 1}])
        queue.enqueue(conn, [{"order_id": 9, "version": 1, "kind": "updated", "new": {"amount": "1"}}])
    producer.produce(src, 20, seed=2, dirty_share=0)
    drain(src, wh, max_events=7)
    assert queue_size(src) == 0
    assert outcome_counts(wh)["dead"] == 2
    with psycopg.connect(wh) as conn:
        rows = conn.execute(
            "SELECT error_class, error_message, payload->'raw' FROM etl.dead_letters ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == ["MalformedEvent", "MalformedEvent"]
    assert "order id" in rows[0][1] and "'created_at' is missing" in rows[1][1]
    assert rows[0][2] == {"order_id": "seven", "version": 1}
    _assert_sink_equals_source(stream_dbs)


def test_a_message_that_keeps_crashing_its_processor_is_dead_lettered(stream_dbs: dict[str, str]) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    producer.produce(src, 1, seed=1, dirty_share=0)
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("UPDATE etl_stream.events SET deliveries = 5")
    drain(src, wh)
    with psycopg.connect(wh) as conn:
        assert conn.execute("SELECT error_class FROM etl.dead_letters").fetchall() == [("TooManyDeliveries",)]
    assert queue_size(src) == 0


def test_two_processors_at_once_apply_each_event_once(stream_dbs: dict[str, str]) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    with psycopg.connect(wh) as conn:
        sink.ensure_tables(conn)
    producer.produce(src, 3000, seed=11, dirty_share=0.02, batch_size=50)
    errors: list[BaseException] = []
    claimed: list[int] = []

    def work() -> None:
        try:
            claimed.extend(b.claimed for b in drain(src, wh, max_events=50))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(claimed) == 3000 and queue_size(src) == 0
    counts = outcome_counts(wh)
    assert sum(counts.values()) == 3000
    with psycopg.connect(wh) as conn:
        per_order = conn.execute(
            "SELECT count(*) FROM (SELECT order_id, version FROM stream.processed_events"
            " WHERE outcome = 'applied' GROUP BY 1, 2 HAVING count(*) > 1) d"
        ).fetchone()[0]
    assert per_order == 0
    _assert_sink_equals_source(stream_dbs)


def test_a_batch_that_fails_writes_nothing_and_is_redelivered(stream_dbs: dict[str, str]) -> None:
    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    producer.produce(src, 30, seed=4, dirty_share=0.2)
    with psycopg.connect(src, autocommit=True) as s, psycopg.connect(wh) as w:
        sink.ensure_tables(w)
        w.execute("ALTER TABLE serve.speed_deltas ADD CONSTRAINT no_writes CHECK (false) NOT VALID")
        w.commit()
        messages = queue.claim(s, 100, vt=0.5)
        try:
            processor.write(w, messages, run_id="t")
        except psycopg.errors.CheckViolation:
            pass
        else:
            raise AssertionError("the write should have failed")
        w.execute("ALTER TABLE serve.speed_deltas DROP CONSTRAINT no_writes")
        w.commit()
        for table in ("stream.orders", "stream.processed_events", "etl.dead_letters"):
            assert w.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
        w.rollback()
    time.sleep(0.6)
    drain(src, wh)
    assert sum(outcome_counts(wh).values()) == 30
    _assert_sink_equals_source(stream_dbs)


def test_dead_events_replay_like_other_dead_letters(stream_dbs: dict[str, str]) -> None:
    from etl_assets.transforms.replay import replay

    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    ids = {}
    for order_id, amount in ((11, "-3.00"), (12, "-4.00")):
        with psycopg.connect(src) as conn, conn.transaction():
            (ids[order_id],) = producer.apply_changes(
                conn, [producer.Change("updated", order_id, {"amount": Decimal(amount)})]
            )
    drain(src, wh)
    with psycopg.connect(wh) as conn:
        deltas_before = conn.execute("SELECT count(*), sum(amount) FROM serve.speed_deltas").fetchone()
        # someone corrects the first event's amount in the dead-letter table; the second stays bad
        conn.execute(
            "UPDATE etl.dead_letters SET payload = jsonb_set(payload, '{amount}', '\"3.00\"')"
            " WHERE (payload->>'event_id')::bigint = %s",
            (ids[11],),
        )
        conn.commit()
        reports = replay(conn, run_id="replay-1", asset_key=sink.SINK_ASSET)
        assert [(r.considered, r.replayed, r.failed_again) for r in reports] == [(2, 1, 1)]
        rows = conn.execute(
            "SELECT (payload->>'event_id')::bigint, status, attempts FROM etl.dead_letters ORDER BY 1"
        ).fetchall()
        assert rows == [(ids[11], "replayed", 1), (ids[12], "pending", 2)]
        assert (
            conn.execute("SELECT count(*), sum(amount) FROM serve.speed_deltas").fetchone() == deltas_before
        )
        outcomes = dict(conn.execute("SELECT event_id, outcome FROM stream.processed_events").fetchall())
    assert outcomes == {ids[11]: "applied", ids[12]: "dead"}
    assert sink_latest(wh)[11] == (1, Decimal("3.00"), sink_latest(wh)[11][2])
