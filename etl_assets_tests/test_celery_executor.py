"""Steps on Celery workers over the real RabbitMQ on 127.0.0.1:5672 (etl_assets.celery_executor).

Without a broker answering there, every test here is skipped with that reason (never passed). Each
test uses its own queue name (ETL_CELERY_QUEUE), so sessions sharing the broker never take each
other's steps, and its own databases. The shared RabbitMQ is never stopped: the outage drill cuts a
loopback proxy the test owns.
"""

from __future__ import annotations

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

    env = site.env(celery_wh, broker)
    workers = [Worker(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
    try:
        nodes = {w.wait_ready(): w for w in workers}
        result = etl_run(env)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
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

    expected, actual = table_checksums(local_wh), table_checksums(celery_wh)
    assert set(expected) >= {"raw.orders", "raw.customers", "clean.orders", "mart.orders_enriched"}
    assert actual == expected
    assert expected["raw.orders"][0] == 3000
    assert dead_letter_digest(celery_wh) == dead_letter_digest(local_wh)


def source_equals_target(source_dsn: str, warehouse_dsn: str, table: str = "orders") -> None:
    with psycopg.connect(source_dsn) as src, psycopg.connect(warehouse_dsn) as wh:
        query = (f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) "
                 f"FROM {{}}.{table} AS t")
        assert wh.execute(query.format("raw")).fetchone() == src.execute(query.format("shop")).fetchone()


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
