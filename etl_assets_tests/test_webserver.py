"""`etl-assets dev` (dagster dev: webserver and daemon) on the test databases, driven over GraphQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
import requests

from etl_assets.settings import PROJECT_ROOT

ASSETS_QUERY = "query { assetNodes { assetKey { path } } }"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.proc = proc

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
def dev_server(etl_env: dict[str, str], source_dsn: str, tmp_path) -> Iterator[Server]:
    from etl_assets.demo.seed import seed

    seed(source_dsn, rows=500, seed=2)
    port = _free_port()
    log = open(tmp_path / "dev.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "dev", "--port", str(port), "--host", "127.0.0.1"],
        cwd=PROJECT_ROOT,
        # Automation off: this test launches its own run; sensors and schedules would race it.
        env={**os.environ, "ETL_AUTOMATION": "off"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield Server(port, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # dagster dev stops its webserver, daemon and code servers
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def test_ui_lists_the_assets_and_a_launched_run_succeeds(dev_server: Server, warehouse_dsn: str) -> None:
    def asset_paths() -> list[str] | None:
        nodes = dev_server.query(ASSETS_QUERY)["assetNodes"]
        return sorted("/".join(n["assetKey"]["path"]) for n in nodes) or None

    paths = dev_server.poll(asset_paths, "the code location to load")
    from etl_assets.definitions import build_definitions

    defined = {k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()}
    assert set(paths) == defined  # the UI shows exactly the project's graph
    assert {"raw/orders", "raw/customers", "raw/categories"} < set(paths)

    params = {
        "selector": {
            "repositoryLocationName": "etl_assets",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["raw", "categories"]}],
            "assetCheckSelection": [],
        },
        "runConfigData": {},
    }
    launched = dev_server.query(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def finished() -> str | None:
        status = dev_server.query(RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert dev_server.poll(finished, "the launched run to finish") == "SUCCESS"
    with psycopg.connect(warehouse_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM raw.categories").fetchone()[0] == 12
