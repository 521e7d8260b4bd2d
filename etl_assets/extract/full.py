"""``extract: full``: the whole table every run, read in one snapshot.

* ``swap`` / ``truncate_insert``: the target equals the source at the snapshot, deletes included.
* ``insert``: snapshot history: each run appends the whole table with the same ``_loaded_at``
  (the source's snapshot time), so ``WHERE _loaded_at = …`` gives the table as it was then.
* ``upsert``: rows are inserted or updated by key; rows deleted at the source stay.
"""

from __future__ import annotations

import polars as pl
from psycopg import sql

from etl_assets.io.writer import write_frame
from etl_assets.pipeline_config import TableSpec

from .common import (
    LOADED_AT,
    Connector,
    ExtractReport,
    migrated,
    note_schema_changes,
    prepare_target,
    snapshot,
    target_key,
)
from .source import copy_query_to_frame, describe, prepare_session, select_list
from .state import saver


def extract_full(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                 ) -> ExtractReport:
    report = ExtractReport(spec.target, spec.extract, spec.load)
    with source(autocommit=True) as src:
        prepare_session(src)
        with snapshot(src):
            table = describe(src, spec)
            taken_at = src.execute("SELECT now()::text").fetchone()[0]
            query = sql.SQL("SELECT {} FROM {}").format(select_list(table), table.ref.ident)
            frame = copy_query_to_frame(src, query, (), table.names)
    report.rows_read = frame.height
    if spec.load == "insert":
        frame = frame.with_columns(pl.lit(taken_at, dtype=pl.String).alias(LOADED_AT))
    state = {"snapshot_at": taken_at, "rows": frame.height}
    with warehouse(autocommit=True) as wh:
        migrated(wh)
        info = prepare_target(wh, spec, table)
        note_schema_changes(report, spec, info)
        result = write_frame(wh, frame, spec.target, spec.load, primary_key=target_key(spec),
                             on_commit=[saver(spec.target, "full", state, run_id)], run_id=run_id)
    report.inserted, report.updated, report.unchanged = result.inserted, result.updated, result.unchanged
    report.deleted, report.table_rows = result.deleted, result.table_rows
    return report.finish()

