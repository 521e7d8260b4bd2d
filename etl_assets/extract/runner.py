"""Pick the read strategy and the transport for a declared table and run it, holding the table's
run lock."""

from __future__ import annotations

from collections.abc import Callable

from etl_assets.errors import ConfigError
from etl_assets.pipeline_config import TableSpec

from .chunked import extract_chunked
from .common import Connector, ExtractReport
from .fastpath import CopyTransport
from .full import extract_full
from .incremental import extract_incremental
from .runlock import extract_lock
from .transport import FrameTransport, TransportFactory

STRATEGIES = {"full": extract_full, "incremental": extract_incremental, "chunked": extract_chunked}

Extract = Callable[[TableSpec, Connector, Connector, str | None], ExtractReport]


def implementation(spec: TableSpec) -> Extract:
    """The extract of ``spec``: the read strategy of ``extract`` with the transport of ``fast_path``."""
    strategy = STRATEGIES.get(spec.extract)
    if strategy is None:
        raise ConfigError(
            f"Table {spec.label}: extract {spec.extract!r} has no implementation in this version.")
    transport: TransportFactory = CopyTransport if spec.fast_path else FrameTransport

    def extract(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                ) -> ExtractReport:
        return strategy(spec, source, warehouse, run_id, transport)

    return extract


def run_extract(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None = None, *,
                wait: float = 0.0, log: Callable[[str], None] | None = None,
                on_locked: Callable[[], None] | None = None) -> ExtractReport:
    """Extract ``spec`` from ``source`` into ``warehouse`` (both: ``connect(autocommit=...)`` callables,
    e.g. ``PostgresResource.connect``), as the only run of this table (etl_assets/extract/runlock.py).

    ``wait``: 0 (manual runs) refuses at once with :class:`~etl_assets.errors.ExtractBusy` when
    another run holds the table; automated runs pass ``lock_wait_seconds()`` and wait for it,
    saying whom for through ``log``. ``on_locked`` runs inside the lock before the extract (the
    asset reads its new-rows marker there, so that it is not taken before another run's rows).
    """
    extract = implementation(spec)
    with extract_lock(spec.target, warehouse, run_id, wait=wait, log=log) as held:
        if on_locked is not None:
            on_locked()
        report = extract(spec, source, warehouse, run_id)
    report.lock_waited_seconds = held.waited_seconds
    report.lock_acquired_at = held.acquired_at
    report.lock_released_at = held.released_at
    return report
