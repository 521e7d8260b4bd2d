"""Pick the read strategy and the transport for a declared table and run it, holding the table's
run lock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
                on_locked: Callable[[], None] | None = None,
                source_cap: tuple[str, int] | None = None) -> ExtractReport:
    """Extract ``spec`` from ``source`` into ``warehouse`` (both: ``connect(autocommit=...)`` callables,
    e.g. ``PostgresResource.connect``), as the only run of this table (etl_assets/extract/runlock.py).

    ``wait``: 0 (manual runs) refuses at once with :class:`~etl_assets.errors.ExtractBusy` when
    another run holds the table; automated runs pass ``lock_wait_seconds()`` and wait for it,
    saying whom for through ``log``. ``on_locked`` runs inside the lock before the extract (the
    asset reads its new-rows marker there, so that it is not taken before another run's rows).

    ``source_cap``: (source name, max_concurrent) of a named source: a slot of it is taken first
    (etl_assets/extract/sourcecap.py), waiting while all are held, and only then the run lock, so
    that a run holding a table never waits for a slot.
    """
    extract = implementation(spec)
    with _slot(spec, warehouse, source_cap, log) as slot, \
            extract_lock(spec.target, warehouse, run_id, wait=wait, log=log) as held:
        if on_locked is not None:
            on_locked()
        report = extract(spec, source, warehouse, run_id)
    report.lock_waited_seconds = held.waited_seconds
    report.lock_acquired_at = held.acquired_at
    report.lock_released_at = held.released_at
    if slot is not None:
        report.source_name = slot.source
        report.source_waited_seconds = slot.waited_seconds
        report.source_acquired_at = slot.acquired_at
        report.source_released_at = slot.released_at
    return report


@contextmanager
def _slot(spec: TableSpec, warehouse: Connector, cap: tuple[str, int] | None,
          log: Callable[[str], None] | None) -> Iterator[object]:
    """A slot of the named source ``cap`` for the body; nothing for the default source."""
    if cap is None:
        yield None
        return
    from .sourcecap import source_slot

    name, slots = cap
    with source_slot(name, slots, warehouse, spec.target, log=log) as held:
        yield held
