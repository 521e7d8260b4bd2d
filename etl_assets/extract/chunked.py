"""``extract: chunked``: a full pass over the table in primary-key order, one bounded chunk at a time.

Chunks are read with keyset pagination (``WHERE key > last ORDER BY key LIMIT chunk_size``, never
OFFSET), so each chunk costs one index range scan and at most ``chunk_size`` rows are in memory.

* ``upsert`` / ``insert``: every chunk commits in its own transaction together with its checkpoint
  (the last key written) in ``etl.state``. A run that dies resumes after the last committed chunk;
  the pass ends with a state that says so, and the next run starts a new pass from the beginning.
  ``insert`` appends snapshot history: every row of one pass carries the pass's ``_loaded_at``, kept
  across a resume. Rows deleted at the source stay in the target with ``upsert``; chunks read at
  different moments, so a pass is not one point in time.
* ``truncate_insert`` / ``swap``: one snapshot of the source is read chunk by chunk into the target
  (after TRUNCATE) or a new table (then swapped in), in ONE warehouse transaction with the state:
  the result equals the source at that snapshot, deletes included. A crash rolls the whole build
  back, and the next run starts over.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from etl_assets.io.bulk import copy_frame
from etl_assets.io.swap import build_and_swap
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import lock_target
from etl_assets.migrations import migrated
from etl_assets.pipeline_config import TableSpec

from .common import (
    LOADED_AT,
    ROWS_KEY,
    Connector,
    ExtractReport,
    finish_target,
    note_schema_changes,
    prepare_target,
    snapshot,
    target_rows,
    write_piece,
)
from .source import describe, iter_keyset_chunks, key_tuple, prepare_session, require_unique_key
from .state import load_state, save_state

KIND = "chunked"


def extract_chunked(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                    ) -> ExtractReport:
    with source(autocommit=True) as src:
        describe(src, spec)
        require_unique_key(src, spec)
    if spec.load in ("upsert", "insert"):
        return _commit_per_chunk(spec, source, warehouse, run_id)
    return _rebuild(spec, source, warehouse, run_id)


def _commit_per_chunk(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                      ) -> ExtractReport:
    report = ExtractReport(spec.target, spec.extract, spec.load)
    key = spec.primary_key
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        previous = load_state(wh, spec.target, KIND)
        prepare_session(src)
        table = describe(src, spec)
        info = prepare_target(wh, spec, table)
        note_schema_changes(report, spec, info)
        state = pass_state(previous, src, report, run_id)
        finished = False
        for frame in iter_keyset_chunks(src, table, key, spec.chunk_size, state["after"]):
            report.rows_read += frame.height
            report.chunks += 1
            finished = frame.height < spec.chunk_size
            state["chunks"] += 1
            state["rows"] += frame.height
            state["after"] = None if finished else key_tuple(frame, key)
            if finished:
                _mark_finished(state)
            if spec.load == "insert":
                frame = frame.with_columns(pl.lit(state["loaded_at"], dtype=pl.String).alias(LOADED_AT))
            with wh.transaction():
                lock_target(wh, spec.target)
                before = target_rows(wh, spec.target, KIND, created=info.created and report.chunks == 1)
                inserted = report.inserted
                write_piece(wh, spec, frame, info, spec.load, report, run_id, before)
                state[ROWS_KEY] = report.table_rows = before + report.inserted - inserted
                save_state(wh, spec.target, KIND, state, run_id)
            del frame
        if not finished:  # the last chunk was exactly full (or the table is empty): close the pass
            state["after"] = None
            _mark_finished(state)
            with wh.transaction():
                lock_target(wh, spec.target)
                state[ROWS_KEY] = report.table_rows = target_rows(
                    wh, spec.target, KIND, created=info.created and report.chunks == 0)
                save_state(wh, spec.target, KIND, state, run_id)
        finish_target(wh, report)
    return report.finish()


def pass_state(previous: dict[str, Any], src: psycopg.Connection, report: ExtractReport, run_id: str | None
               ) -> dict[str, Any]:
    """The checkpoint to continue from: the unfinished pass of ``previous`` (resumed after its last
    committed key), or a new pass stamped with the source's ``now()`` (its ``_loaded_at``)."""
    after = previous.get("after")
    if after is not None:
        report.resumed_after = after
        return dict(previous)
    loaded_at = src.execute("SELECT now()::text").fetchone()[0]
    return {"after": None, "loaded_at": loaded_at, "chunks": 0, "rows": 0, "pass_run_id": run_id,
            "passes": previous.get("passes", 0)}


def _mark_finished(state: dict[str, Any]) -> None:
    state["passes"] = state.get("passes", 0) + 1
    state["last_pass_rows"] = state["rows"]
    state["last_pass_loaded_at"] = state["loaded_at"]


def _rebuild(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None) -> ExtractReport:
    report = ExtractReport(spec.target, spec.extract, spec.load)
    target = spec.target
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        prepare_session(src)
        table = describe(src, spec)
        info = prepare_target(wh, spec, table)
        note_schema_changes(report, spec, info)
        with snapshot(src), wh.transaction():
            lock_target(wh, target)

            def fill(into: TableRef) -> int:
                for frame in iter_keyset_chunks(src, table, spec.primary_key, spec.chunk_size):
                    copy_frame(wh, frame, into, targets=info.types)
                    report.rows_read += frame.height
                    report.chunks += 1
                    del frame
                return report.rows_read

            if spec.load == "truncate_insert":
                report.deleted = target_rows(wh, target, KIND, created=info.created)
                wh.execute(sql.SQL("TRUNCATE TABLE ONLY {}").format(target.ident))
                fill(target)
            else:
                _, report.deleted = build_and_swap(wh, target, fill, run_id=run_id)
            report.inserted = report.table_rows = report.rows_read
            save_state(wh, target, KIND, {"after": None, "last_pass_rows": report.rows_read,
                                          "chunks": report.chunks, ROWS_KEY: report.table_rows}, run_id)
        finish_target(wh, report)
    return report.finish()
