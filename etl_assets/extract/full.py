"""``extract: full``: the whole table every run, read in one snapshot.

* ``swap`` / ``truncate_insert``: the target equals the source at the snapshot, deletes included.
* ``insert``: snapshot history: each run appends the whole table with the same ``_loaded_at``
  (the source's snapshot time), so ``WHERE _loaded_at = …`` gives the table as it was then.
* ``upsert``: rows are inserted or updated by key; rows deleted at the source stay.

The rows travel through the given transport (:mod:`.transport`: frames, or the COPY stream of
``fast_path``); the snapshot, the transaction and the state are the same for both.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from etl_assets.migrations import migrated
from etl_assets.pipeline_config import TableSpec

from .common import (
    LOADED_AT,
    Connector,
    ExtractReport,
    finish_target,
    load_whole,
    note_schema_changes,
    prepare_target,
    snapshot,
)
from .source import SourceTable, describe, prepare_session, select_list
from .transport import FrameTransport, TransportFactory

KIND = "full"


def snapshot_query(spec: TableSpec, table: SourceTable, taken_at: str
                   ) -> tuple[sql.Composed, list[Any], list[str]]:
    """The whole table, with the snapshot time as ``_loaded_at`` for snapshot history (load: insert);
    returns the query, its parameters and the names of its columns."""
    if spec.load == "insert":
        query = sql.SQL("SELECT {}, %s::timestamptz FROM {}").format(select_list(table), table.ref.ident)
        return query, [taken_at], [*table.names, LOADED_AT]
    return sql.SQL("SELECT {} FROM {}").format(select_list(table), table.ref.ident), [], list(table.names)


def extract_full(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None,
                 transport: TransportFactory = FrameTransport) -> ExtractReport:
    """Stream one snapshot of the table into the target (bounded memory), all in one warehouse
    transaction with the state."""
    report = ExtractReport(spec.target, spec.extract, spec.load, path=transport.path)
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        prepare_session(src)
        with snapshot(src):
            table = describe(src, spec)
            taken_at = src.execute("SELECT now()::text").fetchone()[0]
            info = prepare_target(wh, spec, table)
            note_schema_changes(report, spec, info)
            move = transport(src, wh, spec, table, info)
            query, params, columns = snapshot_query(spec, table, taken_at)
            state = {"snapshot_at": taken_at} if transport.path == "frame" else {
                "snapshot_at": taken_at, "path": transport.path}

            def final_state() -> tuple[str, dict[str, Any]]:
                return KIND, {**state, "rows": report.rows_read}

            load_whole(wh, spec, move, query, params, columns, info, report, final_state, run_id)
        finish_target(wh, report)
    return report.finish()
