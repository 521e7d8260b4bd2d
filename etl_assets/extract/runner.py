"""Pick the implementation for a declared table and run it, holding the table's run lock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from etl_assets.errors import ConfigError
from etl_assets.pipeline_config import TableSpec

from .common import Connector, ExtractReport

Extract = Callable[[TableSpec, Connector, Connector, str | None], ExtractReport]


def implementation(spec: TableSpec) -> Extract:
    """The extract function of ``spec``'s mode (imported on demand: each pulls in its own helpers)."""
    if spec.fast_path:
        from .fastpath import extract_fast

        return extract_fast
    if spec.extract == "full":
        from .full import extract_full

        return extract_full
    if spec.extract == "incremental":
        from .incremental import extract_incremental

        return extract_incremental
    if spec.extract == "chunked":
        from .chunked import extract_chunked

        return extract_chunked
    raise ConfigError(f"Table {spec.label}: extract {spec.extract!r} has no implementation in this version.")


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
    from .runlock import extract_lock

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
