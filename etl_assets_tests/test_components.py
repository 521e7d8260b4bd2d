"""The tables as a Dagster Component: a defs folder with a ``defs.yaml`` of
``etl_assets.components.PostgresTablesComponent`` loads through ``dagster.components`` and
materializes a table, on its own resource keys, next to a user's own ``io_manager``."""

from __future__ import annotations

import textwrap
import warnings

import dagster as dg
import psycopg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from etl_assets.components import PostgresTablesComponent
from etl_assets.errors import ConfigError

DEFS_YAML = textwrap.dedent(
    """\
    type: etl_assets.components.PostgresTablesComponent
    attributes:
      source_dsn_env: COMPONENT_SOURCE_DSN
      warehouse_dsn_env: COMPONENT_WAREHOUSE_DSN
      tables:
        - name: app.invoices
          extract: incremental
          primary_key: [id]
          cursor: updated_at
          target: landing.invoices
          checks:
            - {name: has_amount, kind: not_null, column: amount, severity: error}
    """
)


@pytest.fixture
def app_source(source_conn: psycopg.Connection) -> None:
    source_conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
    source_conn.execute("CREATE SCHEMA app")
    source_conn.execute(
        "CREATE TABLE app.invoices (id int PRIMARY KEY, amount numeric(10,2),"
        " updated_at timestamptz NOT NULL)"
    )
    source_conn.execute("CREATE INDEX ON app.invoices (updated_at)")
    source_conn.execute(
        "INSERT INTO app.invoices SELECT g, g * 1.5, now() - interval '1 hour' FROM generate_series(1, 250) g"
    )


def _load(sandbox, text: str):
    folder = sandbox.defs_folder_path / "invoices"
    folder.mkdir()
    (folder / "defs.yaml").write_text(text)
    return sandbox.load_component_and_build_defs(defs_path=folder)


def test_a_defs_folder_loads_and_materializes_a_table(
    etl_env: dict[str, str], app_source: None, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPONENT_SOURCE_DSN", etl_env["ETL_SOURCE_DSN"])
    monkeypatch.setenv("COMPONENT_WAREHOUSE_DSN", warehouse_dsn)
    with create_defs_folder_sandbox() as sandbox, _load(sandbox, DEFS_YAML) as (component, defs):
        assert isinstance(component, PostgresTablesComponent)
        key = dg.AssetKey(["landing", "invoices"])
        assert {k for k in defs.resolve_asset_graph().get_all_asset_keys()} == {key}
        # its own resource keys: a user's io_manager (or "warehouse") stays theirs
        assert set(defs.resources or {}) == {"etl_assets_source", "etl_assets_warehouse"}
        spec = next(iter(defs.resolve_all_asset_specs()))
        assert spec.freshness_policy is not None
        user_io = dg.Definitions(resources={"io_manager": dg.FilesystemIOManager(), "warehouse": "theirs"})
        merged = dg.Definitions.merge(defs, user_io)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = merged.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=dg.DagsterInstance.ephemeral()
            )
    assert result.success
    checks = result.get_asset_check_evaluations()
    # the declared rule, and the column-schema change check the extract answers in its own step
    assert sorted((c.check_name, c.passed) for c in checks) == [("column_schema_change", True),
                                                                ("has_amount", True)]
    with psycopg.connect(warehouse_dsn) as conn:
        count, total = conn.execute("SELECT count(*), sum(amount) FROM landing.invoices").fetchone()
    assert (count, float(total)) == (250, sum(g * 1.5 for g in range(1, 251)))


def test_a_mistake_in_the_contract_names_defs_yaml_and_the_line() -> None:
    bad = DEFS_YAML.replace("extract: incremental", "extract: sometimes")
    with create_defs_folder_sandbox() as sandbox, pytest.raises(Exception) as info, _load(sandbox, bad):
        pass
    error = info.value
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    assert isinstance(error, ConfigError), info.value
    message = str(error)
    assert "defs.yaml" in message and "line 6" in message and "sometimes" in message
