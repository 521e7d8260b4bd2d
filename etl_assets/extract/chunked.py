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

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from etl_assets import console
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
)
from .source import SourceTable, describe, prepare_session, require_unique_key, select_list, typed_key_params
from .state import load_state, save_state
from .transport import FrameTransport, TransportFactory

KIND = "chunked"


def extract_chunked(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None,
                    transport: TransportFactory = FrameTransport) -> ExtractReport:
    with source(autocommit=True) as src:
        describe(src, spec)
        require_unique_key(src, spec)
    if spec.load in ("upsert", "insert"):
        return _commit_per_chunk(spec, source, warehouse, run_id, transport)
    return _rebuild(spec, source, warehouse, run_id, transport)


def chunk_query(spec: TableSpec, table: SourceTable, after: Sequence[Any] | None, loaded_at: str | None
                ) -> tuple[sql.Composed, list[Any], list[str]]:
    """The next keyset chunk: ``WHERE (key) > (after) ORDER BY key LIMIT chunk_size`` (never OFFSET:
    one index range scan per chunk), with the pass's ``_loaded_at`` for snapshot history (insert);
    returns the query, its parameters and the names of its columns."""
    key = spec.primary_key
    order = sql.SQL(", ").join(map(sql.Identifier, key))
    where, params = sql.SQL("TRUE"), []
    if after is not None:
        where = sql.SQL("({}) > ({})").format(order, typed_key_params(table, key, after))
        params = list(after)
    columns, extra = list(table.names), sql.SQL("")
    if loaded_at is not None:
        extra = sql.SQL(", %s::timestamptz")
        params = [loaded_at, *params]
        columns.append(LOADED_AT)
    query = sql.SQL("SELECT {}{} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        select_list(table), extra, table.ref.ident, where, order, sql.Literal(spec.chunk_size))
    return query, params, columns


def _commit_per_chunk(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None,
                      transport: TransportFactory) -> ExtractReport:
    report = ExtractReport(spec.target, spec.extract, spec.load, path=transport.path)
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        previous = load_state(wh, spec.target, KIND)
        prepare_session(src)
        table = describe(src, spec)
        info = prepare_target(wh, spec, table)
        note_schema_changes(report, spec, info)
        move = transport(src, wh, spec, table, info)
        state = pass_state(previous, src, report, run_id)
        with chunk_progress(src, spec, state["chunks"]) as bar:
            first = True
            while True:
                query, params, columns = chunk_query(spec, table, state["after"],
                                                     state["loaded_at"] if spec.load == "insert" else None)
                with wh.transaction():
                    lock_target(wh, spec.target)
                    before = target_rows(wh, spec.target, KIND, created=info.created and first)
                    first = False
                    inserted = report.inserted
                    rows, last = move.chunk(query, params, columns, report, run_id, before)
                    finished = rows < spec.chunk_size
                    if rows:
                        bar.update(1)
                        report.rows_read += rows
                        report.chunks += 1
                        state["chunks"] += 1
                        state["rows"] += rows
                    state["after"] = None if finished else last
                    if finished:
                        _mark_finished(state)
                    state[ROWS_KEY] = report.table_rows = before + report.inserted - inserted
                    save_state(wh, spec.target, KIND, state, run_id)
                if finished:
                    break
        finish_target(wh, report)
    return report.finish()


def chunk_progress(src: psycopg.Connection, spec: TableSpec, done: int = 0) -> console.Progress:
    """A bar of chunks done out of an estimate (the planner's row estimate / chunk size) when
    ``etl-assets run`` runs the extract on a terminal; nothing elsewhere (etl_assets.console)."""
    estimate = src.execute(
        "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", (spec.source.schema, spec.source.name)
    ).fetchone()
    rows = int(estimate[0]) if estimate and estimate[0] is not None and estimate[0] >= 0 else None
    total = max(done + 1, -(-rows // spec.chunk_size)) if rows is not None else None
    return console.command_progress(total, f"{spec.source}", unit="chunks", initial=done)


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


def _rebuild(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None,
             transport: TransportFactory) -> ExtractReport:
    report = ExtractReport(spec.target, spec.extract, spec.load, path=transport.path)
    target = spec.target
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        prepare_session(src)
        table = describe(src, spec)
        info = prepare_target(wh, spec, table)
        note_schema_changes(report, spec, info)
        with snapshot(src), wh.transaction():
            lock_target(wh, target)
            move = transport(src, wh, spec, table, info)

            def fill(into: TableRef) -> int:
                report.rows_read, report.chunks = move.fill(table, into)
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
