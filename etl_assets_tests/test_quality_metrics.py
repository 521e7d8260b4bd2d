"""Run metrics: rows written during real runs by the hooks (success, failure, step retry, re-run),
failed runs recorded by the run-status sensor (built with Dagster's context builder) and the
summary that `etl-assets metrics` prints."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import psycopg
import pytest
from dagster._core.events import DagsterEventType

from etl_assets.cli import main
from etl_assets.db import PostgresResource
from etl_assets.migrations import migrate
from etl_assets.quality.defs import _with_hooks
from etl_assets.quality.metrics import build_run_status_sensors, record_run, summarize


def rows(conn: psycopg.Connection, run_id: str) -> dict[str | None, dict]:
    cur = conn.execute(
        """SELECT asset, status, attempts, records_processed, records_failed, error, recorded_by, job,
                  started_at IS NOT NULL AND ended_at >= started_at AND duration_seconds >= 0 AS timed
           FROM etl.run_metrics WHERE run_id = %s""",
        (run_id,),
    )
    names = [d.name for d in cur.description]
    return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def build(prefix: str, state: dict):
    @dg.asset(key=[prefix, "ok"])
    def ok() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows_in": 5, "dead_letters": 1})

    @dg.asset(key=[prefix, "boom"])
    def boom() -> dg.MaterializeResult:
        if state["broken"]:
            raise ValueError("boom: the source is broken")
        return dg.MaterializeResult(metadata={"dagster/row_count": 7})

    @dg.asset(key=[prefix, "flaky"], retry_policy=dg.RetryPolicy(max_retries=2))
    def flaky(context) -> dg.MaterializeResult:
        if context.retry_number == 0:
            raise ConnectionError("transient")
        return dg.MaterializeResult(metadata={"rows_read": 3})

    @dg.asset(key=[prefix, "down"], deps=[boom])
    def down() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return _with_hooks([ok, boom, flaky, down])


@pytest.fixture
def conn(warehouse_dsn: str):
    with psycopg.connect(warehouse_dsn, autocommit=True) as c:
        yield c


def test_metrics_after_success_failure_retry_and_sensor(warehouse_dsn, conn, fresh_schema) -> None:
    state = {"broken": True}
    assets = build(fresh_schema, state)
    resources = {"warehouse": PostgresResource(dsn=warehouse_dsn)}
    p = fresh_schema
    with dg.instance_for_test() as instance:
        first = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
        assert not first.success
        got = rows(conn, first.run_id)
        # written by the hooks during the run: no sensor, no daemon involved yet
        assert set(got) == {f"{p}/ok", f"{p}/boom", f"{p}/flaky"}
        assert {
            k: (v["status"], v["attempts"], v["records_processed"], v["records_failed"], v["recorded_by"])
            for k, v in got.items()
        } == {
            f"{p}/ok": ("success", 1, 5, 1, "hook"),
            f"{p}/boom": ("failed", 1, None, None, "hook"),
            f"{p}/flaky": ("success", 2, 3, 0, "hook"),
        }
        assert got[f"{p}/boom"]["error"].startswith("ValueError: boom: the source is broken")
        assert all(v["timed"] for v in got.values())
        assert got[f"{p}/ok"]["job"] == "__ephemeral_asset_job__"

        # the daemon's run-status sensor, evaluated through Dagster's context builder
        run = instance.get_run_by_id(first.run_id)
        failure = instance.all_logs(first.run_id, of_type=DagsterEventType.RUN_FAILURE)[0].dagster_event
        failed_sensor = next(s for s in build_run_status_sensors() if s.name == "etl_run_metrics_failed_runs")
        for _ in range(2):  # idempotent: a second evaluation adds nothing
            context = dg.build_run_status_sensor_context(
                sensor_name=failed_sensor.name,
                dagster_event=failure,
                dagster_instance=instance,
                dagster_run=run,
                resources=resources,
            )
            failed_sensor(context)
        got = rows(conn, first.run_id)
        assert set(got) == {None, f"{p}/ok", f"{p}/boom", f"{p}/flaky", f"{p}/down"}
        assert (got[None]["status"], got[None]["recorded_by"]) == ("failed", "sensor")
        assert "boom" in got[None]["error"]
        assert (got[f"{p}/down"]["status"], got[f"{p}/down"]["recorded_by"]) == ("skipped", "sensor")
        assert got[f"{p}/boom"]["recorded_by"] == "hook"  # the hook's richer row is kept
        assert record_run(conn, instance, run) and len(rows(conn, first.run_id)) == 5

        # the re-run after the fix
        state["broken"] = False
        second = dg.materialize(
            assets, resources=resources, instance=instance, selection=[f"{p}/boom", f"{p}/down"]
        )
        got = rows(conn, second.run_id)
        assert {k: (v["status"], v["records_processed"]) for k, v in got.items()} == {
            f"{p}/boom": ("success", 7),
            f"{p}/down": ("success", None),
        }

    summary = {s.asset: s for s in summarize(conn, dt.timedelta(hours=1)) if s.asset.startswith(p)}
    assert {k: (s.runs, s.successes, s.failures, s.success_rate) for k, s in summary.items()} == {
        f"{p}/ok": (1, 1, 0, 1.0),
        f"{p}/boom": (2, 1, 1, 0.5),
        f"{p}/flaky": (1, 1, 0, 1.0),
        f"{p}/down": (1, 1, 0, 1.0),  # the skipped row is not counted as a run
    }
    assert summary[f"{p}/ok"].records_processed == 5 and summary[f"{p}/ok"].records_failed == 1


def test_metrics_command_prints_success_rate(etl_env, warehouse_dsn, conn, fresh_schema, capsys) -> None:
    asset = f"{fresh_schema}/cli"
    with psycopg.connect(warehouse_dsn) as admin:
        migrate(admin)
    conn.execute(
        """INSERT INTO etl.run_metrics (job, run_id, asset, status, started_at, ended_at, duration_seconds,
                                        records_processed, recorded_by)
           VALUES ('j', 'r1', %(a)s, 'success', now() - interval '2 minutes', now(), 2.0, 10, 'hook'),
                  ('j', 'r2', %(a)s, 'failed', now() - interval '1 minute', now(), 4.0, NULL, 'hook'),
                  ('j', 'r0', %(a)s, 'success', now() - interval '3 days', now(), 1.0, 1, 'hook')""",
        {"a": asset},
    )
    assert main(["metrics", "--window", "24h", "--asset", asset]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(asset))
    assert line.split() == [asset, "2", "50.0%", "1", "3.00", "3.90", "4.00", "10", "0", "failed"]
    header = out.splitlines()[1]  # under the title line, a header over every column
    assert header.split() == ["asset", "runs", "success", "failures", "avg", "s", "p95", "s", "max", "s",
                              "records", "failed", "last"]
    assert main(["metrics", "--window", "24h", "--asset", asset, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(a["asset"], a["runs"], a["success_rate"]) for a in data["assets"]] == [(asset, 2, 0.5)]
    assert main(["metrics", "--window", "soon"]) == 2


def test_headless_runner_records_a_failed_run(etl_env, conn) -> None:
    """`etl-assets run` has no daemon: the hooks and the runner itself record the failed run."""
    from etl_assets import runner
    from etl_assets.quality.defs import apply_quality
    from etl_assets.resources import build_resources

    @dg.asset(key=["qm", "parent"])
    def parent() -> dg.MaterializeResult:
        raise RuntimeError("source exploded")

    @dg.asset(key=["qm", "child"], deps=[parent])
    def child() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    defs = dg.Definitions.merge(
        apply_quality(dg.Definitions(assets=[parent, child])), dg.Definitions(resources=build_resources())
    )
    with dg.DagsterInstance.get() as instance:
        summary = runner.run(defs=defs, instance=instance, out=lambda s: None)
    assert not summary.ok
    [run_id] = summary.run_ids
    got = rows(conn, run_id)
    assert {k: (v["status"], v["recorded_by"]) for k, v in got.items()} == {
        "qm/parent": ("failed", "hook"),
        "qm/child": ("skipped", "runner"),
        None: ("failed", "runner"),
    }
    assert "source exploded" in got["qm/parent"]["error"] and "source exploded" in got[None]["error"]


def test_canceled_run_recorded_by_the_sensor(warehouse_dsn, conn, fresh_schema) -> None:
    @dg.asset(key=[fresh_schema, "a"])
    def a() -> None: ...

    @dg.asset(key=[fresh_schema, "b"], deps=[a])
    def b() -> None: ...

    job = dg.Definitions(assets=[a, b], jobs=[dg.define_asset_job("cancel_me")]).resolve_job_def("cancel_me")
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(job_def=job, asset_selection=frozenset({a.key, b.key}))
        instance.report_run_canceled(run)
        run = instance.get_run_by_id(run.run_id)
        assert run.status == dg.DagsterRunStatus.CANCELED
        event = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_CANCELED)[0].dagster_event
        sensor = next(s for s in build_run_status_sensors() if s.name == "etl_run_metrics_canceled_runs")
        sensor(
            dg.build_run_status_sensor_context(
                sensor_name=sensor.name,
                dagster_event=event,
                dagster_instance=instance,
                dagster_run=run,
                resources={"warehouse": PostgresResource(dsn=warehouse_dsn)},
            )
        )
        got = rows(conn, run.run_id)
    assert {k: (v["status"], v["job"], v["recorded_by"]) for k, v in got.items()} == {
        None: ("canceled", "cancel_me", "sensor"),
        f"{fresh_schema}/a": ("canceled", "cancel_me", "sensor"),
        f"{fresh_schema}/b": ("canceled", "cancel_me", "sensor"),
    }
