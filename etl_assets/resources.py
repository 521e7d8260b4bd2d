"""The shared resources, bound once for every asset: the source and warehouse databases and the
warehouse IO manager. DSNs are read through ``dagster.EnvVar`` so they never appear in run config,
logs or the UI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_assets.db import PostgresResource
from etl_assets.settings import SOURCE_DSN_VAR, WAREHOUSE_DSN_VAR


@dataclass(frozen=True)
class ResourceKeys:
    """The resource keys the extract assets and their checks read their databases from. This
    project binds ``source`` and ``warehouse``; the Component (``etl_assets.components``) binds its
    own, prefixed keys so it never takes over a user project's resources."""

    source: str = "source"
    warehouse: str = "warehouse"


DEFAULT_KEYS = ResourceKeys()


def source_resource() -> PostgresResource:
    return PostgresResource(dsn=dg.EnvVar(SOURCE_DSN_VAR), role="source", env_var=SOURCE_DSN_VAR)


def warehouse_resource() -> PostgresResource:
    return PostgresResource(dsn=dg.EnvVar(WAREHOUSE_DSN_VAR), role="warehouse", env_var=WAREHOUSE_DSN_VAR)


def build_resources() -> dict[str, Any]:
    from etl_assets.io.manager import PostgresIOManager

    warehouse = warehouse_resource()
    return {
        "source": source_resource(),
        "warehouse": warehouse,
        "io_manager": PostgresIOManager(warehouse=warehouse),
    }
