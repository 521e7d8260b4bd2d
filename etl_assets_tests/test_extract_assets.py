"""Declared tables as Dagster assets: keys, metadata, validation at load, a user's own file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from etl_assets.errors import ConfigError
from etl_assets.extract.assets import build_defs, prune_undeclared
from etl_assets.resources import build_resources
from etl_assets_tests.extract_helpers import execute, scalar

USER_FILE = """tables:
  - name: app.users
    extract: incremental
    primary_key: [id]
    cursor: changed
  - schema: app
    table: Audit Log
    extract: chunked
    primary_key: [id]
    chunk_size: 3
    target: 'history."audit log"'
"""


def test_user_file_without_demo_tables_builds_and_materializes(
    etl_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute(etl_env["ETL_SOURCE_DSN"],
            'DROP SCHEMA IF EXISTS app CASCADE; CREATE SCHEMA app;'
            'CREATE TABLE app.users (id int PRIMARY KEY, name text, changed timestamptz DEFAULT now());'
            'INSERT INTO app.users (id, name) SELECT g, \'u\' || g FROM generate_series(1, 10) g;'
            'CREATE TABLE app."Audit Log" (id int PRIMARY KEY, what text);'
            'INSERT INTO app."Audit Log" SELECT g, \'w\' || g FROM generate_series(1, 8) g')
    file = tmp_path / "mine.yaml"
    file.write_text(USER_FILE)
    monkeypatch.setenv("ETL_PIPELINES", str(file))
    defs = build_defs()
    assets = list(defs.assets)
    keys = {k for a in assets for k in a.keys}
    assert keys == {dg.AssetKey(["raw", "users"]), dg.AssetKey(["history", "audit log"])}
    users = next(a for a in assets if dg.AssetKey(["raw", "users"]) in a.keys)
    meta = users.specs_by_key[dg.AssetKey(["raw", "users"])].metadata
    assert meta["target"] == "raw.users" and meta["primary_key"] == ["id"] and meta["write_mode"] == "upsert"

    result = dg.materialize(assets, resources=build_resources())
    assert result.success
    rows = {e.asset_key.to_user_string(): e.materialization.metadata["rows_read"].value
            for e in result.get_asset_materialization_events()}
    assert rows == {"raw/users": 10, "history/audit log": 8}
    assert scalar(etl_env["ETL_WAREHOUSE_DSN"], 'SELECT count(*) FROM history."audit log"') == 8

    # The project's whole Definitions load with a user's file: assets needing the demo tables are left
    # out. (Plain target names here: the quality module's schema-change checks need Dagster-valid names.)
    file.write_text(USER_FILE.replace("'history.\"audit log\"'", "history.audit_log"))
    from etl_assets.definitions import build_definitions

    all_keys = {k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()}
    assert {"raw/users", "history/audit_log"} <= all_keys
    assert not {"raw/orders", "clean/orders"} & all_keys


def test_a_mistake_in_the_file_stops_definitions_loading(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("tables:\n  - name: app.users\n    extract: sometimes\n")
    monkeypatch.setenv("ETL_PIPELINES", str(file))
    with pytest.raises(ConfigError, match=r"bad\.yaml: table #1 \(app\.users, line 2\): key 'extract'"):
        build_defs()


def test_prune_keeps_complete_graphs_and_drops_orphans() -> None:
    @dg.asset(key=["raw", "a"])
    def a() -> None: ...

    @dg.asset(key=["clean", "b"], deps=[dg.AssetKey(["raw", "a"])])
    def b() -> None: ...

    @dg.asset(key=["clean", "c"], deps=[dg.AssetKey(["raw", "missing"])])
    def c() -> None: ...

    @dg.asset(key=["mart", "d"], deps=[dg.AssetKey(["clean", "c"])])
    def d() -> None: ...

    @dg.asset_check(asset=dg.AssetKey(["clean", "c"]))
    def c_check() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    pruned, dropped = prune_undeclared(dg.Definitions(assets=[a, b, c, d], asset_checks=[c_check]))
    assert {k.to_user_string() for x in pruned.assets for k in x.keys} == {"raw/a", "clean/b"}
    assert list(pruned.asset_checks) == []
    assert "clean/c" in dropped and "mart/d" in dropped
