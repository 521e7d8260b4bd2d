"""One run per extracted table at a time (etl_assets/extract/runlock.py), on a real PostgreSQL.

For each mode (full, incremental, chunked): two runs started together from two processes, one
refused naming the holder, or, marked as automation, the second waiting for the first; then the
target equals the source and the state is the one a lone run leaves. A holder killed while holding
does not block the next run; a row it leaves behind names nobody.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from etl_assets.db import connect
from etl_assets.errors import ConfigError, ExtractBusy
from etl_assets.extract.runlock import (
    DEFAULT_WAIT_SECONDS,
    extract_lock,
    holder_of,
    launched_by_automation,
    lock_wait_seconds,
)
from etl_assets.extract.runner import run_extract
from etl_assets.pipeline_config import TableSpec
from etl_assets_tests.extract_helpers import assert_equal, execute, module_databases, run, scalar, spec_of
from etl_assets_tests.runlock_helpers import start, start_together

ROWS = 20_000
CHUNK = 1_000
MODES = {
    "full": "    extract: full\n    load: swap\n",
    "full_fast_path": "    extract: full\n    load: truncate_insert\n    fast_path: true\n",
    "incremental": "    extract: incremental\n    load: upsert\n    cursor: updated_at\n",
    "chunked": f"    extract: chunked\n    load: upsert\n    chunk_size: {CHUNK}\n",
}
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    for found in module_databases(pg_admin_dsn):
        execute(found["source"], f"""
            CREATE SCHEMA shop;
            CREATE TABLE shop.items (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL,
                                     amount numeric(12,2), note text);
            INSERT INTO shop.items
            SELECT g, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 second', g * 1.25, 'item ' || g
              FROM generate_series(1, {ROWS}) g;
            CREATE INDEX ON shop.items (updated_at)""")
        yield found


def yaml_of(mode: str, target: str) -> str:
    return f"tables:\n  - name: shop.items\n    primary_key: [id]\n    target: {target}\n" + MODES[mode]


def state_of(dbs: dict[str, str], spec: TableSpec) -> tuple[str, dict]:
    with psycopg.connect(dbs["warehouse"]) as conn:
        run_id, state = conn.execute("SELECT run_id, state FROM etl.state WHERE target = %s",
                                     (str(spec.target),)).fetchone()
    return run_id, state


def holder_rows(dbs: dict[str, str], spec: TableSpec) -> list[tuple]:
    with psycopg.connect(dbs["warehouse"]) as conn:
        return conn.execute("SELECT run_id, pid, host FROM etl.extract_runs WHERE target = %s",
                            (str(spec.target),)).fetchall()


def connector(dsn: str):
    return functools.partial(connect, dsn)


def assert_lone_run_state(dbs: dict[str, str], spec: TableSpec, mode: str, run_id: str, passes: int) -> None:
    """The state a run leaves when nobody interleaved with it (``passes``: runs so far)."""
    owner, state = state_of(dbs, spec)
    assert owner == run_id
    assert state["table_rows"] == ROWS
    if mode.startswith("full"):
        assert state["rows"] == ROWS
    elif mode == "incremental":
        assert state["cursor"] == scalar(dbs["source"], "SELECT max(updated_at)::text FROM shop.items")
        assert state["next_from"] is not None
    else:
        assert state["after"] is None and state["passes"] == passes
        assert state["rows"] == state["last_pass_rows"] == ROWS
        assert state["pass_run_id"] == run_id


# --- in one process: the lock's behaviour, quickly --------------------------------------------------------


def test_manual_run_is_refused_at_once_naming_the_holder(dbs: dict[str, str]) -> None:
    spec = spec_of(yaml_of("full", "raw.items_refused"))
    holder = "1a2b3c4d-0000-4000-8000-000000000001"
    started = time.monotonic()
    with extract_lock(spec.target, connector(dbs["warehouse"]), holder):
        with pytest.raises(ExtractBusy) as caught:
            run(spec, dbs, run_id="second")
        refused_after = time.monotonic() - started
        assert holder_rows(dbs, spec) == [(holder, os.getpid(), HOST)]
    message = str(caught.value)
    assert re.fullmatch(
        rf"raw\.items_refused is being extracted by run 1a2b3c4d… \(pid {os.getpid()} on host "
        rf"{re.escape(HOST)}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); retry later\.", message), message
    assert "\n" not in message and refused_after < 5
    # The refused run touched nothing: no target, no state.
    assert scalar(dbs["warehouse"], "SELECT to_regclass('raw.items_refused')") is None
    assert scalar(dbs["warehouse"], "SELECT count(*) FROM etl.state WHERE target = 'raw.items_refused'") == 0
    assert holder_rows(dbs, spec) == []  # the holder removed its row when it let go
    report = run(spec, dbs, run_id="third")
    assert report.rows_read == ROWS and report.lock_waited_seconds < 1
    assert_equal(dbs, spec)


def test_automated_run_waits_then_gives_up_with_the_same_message(dbs: dict[str, str]) -> None:
    spec = spec_of(yaml_of("incremental", "raw.items_gave_up"))
    lines: list[str] = []
    with extract_lock(spec.target, connector(dbs["warehouse"]), "holder-run-42"):
        started = time.monotonic()
        with pytest.raises(ExtractBusy) as caught:
            run_extract(spec, connector(dbs["source"]), connector(dbs["warehouse"]), "waiter", wait=1.5,
                        log=lines.append)
        waited = time.monotonic() - started
    assert 1.5 <= waited < 4
    assert re.fullmatch(r"raw\.items_gave_up is still being extracted by run holder-r… \(pid \d+ on host .+, "
                        r"since .+ UTC\) after waiting 2 s \(ETL_EXTRACT_LOCK_WAIT\); retry later\.",
                        str(caught.value)), str(caught.value)
    assert len(lines) == 1
    assert lines[0].startswith("raw.items_gave_up is being extracted by run holder-r… (pid ")
    assert "waits for it" in lines[0]
    assert scalar(dbs["warehouse"], "SELECT to_regclass('raw.items_gave_up')") is None


def test_waiting_run_starts_when_the_holder_lets_go(dbs: dict[str, str]) -> None:
    spec = spec_of(yaml_of("chunked", "raw.items_waited"))
    held: dict[str, float] = {}
    locked = threading.Event()

    def hold() -> None:
        with extract_lock(spec.target, connector(dbs["warehouse"]), "holder") as lock:
            locked.set()
            time.sleep(1.5)
        held["released"] = lock.released_at

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(10)
    lines: list[str] = []
    report = run_extract(spec, connector(dbs["source"]), connector(dbs["warehouse"]), "waiter", wait=30,
                         log=lines.append)
    thread.join()
    assert report.lock_acquired_at >= held["released"]
    assert 0.5 < report.lock_waited_seconds < 10
    assert report.metadata()["lock_wait_seconds"] == round(report.lock_waited_seconds, 2)
    assert len(lines) == 1 and "run holder (pid" in lines[0]
    assert_equal(dbs, spec)
    assert_lone_run_state(dbs, spec, "chunked", "waiter", passes=1)


def test_an_earlier_attempt_of_the_same_run_is_waited_for_even_by_a_manual_run(
    dbs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step delivered again (Celery, after a broker cut) while its first copy still runs waits for it."""
    monkeypatch.setenv("ETL_EXTRACT_LOCK_WAIT", "30")
    spec = spec_of(yaml_of("full", "raw.items_attempts"))
    locked = threading.Event()

    def first_attempt() -> None:
        with extract_lock(spec.target, connector(dbs["warehouse"]), "the-run-id"):
            locked.set()
            time.sleep(1.5)

    thread = threading.Thread(target=first_attempt)
    thread.start()
    locked.wait(10)
    lines: list[str] = []
    report = run_extract(spec, connector(dbs["source"]), connector(dbs["warehouse"]), "the-run-id", wait=0,
                         log=lines.append)
    thread.join()
    assert report.lock_waited_seconds > 0.5 and report.rows_read == ROWS
    assert lines[0].startswith("raw.items_attempts is being extracted by an earlier attempt of this run, "
                               "run the-run-… (pid ")
    assert_equal(dbs, spec)


def test_a_holder_whose_process_is_gone_is_waited_for_briefly(dbs: dict[str, str]) -> None:
    """Between a holder's kill and the server ending its session, a manual run waits instead of failing."""
    import subprocess
    import sys

    spec = spec_of(yaml_of("full", "raw.items_dead_pid"))
    with extract_lock(spec.target, connector(dbs["warehouse"]), "first"):
        pass  # migrates
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists on this host
    with psycopg.connect(dbs["warehouse"], autocommit=True) as session:
        key = session.execute("SELECT hashtextextended(%s, 0)",
                              ("etl-assets extract run: raw.items_dead_pid",)).fetchone()[0]
        session.execute("SELECT pg_advisory_lock(%s)", (key,))
        session.execute("INSERT INTO etl.extract_runs (target, run_id, pid, host, backend_pid) "
                        "VALUES ('raw.items_dead_pid', 'killed-run', %s, %s, pg_backend_pid())",
                        (dead.pid, HOST))
        timer = threading.Timer(1.0, session.close)  # the server notices the dead connection
        timer.start()
        lines: list[str] = []
        report = run_extract(spec, connector(dbs["source"]), connector(dbs["warehouse"]), "next", wait=0,
                             log=lines.append)
        timer.join()
    assert 0.5 < report.lock_waited_seconds < 5 and report.rows_read == ROWS
    assert len(lines) == 1 and re.fullmatch(
        rf"raw\.items_dead_pid is held by run killed-r… \(pid {dead.pid} on host {re.escape(HOST)}, since .+ "
        r"UTC\), whose process is gone; waiting for the warehouse to end its session \(at most 10 s\)",
        lines[0]), lines
    assert_equal(dbs, spec)


def test_a_stale_row_names_nobody_and_an_unrecorded_session_is_named_by_its_pid(dbs: dict[str, str]) -> None:
    spec = spec_of(yaml_of("full", "raw.items_stale"))
    with extract_lock(spec.target, connector(dbs["warehouse"]), "first"):
        pass  # migrates, then lets go
    execute(dbs["warehouse"], "INSERT INTO etl.extract_runs (target, run_id, pid, host, backend_pid) "
            "VALUES ('raw.items_stale', 'dead-run', 4242, 'gone', 999999)")
    with psycopg.connect(dbs["warehouse"]) as conn:
        assert holder_of(conn, spec.target) is None  # the row is there, its lock is free: stale
    report = run(spec, dbs, run_id="after-stale")
    assert report.rows_read == ROWS and holder_rows(dbs, spec) == []

    # A session holding the lock that has not recorded itself (the moment between the two statements).
    with psycopg.connect(dbs["warehouse"], autocommit=True, application_name="someone") as other:
        key = other.execute("SELECT hashtextextended(%s, 0)", ("etl-assets extract run: raw.items_stale",)
                            ).fetchone()[0]
        other.execute("SELECT pg_advisory_lock(%s)", (key,))
        session = other.info.backend_pid
        with pytest.raises(ExtractBusy) as caught:
            run(spec, dbs, run_id="refused")
    assert str(caught.value) == (f"raw.items_stale is being extracted by warehouse session {session} "
                                 "(someone), which has not recorded its run; retry later.")


def test_the_write_lock_of_other_writers_is_not_the_run_lock(dbs: dict[str, str]) -> None:
    """Other writers of the table (IO manager, routing) take only the per-transaction write lock:
    they do not wait for a whole extract run, and an extract run does not wait for them."""
    from etl_assets.io.writer import lock_target

    spec = spec_of(yaml_of("full", "raw.items_writers"))
    with extract_lock(spec.target, connector(dbs["warehouse"]), "holder"), \
            psycopg.connect(dbs["warehouse"]) as conn:
        conn.execute("SET lock_timeout = '1s'")
        lock_target(conn, spec.target)  # would time out if the keys were the same


def test_wait_setting_and_automation_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETL_EXTRACT_LOCK_WAIT", raising=False)
    assert lock_wait_seconds() == DEFAULT_WAIT_SECONDS == 600
    monkeypatch.setenv("ETL_EXTRACT_LOCK_WAIT", "0")
    assert lock_wait_seconds() == 0
    monkeypatch.setenv("ETL_EXTRACT_LOCK_WAIT", "42.5")
    assert lock_wait_seconds() == 42.5
    for bad in ("-1", "ten", "nan", "inf"):
        monkeypatch.setenv("ETL_EXTRACT_LOCK_WAIT", bad)
        with pytest.raises(ConfigError, match=r"ETL_EXTRACT_LOCK_WAIT=.* is not a number of seconds >= 0"):
            lock_wait_seconds()
    from etl_assets.extract.runlock import _test_hold

    monkeypatch.setenv("ETL_TEST_EXTRACT_HOLD", "0.5")
    assert _test_hold() == 0.5
    monkeypatch.setenv("ETL_TEST_EXTRACT_HOLD", "x")
    with pytest.raises(ConfigError, match=r"ETL_TEST_EXTRACT_HOLD='x' is not a number of seconds"):
        _test_hold()
    monkeypatch.delenv("ETL_TEST_EXTRACT_HOLD")
    from etl_assets.automation.sensors import AUTOMATION_TAG

    assert launched_by_automation({AUTOMATION_TAG: "extract_incremental_sensor"})
    assert launched_by_automation({"dagster/schedule_name": "nightly"})
    assert launched_by_automation({"dagster/sensor_name": "s"})
    assert launched_by_automation({"dagster/from_automation_condition": "true"})
    assert not launched_by_automation({"etl/source": "etl-assets run"})
    assert not launched_by_automation({"dagster/backfill": "abc"})  # a person launched the backfill
    assert not launched_by_automation(None)


def test_the_asset_refuses_a_manual_run_and_waits_in_an_automated_one(
    etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from etl_assets.automation.sensors import AUTOMATION_TAG
    from etl_assets.extract.assets import extract_asset
    from etl_assets.resources import build_resources

    execute(etl_env["ETL_SOURCE_DSN"], "CREATE SCHEMA IF NOT EXISTS app; DROP TABLE IF EXISTS app.things;"
            "CREATE TABLE app.things (id int PRIMARY KEY, what text);"
            "INSERT INTO app.things SELECT g, 'w' || g FROM generate_series(1, 50) g")
    spec = spec_of("tables:\n  - name: app.things\n    extract: full\n    primary_key: [id]\n")
    asset = extract_asset(spec, "test.yaml")
    warehouse = connector(etl_env["ETL_WAREHOUSE_DSN"])
    # `etl-assets run` (a manual run): the step fails at once, with the one line in the summary.
    from etl_assets import runner

    started = time.monotonic()
    with extract_lock(spec.target, warehouse, "holder-run"), dg.DagsterInstance.get() as instance:
        summary = runner.run(defs=dg.Definitions(assets=[asset], resources=build_resources()),
                             instance=instance, out=lambda _line: None)
    assert time.monotonic() - started < 60  # no waiting (the run itself costs a few seconds)
    assert summary.exit_code == 1 and summary.materialized == []
    ((step, message),) = summary.failed_steps
    assert step == "raw/things" and "\n" not in message
    assert re.search(r"raw\.things is being extracted by run holder-r… \(pid \d+ on host .+, since .+ UTC\); "
                     r"retry later\.$", message), message
    assert scalar(etl_env["ETL_WAREHOUSE_DSN"], "SELECT to_regclass('raw.things')") is None

    monkeypatch.setenv("ETL_EXTRACT_LOCK_WAIT", "60")
    locked = threading.Event()

    def hold() -> None:
        with extract_lock(spec.target, warehouse, "holder-run"):
            locked.set()
            time.sleep(4)  # longer than the run needs to reach its lock, even on a loaded machine

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(10)
    result = dg.materialize([asset], resources=build_resources(), tags={AUTOMATION_TAG: "a_sensor"})
    thread.join()
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["lock_wait_seconds"].value >= 1
    assert event.materialization.metadata["rows_read"].value == 50


# --- two processes started together, for each mode -------------------------------------------------------


@pytest.mark.drill
@pytest.mark.parametrize("mode", list(MODES))
def test_two_manual_runs_from_two_processes_one_refused(dbs: dict[str, str], mode: str) -> None:
    target = f"raw.items_{mode}_two"
    spec = spec_of(yaml_of(mode, target))
    first = start(yaml_of(mode, target), dbs, "aaaaaaaa-1111-4000-8000-000000000001", hold=2)
    second = start(yaml_of(mode, target), dbs, "bbbbbbbb-2222-4000-8000-000000000002", hold=2)
    start_together(first, second)
    results = {child.run_id: (child, *child.result()) for child in (first, second)}
    won = [r for r in results.values() if r[1]["ok"]]
    lost = [r for r in results.values() if not r[1]["ok"]]
    assert len(won) == 1 and len(lost) == 1, results
    (winner, report, _), (_, refusal, _) = won[0], lost[0]
    assert refusal["error"] == "ExtractBusy"
    assert re.fullmatch(
        rf"{re.escape(target)} is being extracted by run {winner.run_id[:8]}… \(pid {winner.proc.pid} "
        rf"on host {re.escape(HOST)}, since .+ UTC\); retry later\.", refusal["message"]), refusal["message"]
    assert report["rows_read"] == ROWS and report["inserted"] == ROWS
    assert_equal(dbs, spec)
    assert_lone_run_state(dbs, spec, mode, winner.run_id, passes=1)
    assert holder_rows(dbs, spec) == []


@pytest.mark.drill
@pytest.mark.parametrize("mode", list(MODES))
def test_two_automated_runs_from_two_processes_the_second_waits(dbs: dict[str, str], mode: str) -> None:
    target = f"raw.items_{mode}_queued"
    spec = spec_of(yaml_of(mode, target))
    run_ids = ("cccccccc-3333-4000-8000-000000000003", "dddddddd-4444-4000-8000-000000000004")
    children = [start(yaml_of(mode, target), dbs, run_id, wait=120, hold=2) for run_id in run_ids]
    start_together(*children)
    results = [(child, *child.result()) for child in children]
    assert all(r[1]["ok"] for r in results), results
    (first, one, _), (second, two, log) = sorted(results, key=lambda r: r[1]["lock_acquired_at"])
    # The second started after the first let go (after its last commit), having waited at least the hold.
    assert two["lock_acquired_at"] >= one["lock_released_at"]
    assert two["lock_waited_seconds"] >= 1.5 and one["lock_waited_seconds"] < 1
    assert f"LOG {target} is being extracted by run {first.run_id[:8]}… (pid {first.proc.pid}" in log
    assert one["rows_read"] == ROWS and one["inserted"] == ROWS
    if mode == "incremental":  # the second read the cursor the first committed
        assert two["cursor_before"] == one["cursor_after"] is not None
        assert two["inserted"] == 0 and two["rows_read"] < ROWS
    elif mode == "chunked":  # the first pass was finished, the second made a whole new one
        assert one["resumed_after"] is None and two["resumed_after"] is None
        assert two["rows_read"] == ROWS and two["inserted"] == 0 and two["unchanged"] == ROWS
    else:
        assert two["rows_read"] == ROWS and two["deleted"] == ROWS
    assert_equal(dbs, spec)
    assert_lone_run_state(dbs, spec, mode, second.run_id, passes=2)
    assert holder_rows(dbs, spec) == []


@pytest.mark.drill
def test_a_killed_holder_does_not_block_the_next_run(dbs: dict[str, str]) -> None:
    target = "raw.items_killed"
    spec = spec_of(yaml_of("chunked", target))
    child = start(yaml_of("chunked", target), dbs, "eeeeeeee-5555-4000-8000-000000000005", hold=300)
    start_together(child)
    deadline = time.monotonic() + 60
    with psycopg.connect(dbs["warehouse"], autocommit=True) as conn:
        from etl_assets.migrations import migrated

        migrated(conn)  # etl.extract_runs exists before the child gets there (run alone, this test is first)
        while (holder := holder_of(conn, spec.target, settle=0)) is None or not holder.recorded:
            assert time.monotonic() < deadline, "the child never took the lock"
            time.sleep(0.1)
        assert (holder.run_id, holder.pid, holder.host) == (child.run_id, child.proc.pid, HOST)
    child.proc.kill()
    child.proc.wait(30)
    # Its row is left behind; the next manual run, started at once, goes ahead (at most waiting for the
    # server to notice the closed connection).
    assert holder_rows(dbs, spec) == [(child.run_id, child.proc.pid, HOST)]
    lines: list[str] = []
    report = run_extract(spec, connector(dbs["source"]), connector(dbs["warehouse"]), "next", wait=0,
                         log=lines.append)
    assert report.rows_read == ROWS and report.lock_waited_seconds < 5
    # Either the session was already gone, or the run waited for it knowing its process was dead.
    assert all("whose process is gone" in line for line in lines), lines
    print(f"killed holder: next run waited {report.lock_waited_seconds:.3f} s, {lines}")
    assert_equal(dbs, spec)
    assert_lone_run_state(dbs, spec, "chunked", "next", passes=1)
    assert holder_rows(dbs, spec) == []
