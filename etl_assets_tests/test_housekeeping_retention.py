"""Housekeeping on schedules: cdc prune and dead-letter retention, run as the scheduled jobs run."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from etl_assets.db import PostgresResource
from etl_assets.errors import ConfigError
from etl_assets.housekeeping import retention
from etl_assets_tests.cdc_helpers import make_items, spec_for


def _resources(source_dsn: str, warehouse_dsn: str) -> dict:
    return {
        "source": PostgresResource(dsn=source_dsn, role="source"),
        "warehouse": PostgresResource(dsn=warehouse_dsn),
    }


def _output(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.event_specific_data.metadata.items()}


def test_dead_letter_retention_removes_only_old_resolved_entries(
    module_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(module_warehouse, autocommit=True) as conn:
        conn.execute("DELETE FROM etl.dead_letters")
        # (status, resolved days ago, first failed days ago)
        cases = [("replayed", 40, 50), ("discarded", 31, 60), ("replayed", 5, 6), ("discarded", 29, 29),
                 ("pending", None, 400)]
        for i, (status, resolved, failed) in enumerate(cases):
            conn.execute(
                """INSERT INTO etl.dead_letters (asset_key, run_id, first_run_id, stage, error_class,
                       error_message, payload, row_hash, status, resolved_at, first_failed_at)
                   VALUES ('raw/x', 'r', 'r', 'validate', 'E', 'bad', '{}'::jsonb, %s, %s,
                           now() - make_interval(days => %s), now() - make_interval(days => %s))""",
                (f"h{i}", status, resolved, failed),
            )
    monkeypatch.delenv(retention.DLQ_RETENTION_VAR, raising=False)
    result = retention.dead_letter_retention_job.execute_in_process(
        resources=_resources(module_warehouse, module_warehouse), instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    assert _output(result) == {"dead_letters_removed": 2, "retention_days": 30.0}
    with psycopg.connect(module_warehouse) as conn:
        left = sorted(r[0] for r in conn.execute("SELECT row_hash FROM etl.dead_letters"))
    assert left == ["h2", "h3", "h4"]  # recent resolved ones and the (old) pending one stay

    monkeypatch.setenv(retention.DLQ_RETENTION_VAR, "3")
    result = retention.dead_letter_retention_job.execute_in_process(
        resources=_resources(module_warehouse, module_warehouse), instance=dg.DagsterInstance.ephemeral()
    )
    assert _output(result)["dead_letters_removed"] == 2
    with psycopg.connect(module_warehouse) as conn:
        assert [r[0] for r in conn.execute("SELECT row_hash FROM etl.dead_letters")] == ["h4"]


@pytest.mark.parametrize("value", ["-1", "thirty", "nan"])
def test_bad_retention_is_a_one_line_error(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retention.DLQ_RETENTION_VAR, value)
    with pytest.raises(ConfigError, match=r"ETL_DLQ_RETENTION_DAYS=.* is not a number of days >= 0"):
        retention.dlq_retention()


def test_cdc_prune_job_removes_applied_entries(
    source_conn, warehouse_conn, source_dsn, warehouse_dsn, fresh_schema
) -> None:
    from etl_assets.cdc import capture, sync

    ref = make_items(source_conn, 30)
    cap, _ = capture.install(source_conn, ref)
    spec = spec_for(ref, fresh_schema)
    connectors = (
        sync.dsn_connector(source_dsn, "source", "S"),
        sync.dsn_connector(warehouse_dsn, "warehouse", "W"),
    )
    sync.sync_table(spec, *connectors, wait=2, prune_after=False)
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'z' WHERE id <= 12").format(ref.ident))
    sync.sync_table(spec, *connectors, wait=2, prune_after=False)  # applies the 12 changes
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'y' WHERE id <= 4").format(ref.ident))  # unapplied

    result = retention.cdc_prune_job.execute_in_process(
        resources=_resources(source_dsn, warehouse_dsn), instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    meta = _output(result)
    assert meta["per_table"][str(ref)] == 12
    remaining = source_conn.execute(sql.SQL("SELECT count(*) FROM {}").format(cap.log_ident)).fetchone()[0]
    assert remaining == 4  # the unapplied changes stay


def test_housekeeping_schedules_are_running_by_default(etl_env: dict[str, str]) -> None:
    from etl_assets.definitions import build_definitions

    defs = build_definitions()
    schedules = {s.name: s for s in defs.schedules or []}
    for name in ("housekeeping_cdc_prune_daily", "housekeeping_dead_letter_retention_daily",
                 "detect_source_deletes_daily"):
        assert schedules[name].default_status == dg.DefaultScheduleStatus.RUNNING
    job = defs.get_job_def("detect_source_deletes")
    # the demo's one incremental table
    assert [n.name for n in job.graph.nodes] == ["detect_deletes__raw__orders"]


def test_stream_prune_forgets_only_ids_that_cannot_come_back(
    stream_dbs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 events processed; a crash between the sink's COMMIT and the acknowledgement is staged by
    putting 10 processed messages back in the queue. The prune keeps the ids of those 10 and every
    later one (they may be delivered again), and nothing processed within the retention; the
    redelivered 10 are still recognised and skipped afterwards."""
    from etl_assets.stream import producer
    from etl_assets_tests.stream_helpers import drain, outcome_counts, queue_size

    src, wh = stream_dbs["source"], stream_dbs["warehouse"]
    producer.produce(src, 60, seed=3, dirty_share=0)
    with psycopg.connect(src) as conn:
        events = conn.execute("SELECT id, payload FROM etl_stream.events ORDER BY id").fetchall()
    drain(src, wh)
    assert queue_size(src) == 0 and sum(outcome_counts(wh).values()) == 60
    with psycopg.connect(src) as conn, conn.transaction():  # 10 acknowledgements "lost"
        conn.execute(
            "INSERT INTO etl_stream.events (id, payload) SELECT id, payload FROM"
            " jsonb_to_recordset(%s) AS e(id bigint, payload jsonb)",
            (psycopg.types.json.Jsonb([{"id": i, "payload": p} for i, p in events[40:50]]),),
        )
    monkeypatch.setenv(retention.STREAM_RETENTION_VAR, "0")
    result = retention.stream_prune_job.execute_in_process(resources=_resources(src, wh))
    assert _output(result) == {"processed_ids_removed": 40, "retention_days": 0.0}
    with psycopg.connect(wh) as conn:
        kept = [r[0] for r in conn.execute("SELECT event_id FROM stream.processed_events ORDER BY 1")]
    assert kept == [e[0] for e in events[40:]]
    drain(src, wh)  # the 10 come back and are skipped: nothing applied twice
    assert queue_size(src) == 0 and sum(outcome_counts(wh).values()) == 20

    # Within the retention nothing goes; with an empty queue every older id may go.
    monkeypatch.setenv(retention.STREAM_RETENTION_VAR, "1")
    result = retention.stream_prune_job.execute_in_process(resources=_resources(src, wh))
    assert _output(result)["processed_ids_removed"] == 0
    with psycopg.connect(wh) as conn:
        conn.execute("UPDATE stream.processed_events SET processed_at = now() - interval '2 days'")
    result = retention.stream_prune_job.execute_in_process(resources=_resources(src, wh))
    assert _output(result)["processed_ids_removed"] == 20
    monkeypatch.setenv(retention.STREAM_RETENTION_VAR, "-2")
    with pytest.raises(ConfigError, match=r"ETL_STREAM_RETENTION_DAYS='-2' is not a number of days >= 0"):
        retention.stream_retention()
