"""The COPY-to-COPY fast path (``fast_path: true``): rows never become Python objects.

The source's ``COPY (SELECT …) TO STDOUT`` is streamed block by block into the warehouse's
``COPY … FROM STDIN`` - what ``pg_dump | psql`` does - in BINARY format when every column has a
built-in type identical on both sides (no parsing or printing of values at all), in text format
otherwise. Memory stays at one network block whatever the table size. Transactions, state and
metadata are those of the frame path of the same mode:

* full / chunked with ``truncate_insert``: TRUNCATE + one COPY stream, with the state, one transaction;
* full / chunked with ``swap``: a new table filled by one COPY stream, swapped in;
* full with ``insert``: one COPY stream adding ``_loaded_at`` (snapshot history);
* ``upsert`` (full, incremental, chunked): COPY into a temporary staging table, then one
  ``INSERT … ON CONFLICT DO UPDATE … WHERE … IS DISTINCT FROM`` counting inserted/updated/unchanged;
* chunked ``upsert``/``insert``: one COPY per keyset chunk, each committed with its checkpoint.
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.io.swap import build_and_swap
from etl_assets.io.tables import TableRef
from etl_assets.io.transfer import binary_compatible, stream_copy
from etl_assets.io.upsert import upsert_from_staging
from etl_assets.io.writer import lock_target
from etl_assets.migrations import migrated
from etl_assets.pipeline_config import TableSpec

from .common import (
    LOADED_AT,
    ROWS_KEY,
    Connector,
    ExtractReport,
    TargetInfo,
    finish_target,
    note_schema_changes,
    prepare_target,
    snapshot,
    target_rows,
)
from .source import (
    SourceTable,
    describe,
    prepare_session,
    require_unique_key,
    select_list,
    typed_key_params,
)
from .state import load_state, save_state


def binary_ok(table: SourceTable, wh: psycopg.Connection, into: TableRef) -> bool:
    """Binary COPY needs identical types on both sides; user-defined types (text in the warehouse,
    streamed in their own binary form by this path's SELECT) and widened columns go as text."""
    return table.all_builtin and binary_compatible(wh, into, {c.name: c.pg_type for c in table.columns})


def _stage(wh: psycopg.Connection, target: TableRef) -> sql.Identifier:
    name = f"etl_fast_{secrets.token_hex(6)}"
    ident = sql.Identifier(name)
    wh.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(ident, target.ident))
    return ident


def extract_fast(spec: TableSpec, source: Connector, warehouse: Connector, run_id: str | None
                 ) -> ExtractReport:
    report = ExtractReport(spec.target, spec.extract, spec.load, path="copy")
    with warehouse(autocommit=True) as wh, source(autocommit=True) as src:
        migrated(wh)
        prepare_session(src)
        table = describe(src, spec)
        if spec.extract == "incremental":
            from .incremental import check_declaration

            check_declaration(spec, src, table)  # a refused declaration creates no target
        info = prepare_target(wh, spec, table)
        note_schema_changes(report, spec, info)
        binary = binary_ok(table, wh, spec.target)
        if spec.extract == "incremental":
            _incremental(spec, src, wh, table, binary, report, run_id, info)
        elif spec.extract == "chunked" and spec.load in ("upsert", "insert"):
            require_unique_key(src, spec)
            _chunks(spec, src, wh, table, binary, report, run_id, info)
        else:
            _whole(spec, src, wh, table, binary, report, run_id, info)
        finish_target(wh, report)
    return report.finish()


def _whole(spec: TableSpec, src: psycopg.Connection, wh: psycopg.Connection, table: SourceTable, binary: bool,
           report: ExtractReport, run_id: str | None, info: TargetInfo) -> None:
    target = spec.target
    kind = spec.extract
    with snapshot(src), wh.transaction():
        lock_target(wh, target)
        taken_at = src.execute("SELECT now()::text").fetchone()[0]
        columns = list(table.names)
        query = sql.SQL("SELECT {} FROM {}").format(select_list(table), table.ref.ident)
        params: list[Any] = []
        if spec.load == "insert":
            query = sql.SQL("SELECT {}, %s::timestamptz FROM {}").format(select_list(table), table.ref.ident)
            params = [taken_at]
            columns.append(LOADED_AT)
        before = 0 if spec.load == "swap" else target_rows(wh, target, kind, created=info.created)
        if spec.load == "truncate_insert":
            report.deleted = before
            wh.execute(sql.SQL("TRUNCATE TABLE ONLY {}").format(target.ident))
            report.rows_read = stream_copy(src, wh, query, params, target.ident, columns, binary)
        elif spec.load == "insert":
            report.rows_read = stream_copy(src, wh, query, params, target.ident, columns, binary)
        elif spec.load == "swap":
            def fill(into: TableRef) -> int:
                return stream_copy(src, wh, query, params, into.ident, columns, binary)

            report.rows_read, report.deleted = build_and_swap(wh, target, fill, run_id=run_id)
        else:  # upsert
            stage = _stage(wh, target)
            report.rows_read = stream_copy(src, wh, query, params, stage, columns, binary)
            report.inserted, report.updated = upsert_from_staging(
                wh, stage, target, columns, spec.primary_key, refuse_duplicates=not table.key_unique,
                sensitive=spec.sensitive)
            report.unchanged = report.rows_read - report.inserted - report.updated
        if spec.load != "upsert":
            report.inserted = report.rows_read
        # A full refresh holds exactly the rows it loaded; insert/upsert add theirs to the stored count.
        report.table_rows = report.inserted + (0 if spec.load in ("swap", "truncate_insert") else before)
        state = {"snapshot_at": taken_at, "rows": report.rows_read, "path": "copy",
                 ROWS_KEY: report.table_rows}
        save_state(wh, target, kind, state, run_id)


def _incremental(spec: TableSpec, src: psycopg.Connection, wh: psycopg.Connection, table: SourceTable,
                 binary: bool, report: ExtractReport, run_id: str | None, info: TargetInfo) -> None:
    from .incremental import KIND, extract_queries, read_increment

    previous = load_state(wh, spec.target, KIND)
    # The bounds come from the same code as the frame path; the rows are streamed in a new snapshot,
    # bounded by the same upper value, so nothing past it is read.
    read = read_increment(spec, src, previous, report, to_frame=False)
    _, query, params = extract_queries(table, spec, read.lower, read.upper, read.routed)
    with snapshot(src), wh.transaction():
        lock_target(wh, spec.target)
        before = target_rows(wh, spec.target, KIND, created=info.created)
        stage = _stage(wh, spec.target)
        report.rows_read = stream_copy(src, wh, query, params, stage, table.names, binary)
        report.null_cursor_rows = wh.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            stage, sql.Identifier(spec.cursor or ""))).fetchone()[0]
        report.inserted, report.updated = upsert_from_staging(
            wh, stage, spec.target, table.names, spec.primary_key, refuse_duplicates=not table.key_unique,
            sensitive=spec.sensitive)
        report.unchanged = report.rows_read - report.inserted - report.updated
        read.state["rows_read"] = report.rows_read
        read.state[ROWS_KEY] = report.table_rows = before + report.inserted
        save_state(wh, spec.target, KIND, read.state, run_id)


READ_ORDER = sql.Identifier("_etl_read_order")  # a staged row's position in the source's stream


def _chunks(spec: TableSpec, src: psycopg.Connection, wh: psycopg.Connection, table: SourceTable,
            binary: bool, report: ExtractReport, run_id: str | None, info: TargetInfo) -> None:
    from .chunked import KIND, _mark_finished, pass_state

    key = spec.primary_key
    state = pass_state(load_state(wh, spec.target, KIND), src, report, run_id)
    order = sql.SQL(", ").join(map(sql.Identifier, key))
    # Output names k0, k1, ... so that ORDER BY refers to the typed column, not its text rendering.
    key_text = sql.SQL(", ").join(sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"k{i}"))
                                  for i, k in enumerate(key))
    columns = list(table.names)
    extra = sql.SQL("")
    if spec.load == "insert":
        extra = sql.SQL(", %s::timestamptz")
        columns.append(LOADED_AT)
    first = True
    while True:
        where, params = sql.SQL("TRUE"), []
        if state["after"] is not None:
            where = sql.SQL("({}) > ({})").format(order, typed_key_params(table, key, state["after"]))
            params = list(state["after"])
        if spec.load == "insert":
            params = [state["loaded_at"], *params]
        query = sql.SQL("SELECT {}{} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            select_list(table), extra, table.ref.ident, where, order, sql.Literal(spec.chunk_size))
        with wh.transaction():
            lock_target(wh, spec.target)
            before = target_rows(wh, spec.target, KIND, created=info.created and first)
            first = False
            stage = _stage(wh, spec.target)
            # The checkpoint is the last key in the SOURCE's order (its collation), i.e. the last row
            # of the stream: COPY numbers the staged rows as they arrive. An ORDER BY here would sort
            # by the warehouse's collation, and a text key's next chunk would start at the wrong key.
            wh.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
                stage, READ_ORDER))
            copied = stream_copy(src, wh, query, params, stage, columns, binary)
            finished = copied < spec.chunk_size
            if copied:
                last = wh.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} DESC LIMIT 1").format(
                    key_text, stage, READ_ORDER)).fetchone()
                if spec.load == "upsert":
                    # keyset chunks require a unique source key (require_unique_key): nothing to check
                    i, u = upsert_from_staging(wh, stage, spec.target, columns, key)
                    n = copied - i - u
                else:
                    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
                    i, u, n = wh.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                        spec.target.ident, cols, cols, stage)).rowcount, 0, 0
                report.inserted += i
                report.updated += u
                report.unchanged += n
                report.rows_read += copied
                report.chunks += 1
                state["chunks"] += 1
                state["rows"] += copied
                state["after"] = None if finished else list(last)
            else:
                state["after"] = None
            if finished:
                _mark_finished(state)
            state[ROWS_KEY] = report.table_rows = before + (i if copied else 0)
            save_state(wh, spec.target, KIND, state, run_id)
        if finished:
            return
