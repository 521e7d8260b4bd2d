"""Pick the implementation for a declared table and run it."""

from __future__ import annotations

from etl_assets.errors import ConfigError
from etl_assets.pipeline_config import TableSpec

from .common import Connector, ExtractReport


def run_extract(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None = None
                ) -> ExtractReport:
    """Extract ``spec`` from ``source`` into ``warehouse`` (both: ``connect(autocommit=...)`` callables,
    e.g. ``PostgresResource.connect``)."""
    if spec.fast_path:
        from .fastpath import extract_fast

        return extract_fast(spec, source, warehouse, run_id)
    if spec.extract == "full":
        from .full import extract_full

        return extract_full(spec, source, warehouse, run_id)
    if spec.extract == "incremental":
        from .incremental import extract_incremental

        return extract_incremental(spec, source, warehouse, run_id)
    if spec.extract == "chunked":
        from .chunked import extract_chunked

        return extract_chunked(spec, source, warehouse, run_id)
    raise ConfigError(f"Table {spec.label}: extract {spec.extract!r} has no implementation in this version.")
