"""Pick the read strategy and the transport for a declared table and run it."""

from __future__ import annotations

from etl_assets.errors import ConfigError
from etl_assets.pipeline_config import TableSpec

from .chunked import extract_chunked
from .common import Connector, ExtractReport
from .fastpath import CopyTransport
from .full import extract_full
from .incremental import extract_incremental
from .transport import FrameTransport, TransportFactory

STRATEGIES = {"full": extract_full, "incremental": extract_incremental, "chunked": extract_chunked}


def run_extract(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None = None
                ) -> ExtractReport:
    """Extract ``spec`` from ``source`` into ``warehouse`` (both: ``connect(autocommit=...)`` callables,
    e.g. ``PostgresResource.connect``): the strategy of ``extract``, the transport of ``fast_path``."""
    strategy = STRATEGIES.get(spec.extract)
    if strategy is None:
        raise ConfigError(
            f"Table {spec.label}: extract {spec.extract!r} has no implementation in this version.")
    transport: TransportFactory = CopyTransport if spec.fast_path else FrameTransport
    return strategy(spec, source, warehouse, run_id, transport)
