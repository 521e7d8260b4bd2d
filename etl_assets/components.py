"""The declared tables as a Dagster Component, for an existing Dagster project.

A user with their own Dagster project adds PostgreSQL extracts without adopting this repository's
layout: a ``defs.yaml`` in their defs folder names this component and carries the same table
contract as the tables YAML (``etl_assets/pipelines/demo.yaml``) under ``attributes:``::

    type: etl_assets.components.PostgresTablesComponent
    attributes:
      source_dsn_env: APP_DSN            # default ETL_SOURCE_DSN
      warehouse_dsn_env: WAREHOUSE_DSN   # default ETL_WAREHOUSE_DSN
      tables:
        - name: public.invoices
          extract: incremental
          primary_key: [id]
          cursor: updated_at

It produces the same assets (one per table, written by COPY with its state in the same
transaction), the same asset checks and the same freshness policies as this project does. It binds
its own two resources under prefixed keys (``etl_assets_source``, ``etl_assets_warehouse``; the
prefix is ``resource_key_prefix``), reading the DSNs from the named environment variables through
``dagster.EnvVar``, and never the user's ``io_manager``: extract assets write their tables
themselves. The table contract is validated by the same code as the tables YAML, so a mistake gives
the same one-line message, naming ``defs.yaml`` and the line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from etl_assets.db import PostgresResource
from etl_assets.pipeline_config import PipelineConfig, parse_pipelines
from etl_assets.resources import ResourceKeys


class PostgresTablesComponent(dg.Component, dg.Model, dg.Resolvable):
    """PostgreSQL tables extracted into a PostgreSQL warehouse (full, incremental, chunked, CDC),
    with their data-quality checks and freshness policies. Needs the environment variables named by
    ``source_dsn_env`` and ``warehouse_dsn_env``; binds the resources ``<prefix>_source`` and
    ``<prefix>_warehouse``."""

    tables: list[dict[str, Any]]
    source_dsn_env: str = "ETL_SOURCE_DSN"
    warehouse_dsn_env: str = "ETL_WAREHOUSE_DSN"
    resource_key_prefix: str = "etl_assets"

    @property
    def resource_keys(self) -> ResourceKeys:
        return ResourceKeys(f"{self.resource_key_prefix}_source", f"{self.resource_key_prefix}_warehouse")

    def declaration(self, defs_yaml: Path | None = None) -> PipelineConfig:
        """The validated table contract. Line numbers in messages are those of ``defs_yaml`` when the
        attributes can be found there (the contract is re-parsed from its own text), else of the list."""
        text, origin = yaml.safe_dump({"tables": self.tables}, sort_keys=False), "defs.yaml attributes"
        if defs_yaml is not None and defs_yaml.is_file():
            origin = str(defs_yaml)
            located = _attributes_text(defs_yaml.read_text(encoding="utf-8"))
            if located is not None:
                text = located
        return parse_pipelines(text, origin)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return self.build_defs_for(Path(context.path) / "defs.yaml")

    def build_defs_for(self, defs_yaml: Path | None = None) -> dg.Definitions:
        """The Definitions of the declared tables (also usable without a defs folder)."""
        from etl_assets.extract.assets import build_assets
        from etl_assets.quality.checks import build_asset_checks
        from etl_assets.quality.defs import FRESHNESS, declared_rule_sets, merge_rule_sets

        config = self.declaration(defs_yaml)
        keys = self.resource_keys
        assets = build_assets(config, keys)
        checks = [build_asset_checks(s, keys.warehouse) for s in merge_rule_sets(declared_rule_sets(config))]
        resources = {
            keys.source: PostgresResource(dsn=dg.EnvVar(self.source_dsn_env), role="source",
                                          env_var=self.source_dsn_env),
            keys.warehouse: PostgresResource(dsn=dg.EnvVar(self.warehouse_dsn_env), role="warehouse",
                                             env_var=self.warehouse_dsn_env),
        }
        defs = dg.Definitions(assets=assets, asset_checks=checks, resources=resources)
        with warnings.catch_warnings():  # map_asset_specs is "preview"
            warnings.simplefilter("ignore", category=Warning)
            return defs.map_asset_specs(  # every asset here is an extracted table
                func=lambda spec: dg.apply_freshness_policy(spec, FRESHNESS, overwrite_existing=False)
            )


def _attributes_text(document: str) -> str | None:
    """The ``attributes:`` mapping of a defs.yaml as a document of its own, blank lines in front so
    that its line numbers are the file's (YAML ignores them)."""
    lines = document.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "attributes:"), None)
    if start is None:
        return None
    body: list[str] = []
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith((" ", "\t", "#")):
            break  # the next top-level key
        body.append(line)
    indent = min((len(b) - len(b.lstrip()) for b in body if b.strip() and not b.lstrip().startswith("#")),
                 default=0)
    data = yaml.safe_load("\n".join(b[indent:] for b in body)) or {}
    if not isinstance(data, dict) or "tables" not in data:
        return None
    only_tables = {"tables": data["tables"]}
    # Keep the original text (and so its line numbers) but drop the other attributes' keys.
    kept = [b[indent:] if b.strip() else "" for b in body]
    text = "\n".join(kept)
    if set(data) - {"tables"}:
        text = _drop_other_keys(kept, set(data) - {"tables"})
    if yaml.safe_load(text) != only_tables:
        return None
    return "\n" * (start + 1) + text


def _drop_other_keys(lines: list[str], keys: set[str]) -> str:
    """Blank out the top-level entries named ``keys`` (line by line, so line numbers stay)."""
    out, dropping = [], False
    for line in lines:
        top = line and not line.startswith((" ", "\t", "-", "#"))
        if top:
            dropping = line.split(":", 1)[0].strip() in keys
        out.append("" if dropping else line)
    return "\n".join(out)
