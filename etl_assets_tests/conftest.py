"""Shared fixtures: a real PostgreSQL server and per-session databases on it.

By default the tests start (or reuse) an embedded server under ``.etl-test/`` in the repository,
separate from the one ``etl-assets`` uses. With ``ETL_TEST_PG_DSN`` set (a role that may create
databases), they use that server instead. Either way each pytest session (each xdist worker) creates
its own databases with a random prefix and drops them at the end, so concurrent sessions never meet.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg import sql

from etl_assets.settings import PROJECT_ROOT, dagster_storage_url, with_database

TEST_HOME = Path(os.environ.get("ETL_TEST_HOME", PROJECT_ROOT / ".etl-test")).resolve()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    """A DSN of a role allowed to create databases on the server under test."""
    external = os.environ.get("ETL_TEST_PG_DSN")
    if external:
        return external
    from etl_assets import embedded

    server = embedded.ensure_running(TEST_HOME)
    return server.admin_uri


def create_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_databases(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    """Fresh ``source``, ``warehouse`` and ``dagster`` databases for this session: name -> DSN."""
    prefix = f"t{secrets.token_hex(4)}"
    names = {role: f"{prefix}_{role}" for role in ("source", "warehouse", "dagster")}
    dsns = {role: create_database(pg_admin_dsn, name) for role, name in names.items()}
    yield dsns
    for name in names.values():
        drop_database(pg_admin_dsn, name)


@pytest.fixture(scope="session")
def source_dsn(pg_databases: dict[str, str]) -> str:
    return pg_databases["source"]


@pytest.fixture(scope="session")
def warehouse_dsn(pg_databases: dict[str, str]) -> str:
    return pg_databases["warehouse"]


@pytest.fixture(scope="session")
def dagster_url(pg_databases: dict[str, str]) -> str:
    return dagster_storage_url(pg_databases["dagster"])  # postgresql+psycopg2:// (see settings)


@pytest.fixture
def warehouse_conn(warehouse_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the session's warehouse database."""
    with psycopg.connect(warehouse_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def source_conn(source_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the session's source database."""
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def fresh_schema(warehouse_conn: psycopg.Connection) -> Iterator[str]:
    """A new, empty schema in the warehouse, dropped after the test."""
    name = f"s_{secrets.token_hex(4)}"
    warehouse_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    warehouse_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def etl_env(
    pg_databases: dict[str, str], dagster_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment variables pointing the project at the session's databases, with its own DAGSTER_HOME.

    Child processes (``etl-assets`` commands, ``dagster`` commands, run workers) inherit them.
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        "ETL_SOURCE_DSN": pg_databases["source"],
        "ETL_WAREHOUSE_DSN": pg_databases["warehouse"],
        "DAGSTER_PG_URL": dagster_url,
        "DAGSTER_HOME": str(home),
        "ETL_HOME": str(tmp_path / "etl_home"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ETL_EMBEDDED", raising=False)
    monkeypatch.delenv("ETL_PIPELINES", raising=False)
    return env


@pytest.fixture(scope="module")
def module_warehouse(pg_admin_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated warehouse database shared by one test module (one per test would cost a checkpoint
    each), dropped after the module."""
    from etl_assets.migrations import migrate

    suffix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"t{secrets.token_hex(4)}_{suffix}"
    dsn = create_database(pg_admin_dsn, name)
    with psycopg.connect(dsn) as conn:
        migrate(conn)
    yield dsn
    drop_database(pg_admin_dsn, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevServer:
    """`etl-assets dev` started by the ``dev_server`` fixture: its GraphQL endpoint and process."""

    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/graphql"
        self.proc = proc
        self.env: dict[str, str] = dict(os.environ)

    def query(self, text: str, variables: dict | None = None) -> dict:
        response = requests.post(self.url, json={"query": text, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def poll(self, predicate, what: str, timeout: float = 180.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"etl-assets dev exited ({self.proc.returncode}) before {what}")
            try:
                value = predicate()
            except (requests.ConnectionError, requests.Timeout):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.5)


@pytest.fixture
def dev_server(fresh_project: dict[str, str], tmp_path) -> Iterator[DevServer]:
    """`etl-assets dev` on databases of its own (the session's Dagster storage holds other tests'
    runs and assets, which the UI would list too). ``DevServer.env`` is its environment, for the
    commands a test runs beside it."""
    port = _free_port()
    log = open(tmp_path / "dev.log", "w")  # noqa: SIM115 - closed below
    # Automation off: the tests launch their own runs; sensors and schedules would race them.
    env = {**fresh_project, "ETL_AUTOMATION": "off"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "dev", "--port", str(port), "--host", "127.0.0.1"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        server = DevServer(port, proc)
        server.env = env
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # dagster dev stops its webserver, daemon and code servers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


@pytest.fixture
def stream_dbs(pg_admin_dsn: str) -> Iterator[dict[str, str]]:
    """A fresh source (small seeded demo, stream queue installed) and warehouse for one stream test."""
    from etl_assets.demo import seed as demo
    from etl_assets.stream import queue

    prefix = f"s{secrets.token_hex(4)}"
    names = {role: f"{prefix}_{role}" for role in ("source", "warehouse")}
    dsns = {role: create_database(pg_admin_dsn, name) for role, name in names.items()}
    demo.seed(dsns["source"], rows=2000, customers=200, until=demo.today())
    with psycopg.connect(dsns["source"], autocommit=True) as conn:
        queue.install(conn)
    yield dsns
    for name in names.values():
        drop_database(pg_admin_dsn, name)


@pytest.fixture
def fresh_project(pg_admin_dsn: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Fresh source (the seeded demo, 2,000 orders), warehouse and Dagster databases, and the whole
    environment a child process (daemon, run worker) of the project needs to use them."""
    from etl_assets.demo import seed as demo

    prefix = f"a{secrets.token_hex(4)}"
    names = {role: f"{prefix}_{role}" for role in ("source", "warehouse", "dagster")}
    dsns = {role: create_database(pg_admin_dsn, name) for role, name in names.items()}
    demo.seed(dsns["source"], rows=2000, customers=200, until=demo.today())
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ETL_AUTOMATION", "ETL_EMBEDDED", "ETL_PIPELINES")}
    env.update({
        "ETL_SOURCE_DSN": dsns["source"],
        "ETL_WAREHOUSE_DSN": dsns["warehouse"],
        "DAGSTER_PG_URL": dagster_storage_url(dsns["dagster"]),
        "DAGSTER_HOME": str(home),
        "ETL_HOME": str(tmp_path / "etl_home"),
    })
    yield env
    for name in names.values():
        drop_database(pg_admin_dsn, name)


@pytest.fixture
def forget_state(etl_env: dict[str, str], warehouse_dsn: str) -> Iterator[None]:
    """The session's warehouse is shared: extracts run here leave neither cursors nor their tables
    for later tests (a later first run must be a first run), and find none left by earlier ones."""

    def forget() -> None:
        with psycopg.connect(warehouse_dsn) as conn:
            from etl_assets.migrations import migrate

            migrate(conn)
            conn.execute("DELETE FROM etl.state WHERE target = ANY(%s)",
                         (["raw.orders", "raw.customers", "chunky.orders"],))
            conn.execute("DROP TABLE IF EXISTS raw.orders, raw.customers")
            conn.execute("DROP SCHEMA IF EXISTS chunky CASCADE")

    forget()
    yield
    forget()
