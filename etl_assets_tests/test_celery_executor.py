"""Steps on Celery workers over the real RabbitMQ on 127.0.0.1:5672 (etl_assets.celery_executor).

Without a broker answering there, every test here is skipped with that reason (never passed). Each
test uses its own queue name (ETL_CELERY_QUEUE), so sessions sharing the broker never take each
other's steps, and its own databases. The shared RabbitMQ is never stopped: the outage drill cuts a
loopback proxy the test owns.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from etl_assets import runner
from etl_assets.celery_executor import (
    BROKER_VAR,
    QUEUE_VAR,
    build_executor,
    celery_enabled,
    executor_config,
    project_queues,
)
from etl_assets.demo import seed as demo
from etl_assets.settings import PROJECT_ROOT, dagster_storage_url
from etl_assets_tests.celery_helpers import (
    BROKER_HOST,
    BROKER_PORT,
    BROKER_URL,
    TcpProxy,
    Worker,
    broker_answers,
    dead_letter_digest,
    etl_command,
    table_checksums,
)
from etl_assets_tests.conftest import create_database, drop_database

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def broker() -> str:
    if not broker_answers():
        pytest.skip(
            f"no RabbitMQ answers on {BROKER_HOST}:{BROKER_PORT}: the Celery tests need a broker "
            "(.ci/rabbitmq starts one where it is installed)"
        )
    return BROKER_URL


class Site:
    """A source, a Dagster database and any number of warehouses, plus the environment of a process
    (worker or ``etl-assets run``) pointed at them."""

    def __init__(self, admin_dsn: str, tmp: Path) -> None:
        self.admin_dsn = admin_dsn
        self.tmp = tmp
        self.prefix = f"t{secrets.token_hex(4)}_cel"
        self.names: list[str] = []
        self.source = self.database("source")
        self.dagster = self.database("dagster")
        self.queue = f"etl-test-{secrets.token_hex(4)}"
        home = tmp / "dagster_home"
        home.mkdir()
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
        self.dagster_home = home

    def database(self, role: str) -> str:
        name = f"{self.prefix}_{role}"
        self.names.append(name)
        return create_database(self.admin_dsn, name)

    def env(self, warehouse: str, broker: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("ETL_EMBEDDED", "ETL_PIPELINES", BROKER_VAR, QUEUE_VAR)}
        env.update(
            ETL_SOURCE_DSN=self.source, ETL_WAREHOUSE_DSN=warehouse,
            DAGSTER_PG_URL=dagster_storage_url(self.dagster), DAGSTER_HOME=str(self.dagster_home),
            ETL_HOME=str(self.tmp / "etl_home"), PYTHONUNBUFFERED="1",
        )
        if broker:
            env[BROKER_VAR] = broker
            env[QUEUE_VAR] = self.queue
        return env

    def instance(self, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
        """The Dagster instance the runs and workers share (for reading runs and events)."""
        monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(self.dagster))
        monkeypatch.setenv("DAGSTER_HOME", str(self.dagster_home))
        return dg.DagsterInstance.get()

    def drop(self) -> None:
        for name in self.names:
            drop_database(self.admin_dsn, name)


@pytest.fixture
def site(pg_admin_dsn: str, tmp_path: Path) -> Iterator[Site]:
    s = Site(pg_admin_dsn, tmp_path)
    yield s
    s.drop()


def etl_run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(etl_command("run", *args), env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_ids(output: str) -> list[str]:
    match = re.search(r"^  runs: (.+)$", output, re.M)
    assert match, output
    return [r.strip() for r in match.group(1).split(",")]


def steps_ran_on(output: str) -> dict[str, tuple[int, str]]:
    """The summary's "steps ran on:" section: step -> (pid, worker node) of its last attempt."""
    section = output.split("  steps ran on:\n", 1)[1].split("\n  duration:", 1)[0]
    places: dict[str, tuple[int, str]] = {}
    for line in section.splitlines():
        match = re.match(r"^    (\S+(?: \(run \w+\))?)\s+.*\bpid (\d+) \((\S+)\)$", line)
        assert match, line
        places[match.group(1)] = (int(match.group(2)), match.group(3))
    return places


def test_executor_follows_the_broker_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset: no executor (Dagster's default, one machine). Set: the Celery executor, the broker URL as
    an env reference (never the secret itself in config), late acks and rejection on worker loss."""
    monkeypatch.delenv(BROKER_VAR, raising=False)
    assert not celery_enabled() and build_executor() is None
    monkeypatch.setenv(BROKER_VAR, "pyamqp://guest:secret@127.0.0.1:5672//")
    monkeypatch.setenv(QUEUE_VAR, "q-test")
    config = executor_config()
    assert config["broker"] == {"env": BROKER_VAR} and "secret" not in repr(config)
    assert config["backend"] == "rpc://"
    source = config["config_source"]
    assert source["task_acks_late"] is True and source["task_reject_on_worker_lost"] is True
    assert source["task_default_queue"] == "q-test" and project_queues()[0] == "q-test"
    executor = build_executor()
    assert executor is not None and executor.name == "etl_celery"
    monkeypatch.setenv("ETL_CELERY_BACKEND", "redis://127.0.0.1:6379/0")
    assert executor_config()["backend"] == {"env": "ETL_CELERY_BACKEND"}


def test_definitions_carry_the_celery_executor_only_with_a_broker(
    etl_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs launched from the UI or by automation use the Definitions' executor: Celery when the broker
    is set, Dagster's default otherwise."""
    from etl_assets.definitions import build_definitions

    monkeypatch.delenv(BROKER_VAR, raising=False)
    default_job = build_definitions().resolve_implicit_global_asset_job_def()
    assert default_job.executor_def.name != "etl_celery"
    monkeypatch.setenv(BROKER_VAR, BROKER_URL)
    celery_job = build_definitions().resolve_implicit_global_asset_job_def()
    assert celery_job.executor_def.name == "etl_celery"


def test_worker_without_a_broker_is_one_clear_error(etl_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != BROKER_VAR}
    result = subprocess.run(etl_command("worker"), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "etl-assets: error: ETL_CELERY_BROKER is not set; a worker needs the broker URL the runs use, "
        "e.g. export ETL_CELERY_BROKER=pyamqp://guest:guest@127.0.0.1:5672//"
    ]
    bad = subprocess.run(etl_command("worker", "--concurrency", "0"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--concurrency must be at least 1" in bad.stderr


def test_demo_graph_on_two_workers_equals_a_single_process_run(
    broker: str, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers run the whole demo graph: both take steps, none runs in the run's own process, and
    the warehouse equals the one a single-process run gives (checksums of every table). SIGTERM stops
    each worker cleanly."""
    demo.seed(site.source, rows=3000, seed=7)
    local_wh, celery_wh = site.database("wh_local"), site.database("wh_celery")

    local = etl_run(site.env(local_wh, broker=None))
    assert local.returncode == 0, local.stdout[-4000:] + local.stderr[-4000:]
    assert "steps ran on:" not in local.stdout  # no broker: one process, nothing changes
    # A 14-day backfill of the daily aggregate (one run over the range: BackfillPolicy.single_run).
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    backfill = ["--select", "mart/daily_category_totals",
                "--partition-range", f"{yesterday - dt.timedelta(days=13)}..{yesterday}"]
    local_backfill = etl_run(site.env(local_wh, broker=None), *backfill)
    assert local_backfill.returncode == 0, local_backfill.stdout[-4000:] + local_backfill.stderr[-4000:]

    env = site.env(celery_wh, broker)
    workers = [Worker(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
    try:
        nodes = {w.wait_ready(): w for w in workers}
        result = etl_run(env)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
        on_workers = etl_run(env, *backfill)
        assert on_workers.returncode == 0, on_workers.stdout[-6000:] + on_workers.stderr[-4000:]
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    assert all("stopped" in w.output() for w in workers)

    places = steps_ran_on(result.stdout)
    assert any(step.startswith("extract__raw__orders") for step in places)
    used_nodes = {node for _pid, node in places.values()}
    assert used_nodes == set(nodes), (used_nodes, set(nodes))  # both workers ran steps
    with site.instance(monkeypatch) as inst:
        for run_id in run_ids(result.stdout):
            run = inst.get_run_by_id(run_id)
            assert run.status == dg.DagsterRunStatus.SUCCESS
            run_pid = int(run.tags[runner.PID_TAG])
            assert all(pid != run_pid for pid, _node in places.values())

    (backfill_run,) = run_ids(on_workers.stdout)
    backfill_places = steps_ran_on(on_workers.stdout)
    assert backfill_places and {node for _pid, node in backfill_places.values()} <= set(nodes)
    with site.instance(monkeypatch) as inst:
        run = inst.get_run_by_id(backfill_run)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/asset_partition_range_end"] == str(yesterday)
        assert all(pid != int(run.tags[runner.PID_TAG]) for pid, _node in backfill_places.values())
        days = inst.get_materialized_partitions(dg.AssetKey(["mart", "daily_category_totals"]))
        assert {str(yesterday - dt.timedelta(days=i)) for i in range(14)} <= days

    expected, actual = table_checksums(local_wh), table_checksums(celery_wh)
    assert "mart.daily_category_totals" in expected
    assert set(expected) >= {"raw.orders", "raw.customers", "clean.orders", "mart.orders_enriched"}
    assert actual == expected
    assert expected["raw.orders"][0] == 3000
    assert dead_letter_digest(celery_wh) == dead_letter_digest(local_wh)


def source_equals_target(source_dsn: str, warehouse_dsn: str, table: str = "orders") -> None:
    """Every source row is in raw.<table>, once and identical; rows the target holds beyond them are
    rows deleted at the source (incremental and full extracts of the demo do not carry deletes)."""
    query = "SELECT id, t::text FROM {}." + table + " AS t"
    with psycopg.connect(source_dsn) as src, psycopg.connect(warehouse_dsn) as wh:
        source = dict(src.execute(query.format("shop")).fetchall())
        target_rows = wh.execute(query.format("raw")).fetchall()
    target = dict(target_rows)
    assert len(target) == len(target_rows)  # no duplicated id
    assert source, table
    assert {k: target.get(k) for k in source} == source
    deleted = set(target) - set(source)
    assert len(deleted) < len(source) // 10, len(deleted)


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _celery_node_of(inst: dg.DagsterInstance, step_key: str) -> tuple[str, str] | None:
    """(run id, worker node) of the newest run's Celery engine event for ``step_key``, if any."""
    runs = inst.get_runs(limit=1)
    if not runs:
        return None
    records = inst.get_records_for_run(
        runs[0].run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=1000
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        node = (event.event_specific_data.metadata or {}).get("Celery worker")
        if node is not None and event.step_key == step_key:
            return runs[0].run_id, str(node.value)
    return None


def _blocked_backends(dsn: str) -> list[str]:
    """The statements of this database's sessions waiting for a lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [q for (q,) in conn.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchall()]


@pytest.mark.drill
def test_worker_killed_in_the_middle_of_an_extract(
    broker: str, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of the worker running raw/orders while the step is blocked writing: the broker hands the
    step to the other worker (late ack), the run ends within 5 minutes, and a re-run leaves the
    warehouse equal to the source. The killed worker's pool child dies with it (no second copy)."""
    import psutil

    demo.seed(site.source, rows=3000, seed=11)
    wh = site.database("wh")
    env = site.env(wh, broker)
    workers = [Worker(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
    blocker: psycopg.Connection | None = None
    try:
        nodes = {w.wait_ready(): w for w in workers}
        first = etl_run(env, "--select", "raw/orders")
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        demo.simulate(site.source, changes=600, seed=3)

        # Hold the target: the next extract of raw/orders blocks inside its step, on a worker.
        blocker = psycopg.connect(wh)
        blocker.execute("LOCK TABLE raw.orders IN ACCESS EXCLUSIVE MODE")
        log = (tmp_path / "run.log").open("w")
        proc = subprocess.Popen(etl_command("run", "--select", "raw/orders"), env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        with site.instance(monkeypatch) as inst:
            run_id, node = _wait_for(lambda: _celery_node_of(inst, "extract__raw__orders"), 240,
                                     "the extract step on a worker")
            blocked = _wait_for(lambda: _blocked_backends(wh), 120, "the extract blocked on the target")
            print("blocked in the step:", blocked)
            victim = nodes[node]
            children = psutil.Process(victim.pid).children(recursive=True)
            os.kill(victim.pid, 9)  # the worker's main process only: its pool child must follow
            victim.proc.wait(timeout=30)
            _wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                                      for c in children), 30, "the killed worker's pool child to exit")
            blocker.rollback()
            started = time.monotonic()
            code = proc.wait(timeout=300)  # the run ends (failed or retried), never hangs
            assert time.monotonic() - started < 300
            log.close()
            output = (tmp_path / "run.log").read_text()
            run = inst.get_run_by_id(run_id)
            assert run.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE), output
            assert code == (0 if run.status == dg.DagsterRunStatus.SUCCESS else 1), output
            if code == 0:  # retried: the other worker ran the step
                places = steps_ran_on(output)
                assert places["extract__raw__orders"][1] != node, output
        rerun = etl_run(env, "--select", "raw/orders")
        assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-2000:]
        source_equals_target(site.source, wh, "orders")
    finally:
        if blocker is not None:
            blocker.close()
        for w in workers:
            w.kill()


@pytest.mark.drill
def test_broker_unreachable_for_seconds_during_a_run(
    broker: str, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is cut (a loopback proxy the test owns drops every connection and refuses new ones)
    for 6 seconds while the demo graph runs: the run ends within 5 minutes, failed with a message or
    recovered, and a re-run leaves the extracted tables equal to the source."""
    demo.seed(site.source, rows=3000, seed=5)
    wh = site.database("wh")
    proxy = TcpProxy((BROKER_HOST, BROKER_PORT))
    env = site.env(wh, proxy.url)
    workers = [Worker(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
    try:
        for w in workers:
            w.wait_ready()
        log = (tmp_path / "run.log").open("w")
        proc = subprocess.Popen(etl_command("run"), env=env, stdout=log, stderr=subprocess.STDOUT,
                                text=True)
        with site.instance(monkeypatch) as inst:
            _wait_for(lambda: _celery_node_of(inst, "extract__raw__customers")
                      or _celery_node_of(inst, "extract__raw__orders"), 240, "a step on a worker")
        proxy.cut()
        time.sleep(6)
        proxy.restore()
        code = proc.wait(timeout=300)  # never hangs
        log.close()
        output = (tmp_path / "run.log").read_text()
        if code == 0:
            assert "result: OK" in output
        else:  # a clear failure: one line saying the broker was unreachable, no library traceback
            assert "result: FAILED" in output and "Traceback" not in output, output
            assert "Celery broker in ETL_CELERY_BROKER was unreachable" in output, output
        rerun = etl_run(env)
        assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-2000:]
        source_equals_target(site.source, wh, "orders")
        source_equals_target(site.source, wh, "categories")
    finally:
        for w in workers:
            w.kill()
        proxy.close()
