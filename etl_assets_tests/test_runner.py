"""Headless runs through the Dagster instance: the demo graph, check severities, selections,
partition plans, and cleanup after a run killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from etl_assets import runner
from etl_assets.demo import seed as demo
from etl_assets.errors import ConfigError
from etl_assets.settings import PROJECT_ROOT


@pytest.fixture
def instance(etl_env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture
def demo_defs(etl_env: dict[str, str], source_dsn: str) -> dg.Definitions:
    demo.seed(source_dsn, rows=2000, seed=1)
    from etl_assets.definitions import build_definitions

    return build_definitions()


def test_run_materializes_the_demo_graph(
    demo_defs: dg.Definitions, instance: dg.DagsterInstance, warehouse_conn: psycopg.Connection,
    forget_state: None,
) -> None:
    """The whole graph (whatever the domains hold) materializes once; rows come from the IO layer.

    The graph's own contents and checks are asserted by the tests of the modules that define them;
    here: every asset materialized, exact raw row counts, the summary mirrors the instance.
    """
    lines: list[str] = []
    summary = runner.run(defs=demo_defs, instance=instance, out=lines.append)
    assert summary.ok and summary.exit_code == 0, runner.format_summary(summary)
    everything = {k.to_user_string() for k in runner.resolve_selection(demo_defs, None)}
    rows = {a.key: a.rows for a in summary.materialized}
    assert set(rows) == everything
    assert {"raw/orders", "raw/customers", "raw/categories"} < everything
    assert (rows["raw/orders"], rows["raw/customers"], rows["raw/categories"]) == (2000, 200, 12)
    for key, count in rows.items():  # every table-backed row count matches the table
        schema, _, name = key.partition("/")
        exists = warehouse_conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{name}"',)).fetchone()[0]
        if exists and count is not None:
            table_rows = warehouse_conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            ).fetchone()[0]
            assert table_rows == count, key
    # The run is recorded in the instance like a UI run, with its materializations and checks.
    statuses = {instance.get_run_by_id(r).status for r in summary.run_ids}
    assert statuses == {dg.DagsterRunStatus.SUCCESS}  # one run per partitioning group
    event = instance.get_latest_materialization_event(dg.AssetKey(["raw", "orders"]))
    assert event.run_id in summary.run_ids
    recorded = sum(
        len(
            instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=1000
            ).records
        )
        for run_id in summary.run_ids
    )
    assert recorded == len(summary.checks)
    text = "\n".join(lines) + runner.format_summary(summary)
    for check in summary.checks:  # each failed check once in the summary, never again as a warning
        if not check.passed:
            assert runner.format_summary(summary).count(f"{check.asset}:{check.name}:") == 1
            assert not any(f"{check.asset}:{check.name}" in w for w in summary.warnings)
    # steps are named by what they do, never by generated op names; counts agree with their nouns
    assert "asset_check_" not in text and "None" not in text
    assert "started    raw/orders" in text
    assert "column_schema_change checks of" in text
    assert " 1 assets" not in text
    assert "stored     raw/orders: 2,000 rows" in text
    # an asset that stores no table says so, in the progress lines and the summary (never "? rows")
    assert "stored     etl/run_metrics_summary: (no table)" in text
    [summary_line] = [ln for ln in runner.format_summary(summary).splitlines()
                      if ln.strip().startswith("etl/run_metrics_summary")]
    assert summary_line.split() == ["etl/run_metrics_summary", "(no", "table)", "-", "-", "-", "-", "-"]
    # what each extract did: counts and where its cursor moved, never a Python None
    [orders_line] = [ln for ln in lines if "stored     raw/orders:" in ln]
    assert orders_line.split(": ", 1)[1].startswith(
        "2,000 rows; read 2,000, inserted 2,000, updated 0, deleted 0, unchanged 0; cursor first run → "
    ), orders_line
    [customers_line] = [ln for ln in lines if "stored     raw/customers:" in ln]  # CDC: a snapshot first
    assert "200 rows; read 200, inserted 200, updated 0, deleted 0; snapshot at change-log position " in (
        customers_line
    ), customers_line
    summary_lines = runner.format_summary(summary).splitlines()
    header = next(ln for ln in summary_lines if ln.strip().startswith("asset "))
    assert header.split() == [
        "asset", "rows", "read", "inserted", "updated", "deleted", "unchanged", "partition"
    ]
    [orders_row] = [ln for ln in summary_lines if ln.strip().startswith("raw/orders ")]
    assert orders_row.split() == ["raw/orders", "2,000", "2,000", "2,000", "0", "0", "0"]
    assert "? rows" not in text and "rows unknown" not in text
    assert "result: OK" in text


def _check_defs(fail_step: bool) -> dg.Definitions:
    """A small graph: an asset with a failing ERROR check and a failing WARN check, and a child."""

    @dg.asset(key=["rt", "parent"])
    def parent() -> dg.MaterializeResult:
        if fail_step:
            raise RuntimeError("source exploded")
        return dg.MaterializeResult(metadata={"dagster/row_count": 3})

    @dg.asset(key=["rt", "child"], deps=[parent])
    def child() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"dagster/row_count": 1})

    @dg.asset_check(asset=parent, blocking=True)
    def parent_must_hold() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR)

    @dg.asset_check(asset=parent)
    def parent_should_hold() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, description="meh")

    return dg.Definitions(assets=[parent, child], asset_checks=[parent_must_hold, parent_should_hold])


def test_error_check_failure_fails_the_run_and_blocks_downstream(instance: dg.DagsterInstance) -> None:
    summary = runner.run(defs=_check_defs(fail_step=False), instance=instance, out=lambda s: None)
    assert summary.exit_code == 1
    assert [a.key for a in summary.materialized] == ["rt/parent"]
    assert [(c.name, c.severity) for c in summary.failed_error_checks] == [("parent_must_hold", "ERROR")]
    assert summary.not_materialized == ["rt/child"]
    assert not summary.warnings  # the failed WARN check is in the checks list, not repeated
    assert "rt/parent:parent_should_hold: FAILED WARN (meh)" in runner.format_summary(summary)
    assert "result: FAILED" in runner.format_summary(summary)


def test_failed_step_fails_the_run(instance: dg.DagsterInstance) -> None:
    summary = runner.run(defs=_check_defs(fail_step=True), instance=instance, out=lambda s: None)
    assert summary.exit_code == 1
    assert summary.materialized == []
    assert [step for step, _ in summary.failed_steps] == ["rt/parent"]
    assert "source exploded" in summary.failed_steps[0][1]
    # one line on the console, the traceback in a log file named in the summary
    text = runner.format_summary(summary)
    assert f"tracebacks: {summary.log_file}" in text and "Traceback" not in text
    logged = Path(summary.log_file).read_text(encoding="utf-8")
    assert "RuntimeError: source exploded" in logged and 'File "' in logged


def test_warn_only_failures_keep_exit_zero(instance: dg.DagsterInstance) -> None:
    @dg.asset(key=["rt", "only"])
    def only() -> None:
        return None

    @dg.asset_check(asset=only)
    def only_warns() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)

    summary = runner.run(
        defs=dg.Definitions(assets=[only], asset_checks=[only_warns]), instance=instance, out=lambda s: None
    )
    assert summary.exit_code == 0
    assert [c.passed for c in summary.checks] == [False]
    assert summary.warnings == []
    assert "rt/only:only_warns: FAILED WARN" in runner.format_summary(summary)


def _partitioned_defs(log: list[str], fail_dim: bool = False) -> dg.Definitions:
    daily = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-01-10")

    @dg.asset(key=["rt", "dim"])
    def dim() -> dg.MaterializeResult:
        log.append("dim")
        if fail_dim:
            raise RuntimeError("dim failed")
        return dg.MaterializeResult()

    @dg.asset(key=["rt", "facts"], deps=[dim], partitions_def=daily)
    def facts(context) -> dg.MaterializeResult:
        log.append(f"facts {context.partition_key}")
        return dg.MaterializeResult()

    @dg.asset(key=["rt", "report"], deps=[facts], partitions_def=daily)
    def report(context) -> dg.MaterializeResult:
        log.append(f"report {context.partition_key}")
        return dg.MaterializeResult()

    return dg.Definitions(assets=[report, facts, dim])


def test_partitioned_assets_run_after_unpartitioned_ones(instance: dg.DagsterInstance) -> None:
    log: list[str] = []
    summary = runner.run(
        defs=_partitioned_defs(log), instance=instance, partition="2025-01-03", out=lambda s: None
    )
    assert summary.ok
    assert log == ["dim", "facts 2025-01-03", "report 2025-01-03"]
    assert len(summary.run_ids) == 2
    assert {(a.key, a.partition) for a in summary.materialized} == {
        ("rt/dim", None),
        ("rt/facts", "2025-01-03"),
        ("rt/report", "2025-01-03"),
    }
    # Default: the latest complete partition of a time partitioning.
    log.clear()
    summary = runner.run(
        defs=_partitioned_defs(log), instance=instance, select=["rt/facts"], out=lambda s: None
    )
    assert log == ["facts 2025-01-09"]
    with pytest.raises(ConfigError, match="not a partition"):
        runner.run(defs=_partitioned_defs(log), instance=instance, partition="1999-01-01", out=lambda s: None)
    with pytest.raises(ConfigError, match="none of the selected assets is partitioned"):
        runner.run(
            defs=_partitioned_defs(log),
            instance=instance,
            select=["rt/dim"],
            partition="2025-01-03",
            out=lambda s: None,
        )


def test_select_resolves_keys_and_selection_syntax() -> None:
    @dg.asset(key=["raw", "orders"], group_name="raw")
    def orders() -> None: ...

    @dg.asset(key=["raw", "categories"], group_name="raw")
    def categories() -> None: ...

    @dg.asset(key=["clean", "orders"], deps=[orders, categories], group_name="clean")
    def clean() -> None: ...

    @dg.asset(key=["mart", "daily"], deps=[clean], group_name="mart")
    def daily() -> None: ...

    defs = dg.Definitions(assets=[orders, categories, clean, daily])

    def names(select: list[str] | None) -> list[str]:
        return [k.to_user_string() for k in runner.resolve_selection(defs, select)]

    assert names(None) == ["clean/orders", "mart/daily", "raw/categories", "raw/orders"]
    assert names(["raw/orders,raw/categories"]) == ["raw/categories", "raw/orders"]
    assert names(["raw/orders", "mart/daily"]) == ["mart/daily", "raw/orders"]
    assert names(["key:raw/orders+"]) == ["clean/orders", "mart/daily", "raw/orders"]
    assert names(["group:clean"]) == ["clean/orders"]
    with pytest.raises(ConfigError, match="no asset has that key"):
        runner.resolve_selection(defs, ["raw/nope"])
    with pytest.raises(ConfigError, match="selects no asset"):
        runner.resolve_selection(defs, ["group:nope"])


def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    """Poll ``predicate`` until true; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def lock_waiters(dsn: str, table: str) -> int:
    """Backends of this database waiting on a lock while reading ``table``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE %s",
            (f"%{table}%",),
        ).fetchone()[0]


@pytest.mark.drill
def test_sigkilled_run_is_marked_failed_and_its_pool_slot_freed(
    demo_defs: dg.Definitions, instance: dg.DagsterInstance, source_dsn: str
) -> None:
    # Hold shop.orders so that the run's raw/orders step blocks inside the step, holding its slot.
    before = instance.event_log_storage.get_concurrency_info("warehouse").active_run_ids
    locker = psycopg.connect(source_dsn)
    locker.execute("LOCK TABLE shop.orders IN ACCESS EXCLUSIVE MODE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "run"],
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: lock_waiters(source_dsn, "shop") > 0, "the run to block on shop.orders", proc)
        slots = instance.event_log_storage.get_concurrency_info("warehouse")
        [run_id] = slots.active_run_ids - before  # the blocked step holds one warehouse slot
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        locker.rollback()
        locker.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # nobody noticed yet

    lines: list[str] = []
    summary = runner.run(defs=demo_defs, instance=instance, select=["raw/categories"], out=lines.append)
    assert run_id in summary.cleaned_runs  # (other tests' killed runs in this session may be there too)
    assert summary.ok
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert run_id not in instance.event_log_storage.get_concurrency_info("warehouse").active_run_ids
    assert any(f"marked run {run_id} failed" in line for line in lines)
    # A second cleanup leaves it alone: the run is no longer in progress.
    assert run_id not in runner.cleanup_dead_runs(instance)


def test_cleanup_leaves_live_and_foreign_runs_alone(instance: dg.DagsterInstance) -> None:
    @dg.asset(key=["rt", "noop"])
    def noop() -> None:
        return None

    job = dg.Definitions(assets=[noop], jobs=[dg.define_asset_job("noop_job")]).resolve_job_def("noop_job")
    here = {runner.PID_TAG: str(os.getppid()), runner.HOST_TAG: socket.gethostname()}
    alive = instance.create_run_for_job(job, tags=here)
    foreign = instance.create_run_for_job(
        job, tags={runner.PID_TAG: "999999999", runner.HOST_TAG: "elsewhere"}
    )
    for run in (alive, foreign):
        instance.report_dagster_event(
            dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name, message="started"),
            run_id=run.run_id,
        )
    # Our parent process, but tagged with another start time: its pid was reused, the run is dead.
    reused = instance.create_run_for_job(job, tags={**here, runner.PID_START_TAG: "12345.00"})
    instance.report_dagster_event(
        dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=reused.job_name, message="started"),
        run_id=reused.run_id,
    )
    cleaned = runner.cleanup_dead_runs(instance, local_instance=True)
    assert alive.run_id not in cleaned and foreign.run_id not in cleaned
    assert reused.run_id in cleaned
    assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(foreign.run_id).status == dg.DagsterRunStatus.STARTED


def test_groups_downstream_of_a_failure_are_skipped(instance: dg.DagsterInstance) -> None:
    log: list[str] = []
    lines: list[str] = []
    summary = runner.run(
        defs=_partitioned_defs(log, fail_dim=True),
        instance=instance,
        partition="2025-01-03",
        out=lines.append,
    )
    assert log == ["dim"]  # the partitioned group never ran on a failed upstream
    assert summary.exit_code == 1
    assert len(summary.run_ids) == 1
    assert summary.not_materialized == ["rt/dim", "rt/facts", "rt/report"]
    assert any(line.startswith("skipped rt/facts, rt/report [2025-01-03]: upstream rt/dim") for line in lines)


def test_cleanup_judges_ui_runs_by_their_worker_pid_on_a_local_instance(instance: dg.DagsterInstance) -> None:
    from dagster._core.events import EngineEventData

    @dg.asset(key=["rt", "ui"])
    def ui() -> None:
        return None

    job = dg.Definitions(assets=[ui], jobs=[dg.define_asset_job("ui_job")]).resolve_job_def("ui_job")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = instance.create_run_for_job(job)  # no pid tags: launched by the webserver or daemon
    instance.report_dagster_event(
        dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name, message="started"),
        run_id=run.run_id,
    )
    instance.report_engine_event(
        f"Started process for run (pid: {gone.pid}).", run, EngineEventData.in_process(gone.pid)
    )
    # An external instance may be shared by other machines: a pid means nothing there.
    assert run.run_id not in runner.cleanup_dead_runs(instance, local_instance=False)
    assert run.run_id in runner.cleanup_dead_runs(instance, local_instance=True)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_daemon_sensor_cleans_up_dead_runs(instance: dg.DagsterInstance) -> None:
    from etl_assets.housekeeping import dead_run_cleanup

    @dg.asset(key=["rt", "sensor_victim"])
    def victim() -> None:
        return None

    job = dg.Definitions(assets=[victim], jobs=[dg.define_asset_job("victim_job")]).resolve_job_def(
        "victim_job"
    )
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = instance.create_run_for_job(
        job, tags={runner.PID_TAG: str(gone.pid), runner.HOST_TAG: socket.gethostname()}
    )
    instance.report_dagster_event(
        dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name, message="started"),
        run_id=run.run_id,
    )
    result = dead_run_cleanup(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "dead run(s) failed" in result.skip_message
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_local_instance_means_a_unix_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETL_EMBEDDED", raising=False)
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://postgres@/dagster?host=/srv/pg&port=5432")
    assert runner.local_instance()
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://dagster:pw@db.example.com:5432/dagster")
    assert not runner.local_instance()
    monkeypatch.setenv("ETL_EMBEDDED", "ETL_SOURCE_DSN,DAGSTER_PG_URL")
    assert runner.local_instance()
