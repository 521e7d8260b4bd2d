"""Failed-run alerts: a real failed run on a real instance, the run-failure sensor evaluated through
``build_run_status_sensor_context``, and a loopback HTTP server receiving (or refusing) the POST."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from dagster._core.events import DagsterEventType

from etl_assets import alerts

SECRET_DSN = "postgresql://etl:s3cr3t-pw@db.internal:5432/warehouse"


class Receiver:
    """A loopback HTTP server answering every POST with ``status`` after ``delay`` seconds."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@dg.asset(key=["alert_test", "boom"])
def boom() -> None:
    raise RuntimeError(f"could not load: connection to {SECRET_DSN} refused\nsecond line with details")


def _failed_run(instance: dg.DagsterInstance) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    result = dg.materialize([boom], instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    (entry,) = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
    return run, entry.dagster_event


def test_failed_run_is_recorded_and_alerted_without_secrets(
    etl_env: dict[str, str], receiver: Receiver, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from etl_assets.db import PostgresResource
    from etl_assets.quality.metrics import build_run_status_sensors

    monkeypatch.setenv("ETL_UI_URL", "http://dagster.example:3000/")
    with dg.DagsterInstance.get() as instance:  # the PostgreSQL instance of DAGSTER_HOME
        run, event = _failed_run(instance)
        context = dg.build_run_status_sensor_context(
            sensor_name=alerts.failed_run_alert.name,
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()

        # Not configured: nothing is posted.
        monkeypatch.delenv(alerts.ALERT_URL_VAR, raising=False)
        skipped = alerts.failed_run_alert(context)
        assert "ETL_ALERT_URL is not set" in skipped.skip_message and receiver.bodies == []

        monkeypatch.setenv(alerts.ALERT_URL_VAR, receiver.url)
        posted = alerts.failed_run_alert(context)
        assert "posted" in posted.skip_message
        (body,) = receiver.bodies
        assert body["run_id"] == run.run_id
        assert body["assets"] == ["alert_test/boom"]
        assert body["url"] == f"http://dagster.example:3000/runs/{run.run_id}"
        assert body["error"].startswith("alert_test__boom: RuntimeError: could not load: connection to ")
        assert "postgresql://etl:***@db.internal:5432/warehouse refused" in body["error"]
        assert "second line" not in body["error"]  # the first line only
        assert "s3cr3t" not in json.dumps(body)
        assert "alert_test/boom" in body["text"] and run.run_id[:8] in body["text"]  # Slack's field
        assert body["launched_by"] == "manual"

        # The same failure is recorded in etl.run_metrics by the project's run-failure sensor.
        (failed_sensor,) = [s for s in build_run_status_sensors() if s.name == "etl_run_metrics_failed_runs"]
        metrics_context = dg.build_run_status_sensor_context(
            sensor_name=failed_sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run,
            resources={"warehouse": PostgresResource(dsn=warehouse_dsn)},
        )
        failed_sensor(metrics_context)
    with psycopg.connect(warehouse_dsn) as conn:
        rows = conn.execute(
            "SELECT asset, status FROM etl.run_metrics WHERE run_id = %s ORDER BY asset NULLS FIRST",
            (run.run_id,),
        ).fetchall()
    assert rows == [(None, "failed"), ("alert_test/boom", "failed")]


def test_delivery_failures_are_logged_and_bounded(etl_env: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    refusing = Receiver(status=500)
    slow = Receiver(delay=3.0)
    try:
        with dg.DagsterInstance.get() as instance:
            run, event = _failed_run(instance)
            context = dg.build_run_status_sensor_context(
                sensor_name=alerts.failed_run_alert.name, dagster_event=event,
                dagster_instance=instance, dagster_run=run,
            ).for_run_failure()
            monkeypatch.setenv(alerts.ALERT_URL_VAR, refusing.url)
            result = alerts.failed_run_alert(context)
            assert "not delivered: HTTP 500" in result.skip_message and len(refusing.bodies) == 1

            monkeypatch.setenv(alerts.TIMEOUT_VAR, "0.5")
            monkeypatch.setenv(alerts.ALERT_URL_VAR, slow.url)
            started = time.monotonic()
            result = alerts.failed_run_alert(context)
            assert time.monotonic() - started < 2.5  # bounded by ETL_ALERT_TIMEOUT, not the server
            assert "not delivered" in result.skip_message and "timed out" in result.skip_message.lower()

            monkeypatch.setenv(alerts.ALERT_URL_VAR, "http://127.0.0.1:9/nothing-listens")
            result = alerts.failed_run_alert(context)
            assert "not delivered" in result.skip_message
    finally:
        refusing.close()
        slow.close()


def test_redact_masks_every_secret_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_WAREHOUSE_DSN", "host=db user=etl password=hunter2 dbname=w")
    text = ("failed: host=db user=etl password=hunter2 dbname=w; also postgresql://u:pw1@h/db and "
            "password='x y' PWD=abc")
    out = alerts.redact(text)
    for secret in ("hunter2", "pw1", "'x y'", "abc"):
        assert secret not in out
    assert "postgresql://u:***@h/db" in out
