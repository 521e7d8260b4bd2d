"""End to end under a real daemon: `etl-assets daemon` fills an empty warehouse and keeps it current.

No command but the daemon runs the pipeline: its sensors see the source move, its automation
conditions carry the change downstream. The test times each source change from its COMMIT to the
cleaned table and to the daily aggregate, and writes the figures to the test artifacts
(``automation-latency.json``) for docs/automation.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from etl_assets.settings import PROJECT_ROOT
from etl_assets_tests.stream_helpers import CLEAN_SQL

pytestmark = [pytest.mark.drill, pytest.mark.timeout(1800)]

ARTIFACTS = Path(os.environ.get("ETL_TEST_ARTIFACTS", PROJECT_ROOT / ".etl-test"))
FILL_TIMEOUT_S = 900.0
CHANGE_TIMEOUT_S = 300.0


def _scalar(dsn: str, query: str, params: tuple = ()) -> object:
    with psycopg.connect(dsn) as conn:
        try:
            return conn.execute(query, params).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return None


def _wait(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen,
          log: Path) -> float:
    """Seconds until ``condition`` holds (polled every 0.5 s); fails with the daemon's log tail."""
    began = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the daemon exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() - began > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return time.monotonic() - began


def _source_clean_rows(source: str) -> set[tuple]:
    with psycopg.connect(source) as conn:
        return set(conn.execute(f"SELECT o.id, o.updated_at FROM shop.orders o WHERE {CLEAN_SQL}").fetchall())


def _rows(dsn: str, table: str) -> set[tuple]:
    with psycopg.connect(dsn) as conn:
        try:
            return set(conn.execute(f"SELECT id, updated_at FROM {table}").fetchall())
        except psycopg.errors.UndefinedTable:
            return set()


def _raw_current(env: dict[str, str]) -> bool:
    """Every source order is in raw.orders as it is now (rows deleted at the source may remain until
    the daily delete detection: incremental extracts cannot see deletes)."""
    with psycopg.connect(env["ETL_SOURCE_DSN"]) as conn:
        source = set(conn.execute("SELECT id, updated_at FROM shop.orders").fetchall())
    return source <= _rows(env["ETL_WAREHOUSE_DSN"], "raw.orders")


def _clean_current(env: dict[str, str]) -> bool:
    return _source_clean_rows(env["ETL_SOURCE_DSN"]) <= _rows(env["ETL_WAREHOUSE_DSN"], "clean.orders")


def _yesterday() -> dt.date:
    """The daily aggregate's latest partition (a day's partition exists once the day has ended)."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def _aggregate_current(env: dict[str, str]) -> bool:
    """The daily aggregate's latest partition counts exactly the cleaned orders of that day."""
    wh, day = env["ETL_WAREHOUSE_DSN"], _yesterday()
    expected = _scalar(wh, "SELECT count(*) FROM clean.orders WHERE order_date = %s", (day,))
    got = _scalar(wh, "SELECT coalesce(sum(event_count), 0) FROM mart.daily_category_totals "
                      "WHERE order_date = %s", (day,))
    return got is not None and expected is not None and int(got) == int(expected)


def _late_order_for_yesterday(source: str) -> None:
    """One clean order dated yesterday noon, committed now: it must reach yesterday's aggregate."""
    with psycopg.connect(source) as conn:
        conn.execute(
            "INSERT INTO shop.orders (id, user_id, category_id, amount, status, created_at, updated_at) "
            "SELECT max(o.id) + 1, min(o.user_id), min(o.category_id), 10.00, 'paid', %s, now() "
            "FROM shop.orders o",
            (dt.datetime.combine(_yesterday(), dt.time(12), tzinfo=dt.UTC),),
        )


def _sensor_runs(env: dict[str, str]) -> dict[str, object]:
    """The extract runs the sensors launched, from the sensor's request (the run's creation) to the
    run's end, and the queue wait inside it (creation to start), in seconds."""
    import dagster as dg
    from dagster._core.storage.dagster_run import RunsFilter

    from etl_assets.automation.sensors import AUTOMATION_TAG

    previous = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")}
    os.environ.update({k: env[k] for k in previous})
    try:
        with dg.DagsterInstance.get() as instance:
            records = [r for r in instance.get_run_records(RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
                       if r.dagster_run.tags.get(AUTOMATION_TAG, "").startswith("watch_")
                       and "watch_changed_days" not in r.dagster_run.tags.get(AUTOMATION_TAG, "")]
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    total = sorted(r.end_time - r.create_timestamp.timestamp() for r in records if r.end_time)
    queued = sorted(r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time)
    if not total:
        return {"sensor_runs": 0}
    return {"sensor_runs": len(total), "sensor_request_to_end_p50_s": round(statistics.median(total), 1),
            "sensor_request_to_end_max_s": round(total[-1], 1),
            "sensor_request_to_start_p50_s": round(statistics.median(queued), 1)}


def test_the_daemon_fills_an_empty_warehouse_and_keeps_it_current(fresh_project: dict[str, str]) -> None:
    env = fresh_project
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "automation-daemon.log"  # kept after the test: what the daemon and its runs said
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "etl_assets.cli", "daemon"], cwd=PROJECT_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    figures: dict[str, object] = {}
    try:
        figures["fill_s"] = round(_wait(lambda: _raw_current(env) and _clean_current(env)
                                        and _aggregate_current(env), FILL_TIMEOUT_S,
                                        "the warehouse to fill", proc, log), 1)
        to_clean: list[float] = []
        to_aggregate: list[float] = []
        figures.update({"commit_to_clean_s": to_clean, "commit_to_aggregate_s": to_aggregate})
        for round_ in range(3):
            done = subprocess.run([sys.executable, "-m", "etl_assets.cli", "simulate", "--changes", "100",
                                   "--seed", str(100 + round_)], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            _late_order_for_yesterday(env["ETL_SOURCE_DSN"])
            committed = time.monotonic()
            assert not _clean_current(env), "the change reached clean.orders before any run"
            _wait(lambda: _raw_current(env) and _clean_current(env), CHANGE_TIMEOUT_S,
                  f"change {round_ + 1} to reach clean.orders", proc, log)
            to_clean.append(round(time.monotonic() - committed, 1))
            # clean.orders now holds the late order: the aggregate's day is one order short until its
            # partition is recomputed
            _wait(lambda: _clean_current(env) and _aggregate_current(env), CHANGE_TIMEOUT_S,
                  f"change {round_ + 1} to reach the daily aggregate", proc, log)
            to_aggregate.append(round(time.monotonic() - committed, 1))
        figures.update({
            "commit_to_clean_p50_s": statistics.median(to_clean),
            "commit_to_clean_max_s": max(to_clean),
            "commit_to_aggregate_p50_s": statistics.median(to_aggregate),
            "commit_to_aggregate_max_s": max(to_aggregate),
            **_sensor_runs(env),
        })
    finally:
        stopping = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            pytest.fail("etl-assets daemon did not stop within 30 s of SIGTERM")
        figures["stop_s"] = round(time.monotonic() - stopping, 1)
        figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
        (ARTIFACTS / "automation-latency.json").write_text(json.dumps(figures, indent=2))
        print("automation latency:", json.dumps(figures))
    assert figures["stop_s"] <= 20
