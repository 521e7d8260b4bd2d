"""The Dagster asset of a table declared with ``extract: cdc``.

It has the same key, op name, group, pool and definition metadata as the other extract assets
(``etl_assets.extract.assets`` dispatches here), so downstream assets load it through the IO manager
like any other raw table. The asset writes the target itself — the applied changes and the consumed
position must commit in one warehouse transaction — and returns a ``MaterializeResult`` with the
run's report.

Capture must be installed on the source table first (``etl-assets cdc install TABLE``, reviewed
with ``--dry-run``). Only the shipped demo declaration installs it automatically on first run (and
takes a new snapshot when ``etl-assets seed`` recreated the demo tables): installing triggers on a
user's production tables is a DBA's decision.
"""

# No `from __future__ import annotations`: Dagster inspects the annotations at runtime.

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from etl_assets.asset_names import op_name, safe_name, source_op_tags
from etl_assets.automation.versions import extract_data_version
from etl_assets.cdc.sync import sync_table
from etl_assets.db import PostgresResource
from etl_assets.pipeline_config import DEFAULT_MAX_CONCURRENT, SHIPPED_DEMO, SourceSpec, TableSpec
from etl_assets.quality.scope import after_extract
from etl_assets.resources import DEFAULT_KEYS, ResourceKeys, source_key


def is_shipped_demo(origin: str) -> bool:
    """Whether the declaration file ``origin`` is the demo declaration shipped with the package."""
    from importlib import resources

    shipped = Path(str(resources.files("etl_assets.pipelines").joinpath(SHIPPED_DEMO)))
    try:
        return Path(origin).resolve() == shipped.resolve()
    except OSError:
        return False


def build_cdc_asset(spec: TableSpec, origin: str, keys: ResourceKeys = DEFAULT_KEYS,
                    source: SourceSpec | None = None) -> dg.AssetsDefinition:
    """The asset applying ``spec.source``'s change log to ``spec.target``; a table of a named source
    reads it through that source's resource, in its queue, within its cap (like the other extracts)."""
    key = dg.AssetKey(spec.asset_key_path)
    auto = is_shipped_demo(origin)
    description = (
        f"Change data capture of source table {spec.source} into {spec.target}: a consistent snapshot "
        f"first, then the change log applied in order (deletes included), declared in {origin}"
        f"{f' line {spec.line}' if spec.line else ''}. "
        + (
            "Capture is installed automatically (shipped demo declaration)."
            if auto
            else f"Needs capture installed on the source: `{install_command(spec)}`."
        )
    )
    source_resource_key = source_key(spec, keys)
    slots = source.max_concurrent if source is not None else DEFAULT_MAX_CONCURRENT
    metadata = {
        "source": str(spec.source),
        "target": str(spec.target),
        "extract": "cdc",
        "write_mode": "upsert",
        "primary_key": list(spec.primary_key),
    }

    @dg.multi_asset(
        outs={
            "extracted": dg.AssetOut(
                key=key,
                group_name=safe_name(spec.target.schema),
                description=description,
                metadata=metadata,
                kinds={"postgres"},
                is_required=True,
            )
        },
        name=op_name(spec),
        pool="warehouse",
        required_resource_keys={source_resource_key, keys.warehouse},
        op_tags=source_op_tags(spec),
    )
    def _cdc(context: dg.AssetExecutionContext):
        source: PostgresResource = getattr(context.resources, source_resource_key)
        warehouse: PostgresResource = getattr(context.resources, keys.warehouse)

        with _slot(spec, slots, warehouse.connect, context.log.info):
            report = sync_table(
                spec, source.connect, warehouse.connect, run_id=context.run.run_id, auto_install=auto
            )
        for note in report.notes:
            context.log.warning(note) if note.startswith("new snapshot") else context.log.info(note)
        if report.held_back_by:
            context.log.warning(
                f"{spec.target}: changes after position {report.position_after} wait for "
                f"{report.held_back_by}; "
                "they are applied by a later run once it ends."
            )
        context.log.info(report.summary())
        # Data quality (etl_assets.quality.scope): the column profile on its cadence; the report's own
        # metadata wins on clashes.
        quality = after_extract(spec, warehouse, None, context.log, context.run.run_id)
        # A run that applied no change keeps the previous data version (etl_assets.automation.versions).
        changed = bool(report.changes) or report.mode == "snapshot"
        version = extract_data_version(context.instance, key, context.run.run_id, changed)
        return dg.MaterializeResult(asset_key=key, metadata={**quality, **report.metadata()},
                                    data_version=version)

    return _cdc


def install_command(spec: TableSpec) -> str:
    """The command installing capture for ``spec`` (naming its source when it has a named one)."""
    flag = f" --source {spec.source_name}" if spec.source_name else ""
    return f"etl-assets cdc install{flag} {spec.source}"


@contextmanager
def _slot(spec: TableSpec, slots: int, warehouse, log) -> Iterator[None]:
    """A slot of the table's named source for the sync (etl_assets/extract/sourcecap.py); none for the
    default source. A missing capture's message names the source to install it in."""
    from etl_assets.cdc.capture import CaptureMissing
    from etl_assets.extract.sourcecap import source_slot

    if spec.source_name is None:
        yield
        return
    try:
        with source_slot(spec.source_name, slots, warehouse, spec.target, log=log):
            yield
    except CaptureMissing as exc:
        flag = f"--source {spec.source_name} "
        text = re.sub(r"`etl-assets cdc (install|uninstall) ", rf"`etl-assets cdc \1 {flag}", str(exc))
        raise CaptureMissing(text) from None

