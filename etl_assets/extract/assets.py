"""One Dagster asset per declared table (``etl_assets/pipelines/*.yaml``, or ``ETL_PIPELINES``).

The asset key is the target (``raw.orders`` -> ``["raw", "orders"]``), so downstream assets depend
on where data lands. Each asset writes its own rows (one transaction per write or per chunk, with
its cursor or checkpoint) and returns a ``MaterializeResult`` carrying the report as metadata; its
definition metadata (``target``, ``primary_key``, ``write_mode``) tells the IO manager where to load
it from for downstream inputs. The declaration is validated here, when the Definitions load.
"""

# No `from __future__ import annotations`: Dagster inspects the annotations at runtime.

import dagster as dg

from etl_assets.asset_names import op_name, safe_name, source_op_tags
from etl_assets.automation.versions import extract_data_version
from etl_assets.cdc.asset import build_cdc_asset
from etl_assets.db import PostgresResource
from etl_assets.extract.common import target_key
from etl_assets.extract.runner import run_extract
from etl_assets.pipeline_config import (
    DEFAULT_MAX_CONCURRENT,
    PipelineConfig,
    SourceSpec,
    TableSpec,
    load_pipelines,
)
from etl_assets.quality.schema_change import SCHEMA_CHANGE_CHECK, schema_change_result, schema_change_spec
from etl_assets.quality.scope import after_extract, before_extract
from etl_assets.resources import DEFAULT_KEYS, ResourceKeys, source_key


def extract_asset(spec: TableSpec, origin: str, keys: ResourceKeys = DEFAULT_KEYS,
                  source: SourceSpec | None = None) -> dg.AssetsDefinition:
    """The asset of one declared table, reading its databases from the resources named by ``keys``
    (a named source's from ``<source>__<name>``, capped at ``source.max_concurrent`` extracts)."""
    if spec.extract == "cdc":
        return build_cdc_asset(spec, origin, keys, source)
    key = dg.AssetKey(spec.asset_key_path)
    description = (
        f"{spec.extract} extract of source table {spec.source} into {spec.target} (load: {spec.load}"
        f"{', COPY to COPY' if spec.fast_path else ', through polars frames'}), declared in {origin}"
        f"{f' line {spec.line}' if spec.line else ''}."
    )
    metadata = {
        "source": str(spec.source),
        "target": str(spec.target),
        "extract": spec.extract,
        "write_mode": spec.load,
        "primary_key": list(target_key(spec)),
    }
    if spec.cursor:
        metadata["cursor"] = spec.cursor
    if spec.source_name is not None:
        metadata["source_name"] = spec.source_name
    source_resource_key = source_key(spec, keys)
    cap = None if spec.source_name is None else (
        spec.source_name, source.max_concurrent if source is not None else DEFAULT_MAX_CONCURRENT)

    @dg.multi_asset(
        # An explicit output name: keys may hold characters (spaces, quotes) Dagster names may not.
        outs={"extracted": dg.AssetOut(key=key, group_name=safe_name(spec.target.schema),
                                       description=description, metadata=metadata,
                                       kinds={"postgres"}, is_required=False)},
        name=op_name(spec),
        # The column-schema change check, answered by this step (etl_assets/quality/schema_change.py).
        check_specs=[c for c in [schema_change_spec(key)] if c is not None],
        can_subset=True,  # the check alone may be run (it then reads the stored materializations)
        pool="warehouse",  # the same concurrency pool as every other warehouse writer
        required_resource_keys={source_resource_key, keys.warehouse},
        op_tags=source_op_tags(spec),
    )
    def _extract(context: dg.AssetExecutionContext):
        # Yielded, not returned: Dagster validates a returned result against every output of the op,
        # and a run that selects the asset without its check (the UI's launchpad) has one unused.
        if key not in context.selected_asset_keys:  # only the schema check was selected
            yield schema_change_result(context.instance, key)
            return
        source: PostgresResource = getattr(context.resources, source_resource_key)
        warehouse: PostgresResource = getattr(context.resources, keys.warehouse)

        from etl_assets.extract.runlock import launched_by_automation, lock_wait_seconds

        # One run per table at a time (etl_assets/extract/runlock.py): a manual run refuses at once
        # when another holds the table; an automated one waits, so its run key is not spent.
        wait = lock_wait_seconds() if launched_by_automation(context.run.tags) else 0.0
        markers: list = []

        def on_locked() -> None:  # inside the lock: where this run's new rows start (checks on them)
            markers.append(before_extract(spec, warehouse))

        report = run_extract(spec, source.connect, warehouse.connect, context.run.run_id, wait=wait,
                             log=context.log.info, on_locked=on_locked, source_cap=cap)
        marker = markers[0]
        for warning in report.warnings:
            context.log.warning(warning)
        context.log.info(
            f"{spec.source} -> {spec.target}: {report.rows_read:,} rows read, {report.inserted:,} inserted, "
            f"{report.updated:,} updated, {report.unchanged:,} unchanged in {report.seconds:.2f} s"
        )
        # Data quality (etl_assets.quality.scope): the column profile on its cadence, the new-rows
        # marker for the checks; the extract's own metadata wins on clashes.
        quality = after_extract(spec, warehouse, marker, context.log, context.run.run_id)
        # A run that changed no row keeps the previous data version, so automation downstream does not
        # rebuild for nothing (etl_assets.automation.versions).
        changed = bool(report.inserted or report.updated or report.deleted)
        version = extract_data_version(context.instance, key, context.run.run_id, changed)
        metadata = {**quality, **report.metadata()}
        checks = [schema_change_result(context.instance, key, metadata.get("dagster/column_schema"))
                  for check in context.selected_asset_check_keys if check.name == SCHEMA_CHANGE_CHECK]
        yield dg.MaterializeResult(asset_key=key, metadata=metadata, data_version=version,
                                   check_results=checks)

    return _extract


def build_assets(config: PipelineConfig, keys: ResourceKeys = DEFAULT_KEYS) -> list[dg.AssetsDefinition]:
    return [extract_asset(spec, spec.origin or config.path, keys, config.source_named(spec.source_name))
            for spec in config.tables]


def declared_keys(config: PipelineConfig | None = None) -> set[dg.AssetKey]:
    """The asset keys the current declaration provides: downstream domains build only the assets
    whose inputs are among them (a user's file need not declare the demo tables)."""
    config = config or load_pipelines()
    return {dg.AssetKey(spec.asset_key_path) for spec in config.tables}


def build_defs() -> dg.Definitions:
    return dg.Definitions(assets=build_assets(load_pipelines()))


def _needs(item: object) -> set[dg.AssetKey]:
    """Asset keys an asset or check needs from elsewhere (its inputs, or the asset it checks)."""
    if isinstance(item, dg.AssetChecksDefinition):
        return {k.asset_key for k in item.check_keys} | set(item.dependency_keys)
    if isinstance(item, dg.AssetsDefinition):
        return set(item.dependency_keys) - set(item.keys)
    return set()


def _provides(item: object) -> set[dg.AssetKey]:
    if isinstance(item, dg.AssetChecksDefinition):
        return set()
    if isinstance(item, dg.AssetsDefinition):
        return set(item.keys)
    key = getattr(item, "key", None)  # AssetSpec, SourceAsset
    return {key} if isinstance(key, dg.AssetKey) else set()


def prune_undeclared(defs: dg.Definitions) -> tuple[dg.Definitions, list[str]]:
    """Drop assets and checks whose inputs no asset provides, transitively.

    A user's declaration need not contain the demo tables: then the demo graph's assets (which read
    ``raw/orders`` ...) have no inputs and are left out, instead of failing the whole Definitions.
    Returns the pruned Definitions and the dropped keys (for a log line).
    """
    assets = list(defs.assets or [])
    checks = list(defs.asset_checks or [])
    dropped: list[str] = []
    while True:
        provided = set().union(*(_provides(a) for a in assets)) if assets else set()
        keep_assets = [a for a in assets if _needs(a) <= provided]
        keep_checks = [c for c in checks if _needs(c) <= provided]
        if len(keep_assets) == len(assets) and len(keep_checks) == len(checks):
            break
        for item in [*assets, *checks]:
            if item not in keep_assets and item not in keep_checks:
                keys = getattr(item, "check_keys", None) or _provides(item)
                dropped.extend(k.to_user_string() for k in keys)
        assets, checks = keep_assets, keep_checks
    if not dropped:
        return defs, []
    pruned = dg.Definitions(
        assets=assets, asset_checks=checks, schedules=defs.schedules, sensors=defs.sensors, jobs=defs.jobs,
        resources=defs.resources, executor=defs.executor, loggers=defs.loggers, metadata=defs.metadata,
    )
    return pruned, sorted(dropped)
