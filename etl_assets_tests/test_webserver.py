"""`etl-assets dev` (dagster dev: webserver and daemon) on the test databases, driven over GraphQL."""

from __future__ import annotations

import psycopg

from etl_assets_tests.conftest import DevServer

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


def test_ui_lists_the_assets_and_a_launched_run_succeeds(dev_server: DevServer) -> None:
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
    # the server's own warehouse (dev_server runs on fresh databases), not the session's
    with psycopg.connect(dev_server.env["ETL_WAREHOUSE_DSN"]) as conn:
        assert conn.execute("SELECT count(*) FROM raw.categories").fetchone()[0] == 12
