"""The project's Definitions load, bind the shared resources, and every asset is materializable."""

from __future__ import annotations

import dagster as dg

from etl_assets.db import PostgresResource


def test_definitions_load_with_shared_resources(etl_env: dict[str, str]) -> None:
    from etl_assets import domains
    from etl_assets.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw/orders", "raw/customers", "raw/categories"} <= keys
    assert len(keys) > 3  # the domains add cleaned and aggregated tables downstream of the raw copies
    # Something downstream of raw/orders exists: the graph is end to end, not only extracts.
    downstream = dg.AssetSelection.keys("raw/orders").downstream().resolve(graph)
    assert len(downstream) > 1
    assert set(defs.resources) >= {"source", "warehouse", "io_manager"}
    assert isinstance(defs.resources["source"], PostgresResource)
    assert isinstance(defs.resources["warehouse"], PostgresResource)
    assert domains.DOMAIN_MODULES  # every listed domain imports and builds
    for module in domains.modules():
        assert isinstance(module.build_defs(), dg.Definitions)
    # The job that `dagster asset materialize` and the UI use resolves (all resources bound).
    assert defs.resolve_implicit_global_asset_job_def() is not None


def test_dsns_are_env_vars_never_inline(etl_env: dict[str, str]) -> None:
    """Secrets stay out of the Definitions: resources read their DSN through dagster.EnvVar."""
    from etl_assets.resources import build_resources

    for name in ("source", "warehouse"):
        resource = build_resources()[name]
        dsn = resource._get_non_default_public_field_values()["dsn"]
        assert isinstance(dsn, dg.EnvVar), name


# `dagster asset materialize` against the project is exercised in test_embedded.py (with the embedded
# server, as README shows it), so it is not repeated here.
