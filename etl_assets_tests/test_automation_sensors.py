"""The extract sensors against real databases and a real Dagster instance (PostgreSQL storage).

Each test evaluates the sensor through ``dg.build_sensor_context`` as the daemon would, and asserts
on its run requests, run keys and skip reasons; runs the sensor requested are run with the extract
code itself (``run_extract``), and queued/failed runs are created in the instance.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from dagster._core.test_utils import create_run_for_test
from psycopg import sql

from etl_assets.automation import sensors
from etl_assets.automation.probes import newest_cursor_query
from etl_assets.cdc import capture
from etl_assets.db import PostgresResource
from etl_assets.extract.assets import extract_asset
from etl_assets_tests.cdc_helpers import make_items
from etl_assets_tests.extract_helpers import execute, run, scalar, spec_of


@pytest.fixture
def dbs(pg_databases: dict[str, str], etl_env: dict[str, str]) -> dict[str, str]:
    return pg_databases


@pytest.fixture
def instance(etl_env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as inst:
        yield inst


def _events(dbs: dict[str, str], rows: int = 100, index: bool = True) -> str:
    schema = f"auto_{secrets.token_hex(3)}"
    execute(dbs["source"], sql.SQL(
        "CREATE SCHEMA {s};"
        "CREATE TABLE {s}.events (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now());"
        "INSERT INTO {s}.events (id, v) SELECT g, 'v' || g FROM generate_series(1, {r}) g"
    ).format(s=sql.Identifier(schema), r=sql.Literal(rows)))
    if index:
        execute(dbs["source"],
                sql.SQL("CREATE INDEX ON {}.events (updated_at)").format(sql.Identifier(schema)))
    return schema


def _spec(schema: str, lag: int = 0, interval: str = "30s"):
    return spec_of(f"tables:\n  - name: {schema}.events\n    extract: incremental\n    primary_key: [id]\n"
                   f"    cursor: updated_at\n    lag: {lag}\n    target: raw.{schema}_events\n"
                   f"    automation: {{interval: {interval}}}\n")


def _tick(sensor: dg.SensorDefinition, job, specs, instance: dg.DagsterInstance, dbs: dict[str, str]
          ) -> dg.SensorResult:
    resources = {"source": PostgresResource(dsn=dbs["source"], role="source"),
                 "warehouse": PostgresResource(dsn=dbs["warehouse"], role="warehouse")}
    defs = dg.Definitions(assets=[extract_asset(s, "test.yaml") for s in specs], sensors=[sensor], jobs=[job],
                          resources=resources)
    context = dg.build_sensor_context(instance=instance, definitions=defs, resources=resources)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _skip(result: dg.SensorResult) -> str:
    assert not result.run_requests, [r.run_key for r in result.run_requests]
    return result.skip_reason.skip_message


def test_change_requests_one_run_same_change_once_no_change_no_run(dbs, instance) -> None:
    first, second = _events(dbs), _events(dbs)
    specs = [_spec(first), _spec(second)]
    sensor, job = sensors.build_source_sensor(30, specs)
    assert (sensor.name, job.name) == ("watch_incremental_every_30s", "extract_incremental_every_30s")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # Never extracted: one request covering both extracts.
    (request,) = _tick(sensor, job, specs, instance, dbs).run_requests
    assert set(request.asset_selection) == {dg.AssetKey(s.asset_key_path) for s in specs}
    assert request.tags[sensors.AUTOMATION_TAG] == sensor.name
    assert request.tags["dagster/priority"] == "1"  # ahead of the recompute runs in the queue
    assert request.run_config == {}  # two extracts: Dagster's default, a process per step
    for spec in specs:
        run(spec, dbs)
    # Nothing moved: no run, and the reason says what was seen.
    reason = _skip(_tick(sensor, job, specs, instance, dbs))
    mark = scalar(dbs["warehouse"], "SELECT state->>'cursor' FROM etl.state WHERE target = %s",
                  [str(specs[0].target)])
    assert f"{specs[0].target}: no row newer than {mark}" in reason
    # One source moves: one run for that extract only, with a key from its state and the probed value.
    execute(dbs["source"], sql.SQL("UPDATE {}.events SET v = 'x', updated_at = now() WHERE id = 7").format(
        sql.Identifier(second)))
    (moved,) = _tick(sensor, job, specs, instance, dbs).run_requests
    assert moved.asset_selection == [dg.AssetKey(specs[1].asset_key_path)]
    # one table: its steps run in the run's own process (no process per step)
    assert moved.run_config == {"execution": {"config": {"in_process": {}}}}
    assert moved.run_key.startswith("watch_incremental_every_30s:")
    # The same change seen again: the same key (the daemon launches a key once).
    (again,) = _tick(sensor, job, specs, instance, dbs).run_requests
    assert again.run_key == moved.run_key
    # While a run of that extract is queued, nothing is requested.
    queued = create_run_for_test(instance, job_name=job.name, status=dg.DagsterRunStatus.NOT_STARTED,
                                 asset_selection={dg.AssetKey(specs[1].asset_key_path)},
                                 tags={sensors.AUTOMATION_TAG: sensor.name})
    assert f"run {queued.run_id} is queued or in progress" in _skip(_tick(sensor, job, specs, instance, dbs))
    # The run happens: state moves, nothing more to do.
    instance.report_run_canceled(queued)  # stand-in for the daemon's run, which we run directly:
    run(specs[1], dbs)
    assert scalar(dbs["warehouse"], sql.SQL("SELECT v FROM raw.{} WHERE id = 7").format(
        sql.Identifier(f"{second}_events"))) == "x"
    _skip(_tick(sensor, job, specs, instance, dbs))


def test_failed_run_is_retried_after_a_backoff_under_a_new_key(dbs, instance) -> None:
    schema = _events(dbs)
    spec = _spec(schema, interval="5s")
    sensor, job = sensors.build_source_sensor(5, [spec])
    key = dg.AssetKey(spec.asset_key_path)
    (request,) = _tick(sensor, job, [spec], instance, dbs).run_requests
    # The daemon launches that key; the run fails. Dagster would skip the same key forever.
    failed = create_run_for_test(instance, job_name=job.name, status=dg.DagsterRunStatus.STARTED,
                                 asset_selection={key},
                                 tags={sensors.AUTOMATION_TAG: sensor.name,
                                       "dagster/run_key": request.run_key})
    instance.report_run_failed(failed)
    assert instance.get_run_by_id(failed.run_id).status == dg.DagsterRunStatus.FAILURE
    reason = _skip(_tick(sensor, job, [spec], instance, dbs))
    assert "last 1 automated run(s) failed; retrying" in reason
    time.sleep(5.5)  # the back-off after one failure: one interval
    (retry,) = _tick(sensor, job, [spec], instance, dbs).run_requests
    assert retry.run_key != request.run_key and retry.asset_selection == [key]
    run(spec, dbs)
    _skip(_tick(sensor, job, [spec], instance, dbs))


def test_late_commit_inside_the_window_is_picked_up(dbs, instance) -> None:
    schema = _events(dbs)
    spec = _spec(schema)
    sensor, job = sensors.build_source_sensor(30, [spec])
    table = sql.Identifier(schema, "events")
    run(spec, dbs)
    holder = psycopg.connect(dbs["source"])  # a transaction open across the next extract
    try:
        holder.execute(sql.SQL("UPDATE {} SET v = 'late', updated_at = now() WHERE id = 1").format(table))
        execute(dbs["source"],
                sql.SQL("UPDATE {} SET v = 'early', updated_at = now() WHERE id = 2").format(table))
        (first,) = _tick(sensor, job, [spec], instance, dbs).run_requests
        run(spec, dbs)  # sees 'early', not the open transaction's row
        holder.commit()  # commits a cursor value below the stored mark: max(updated_at) does not move
    finally:
        holder.close()
    (second,) = _tick(sensor, job, [spec], instance, dbs).run_requests
    assert second.run_key != first.run_key
    run(spec, dbs)
    target = sql.Identifier("raw", f"{schema}_events")
    assert scalar(dbs["warehouse"], sql.SQL("SELECT v FROM {} WHERE id = 1").format(target)) == "late"
    assert "no row newer than" in _skip(_tick(sensor, job, [spec], instance, dbs))
    # With lag: the window stays open until lag has passed after the mark, so the sensor asks again.
    lagged = _spec(schema, lag=3600)
    sensor, job = sensors.build_source_sensor(30, [lagged])
    (request,) = _tick(sensor, job, [lagged], instance, dbs).run_requests
    run(lagged, dbs)
    (request,) = _tick(sensor, job, [lagged], instance, dbs).run_requests
    assert request.asset_selection == [dg.AssetKey(lagged.asset_key_path)]


def test_probe_uses_the_cursor_index_on_a_million_rows(dbs, instance) -> None:
    indexed = _events(dbs, rows=1_000_000)
    plain = _events(dbs, rows=1_000, index=False)
    execute(dbs["source"], sql.SQL("ANALYZE {}").format(sql.Identifier(indexed, "events")))
    with psycopg.connect(dbs["source"], autocommit=True) as conn:
        for cursor_type in (None, "timestamp with time zone"):
            query = newest_cursor_query(_spec(indexed), cursor_type)
            plan = "\n".join(r[0] for r in conn.execute(
                sql.SQL("EXPLAIN ") + query, ["2026-01-01"] if cursor_type else None).fetchall())
            assert "Index Only Scan" in plan or "Index Scan" in plan, plan
            assert "Seq Scan" not in plan, plan
        plan = "\n".join(r[0] for r in conn.execute(
            sql.SQL("EXPLAIN ") + newest_cursor_query(_spec(plain), None)).fetchall())
        assert "Seq Scan" in plan  # the positive control: without an index the probe scans
    specs = [_spec(indexed), _spec(plain)]
    sensor, job = sensors.build_source_sensor(30, specs)
    for spec in specs:
        run(spec, dbs)
    started = time.monotonic()
    reason = _skip(_tick(sensor, job, specs, instance, dbs))
    assert time.monotonic() - started < 30  # not a benchmark: a full scan would still pass; see EXPLAIN
    assert "no row newer than" in reason
    probes = sensors.probe_all(specs, PostgresResource(dsn=dbs["source"], role="source"),
                               PostgresResource(dsn=dbs["warehouse"]))
    assert probes[0].warnings == []
    (warning,) = probes[1].warnings
    assert warning.startswith("configuration: No index on") and "'updated_at'" in warning


def test_cdc_probe_compares_newest_and_applied_positions(dbs, instance, source_conn) -> None:
    from etl_assets.cdc import sync

    ref = make_items(source_conn, 50)
    capture.install(source_conn, ref)
    spec = spec_of(f"tables:\n  - name: {ref.schema}.items\n    extract: cdc\n    primary_key: [id]\n"
                   f"    target: raw.{ref.schema}_items\n")
    sensor, job = sensors.build_source_sensor(30, [spec])
    assert sensor.name == "watch_cdc_every_30s"

    def sync_now() -> None:
        sync.sync_table(spec, sync.dsn_connector(dbs["source"], "source", "S"),
                        sync.dsn_connector(dbs["warehouse"], "warehouse", "W"), wait=2, prune_after=False)

    (request,) = _tick(sensor, job, [spec], instance, dbs).run_requests  # no snapshot yet
    sync_now()
    assert "no change after position" in _skip(_tick(sensor, job, [spec], instance, dbs))
    source_conn.execute(sql.SQL("UPDATE {} SET name = 'changed' WHERE id <= 3").format(ref.ident))
    result = _tick(sensor, job, [spec], instance, dbs)
    (moved,) = result.run_requests
    assert moved.run_key != request.run_key
    sync_now()
    assert "no change after position" in _skip(_tick(sensor, job, [spec], instance, dbs))
    capture.uninstall(source_conn, ref)


def test_extract_run_that_changes_nothing_keeps_its_data_version(dbs, instance) -> None:
    from etl_assets.automation.versions import latest_data_version

    schema = _events(dbs, rows=20)
    spec = _spec(schema)
    asset = extract_asset(spec, "test.yaml")
    resources = {"source": PostgresResource(dsn=dbs["source"], role="source"),
                 "warehouse": PostgresResource(dsn=dbs["warehouse"], role="warehouse")}
    key = dg.AssetKey(spec.asset_key_path)

    def materialize() -> str | None:
        assert dg.materialize([asset], instance=instance, resources=resources).success
        return latest_data_version(instance, key)

    first = materialize()
    assert first is not None
    assert materialize() == first  # nothing changed at the source
    execute(dbs["source"], sql.SQL("UPDATE {} SET v = 'new', updated_at = now() WHERE id = 3").format(
        sql.Identifier(schema, "events")))
    changed = materialize()
    assert changed not in (None, first)
