"""The shared resources, bound once for every asset: the source and warehouse databases and the
warehouse IO manager, plus one resource per named source of the tables declaration (``sources:``,
key ``source__<name>``). DSNs are read through ``dagster.EnvVar`` so they never appear in run config,
logs or the UI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from etl_assets.db import PostgresResource
from etl_assets.errors import ConfigError
from etl_assets.settings import SOURCE_DSN_VAR, WAREHOUSE_DSN_VAR

if TYPE_CHECKING:
    from etl_assets.pipeline_config import PipelineConfig, SourceSpec, TableSpec


@dataclass(frozen=True)
class ResourceKeys:
    """The resource keys the extract assets and their checks read their databases from. This
    project binds ``source`` and ``warehouse``; the Component (``etl_assets.components``) binds its
    own, prefixed keys so it never takes over a user project's resources."""

    source: str = "source"
    warehouse: str = "warehouse"


DEFAULT_KEYS = ResourceKeys()


def source_key(spec: TableSpec, keys: ResourceKeys = DEFAULT_KEYS) -> str:
    """The resource key ``spec`` reads its source from: ``<source>__<name>`` for a named source,
    else the default source's key."""
    return keys.source if spec.source_name is None else f"{keys.source}__{spec.source_name}"


def named_source_resource(src: SourceSpec) -> PostgresResource:
    """A named source's database. Its variable must be set when the Definitions load (a worker or
    ``dagster dev`` without it stops at once, naming it), not when a step first needs it."""
    if not os.environ.get(src.dsn_env, "").strip():
        where = f"{src.origin}" + (f", line {src.line}" if src.line else "")
        raise ConfigError(
            f"Source {src.name} ({where}) reads its connection string from {src.dsn_env}, which is not "
            f"set; export {src.dsn_env}=postgresql://user:password@host/database in every process that "
            "loads the definitions (dagster dev, etl-assets, workers)."
        )
    return PostgresResource(dsn=dg.EnvVar(src.dsn_env), role=f"{src.name} source", env_var=src.dsn_env)


def named_source_resources(config: PipelineConfig, keys: ResourceKeys = DEFAULT_KEYS
                           ) -> dict[str, PostgresResource]:
    """One resource per declared source that some table reads, under ``<source>__<name>``."""
    used = {spec.source_name for spec in config.tables}
    return {f"{keys.source}__{src.name}": named_source_resource(src)
            for src in config.sources if src.name in used}


def source_resource() -> PostgresResource:
    return PostgresResource(dsn=dg.EnvVar(SOURCE_DSN_VAR), role="source", env_var=SOURCE_DSN_VAR)


def warehouse_resource() -> PostgresResource:
    return PostgresResource(dsn=dg.EnvVar(WAREHOUSE_DSN_VAR), role="warehouse", env_var=WAREHOUSE_DSN_VAR)


def build_resources(config: PipelineConfig | None = None) -> dict[str, Any]:
    from etl_assets.io.manager import PostgresIOManager
    from etl_assets.pipeline_config import load_pipelines

    warehouse = warehouse_resource()
    return {
        "source": source_resource(),
        "warehouse": warehouse,
        "io_manager": PostgresIOManager(warehouse=warehouse),
        **named_source_resources(config or load_pipelines()),
    }
