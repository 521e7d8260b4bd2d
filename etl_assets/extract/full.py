"""``extract: full``: the whole table every run, read in one snapshot.

* ``swap`` / ``truncate_insert``: the target equals the source at the snapshot, deletes included.
* ``insert``: snapshot history: each run appends the whole table with the same ``_loaded_at``
  (the source's snapshot time), so ``WHERE _loaded_at = …`` gives the table as it was then.
* ``upsert``: rows are inserted or updated by key; rows deleted at the source stay.
"""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
from psycopg import sql

from etl_assets.migrations import migrated
from etl_assets.pipeline_config import TableSpec

from .common import (
    LOADED_AT,
    Connector,
    ExtractReport,
    load_frames,
    note_schema_changes,
    prepare_target,
    snapshot,
)
from .source import describe, iter_copy_frames, prepare_session, select_list


def extract_full(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                 ) -> ExtractReport:
    """Stream one snapshot of the table into the target (pieces of about 32 MB of CSV each), all in
    one warehouse transaction with the state: memory stays bounded whatever the table size."""
    report = ExtractReport(spec.target, spec.extract, spec.load)
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        prepare_session(src)
        with snapshot(src):
            table = describe(src, spec)
            taken_at = src.execute("SELECT now()::text").fetchone()[0]
            info = prepare_target(wh, spec, table)
            note_schema_changes(report, spec, info)
            query = sql.SQL("SELECT {} FROM {}").format(select_list(table), table.ref.ident)

            def frames() -> Iterator[pl.DataFrame]:
                for frame in iter_copy_frames(src, query, (), table.names):
                    report.rows_read += frame.height
                    if spec.load == "insert":
                        frame = frame.with_columns(pl.lit(taken_at, dtype=pl.String).alias(LOADED_AT))
                    yield frame

            load_frames(wh, spec, frames(), info, report,
                        lambda: ("full", {"snapshot_at": taken_at, "rows": report.rows_read}), run_id)
    return report.finish()
