"""The COPY transport (``fast_path: true``, the default): rows never become Python objects.

The source's ``COPY (SELECT …) TO STDOUT`` is streamed block by block into the warehouse's
``COPY … FROM STDIN`` - what ``pg_dump | psql`` does - in BINARY format when every column has a
built-in type identical on both sides (no parsing or printing of values at all), in text format
otherwise (:mod:`etl_assets.io.transfer`). Memory stays at one ~1 MB batch of COPY data whatever the table
size. The read strategies (:mod:`.full`, :mod:`.incremental`, :mod:`.chunked`) are the same as for
frames; only the way their rows travel differs:

* append (insert, truncate_insert, swap): one COPY stream into the table;
* upsert: COPY into a temporary staging table, then one ``INSERT … ON CONFLICT DO UPDATE … WHERE …
  IS DISTINCT FROM`` counting inserted/updated/unchanged;
* a keyset chunk: COPY into a staging table numbered in arrival order (the checkpoint is the last
  key in the SOURCE's order), then upserted or inserted;
* a whole-table rebuild: one COPY stream (a stream needs no chunks to bound memory).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.io.tables import TableRef
from etl_assets.io.transfer import binary_compatible, stream_copy
from etl_assets.io.upsert import upsert_from_staging
from etl_assets.pipeline_config import TableSpec

from .common import ExtractReport, TargetInfo
from .source import SourceTable, select_list

READ_ORDER = sql.Identifier("_etl_read_order")  # a staged row's position in the source's stream


def binary_ok(table: SourceTable, wh: psycopg.Connection, into: TableRef) -> bool:
    """Binary COPY needs identical types on both sides; user-defined types (text in the warehouse,
    streamed in their own binary form by this path's SELECT) and widened columns go as text."""
    return table.all_builtin and binary_compatible(wh, into, {c.name: c.pg_type for c in table.columns})


class CopyTransport:
    """The source's COPY stream piped into the warehouse's COPY (see the module docstring)."""

    path = "copy"

    def __init__(self, src: psycopg.Connection, wh: psycopg.Connection, spec: TableSpec, table: SourceTable,
                 info: TargetInfo) -> None:
        self.src, self.wh, self.spec, self.table, self.info = src, wh, spec, table, info
        self.binary = binary_ok(table, wh, spec.target)

    def _stream(self, query: sql.Composable, params: Sequence[Any], into: sql.Composable,
                columns: Sequence[str]) -> int:
        return stream_copy(self.src, self.wh, query, params, into, columns, self.binary)

    def _stage(self) -> sql.Identifier:
        ident = sql.Identifier(f"etl_fast_{secrets.token_hex(6)}")
        self.wh.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(
            ident, self.spec.target.ident))
        return ident

    def append(self, query: sql.Composable, params: Sequence[Any], into: TableRef, columns: Sequence[str]
               ) -> int:
        return self._stream(query, params, into.ident, columns)

    def upsert(self, query: sql.Composable, params: Sequence[Any], columns: Sequence[str],
               report: ExtractReport, run_id: str | None, before: int, count_nulls: str | None = None
               ) -> None:
        stage = self._stage()
        rows = self._stream(query, params, stage, columns)
        if count_nulls is not None:
            nulls = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
                stage, sql.Identifier(count_nulls))
            report.null_cursor_rows += self.wh.execute(nulls).fetchone()[0]
        inserted, updated = upsert_from_staging(
            self.wh, stage, self.spec.target, columns, self.spec.primary_key,
            refuse_duplicates=not self.table.key_unique, sensitive=self.spec.sensitive)
        report.rows_read += rows
        report.inserted += inserted
        report.updated += updated
        report.unchanged += rows - inserted - updated

    def chunk(self, query: sql.Composable, params: Sequence[Any], columns: Sequence[str],
              report: ExtractReport, run_id: str | None, before: int) -> tuple[int, list[Any] | None]:
        wh, key = self.wh, self.spec.primary_key
        stage = self._stage()
        # The checkpoint is the last key in the SOURCE's order (its collation), i.e. the last row
        # of the stream: COPY numbers the staged rows as they arrive. An ORDER BY here would sort
        # by the warehouse's collation, and a text key's next chunk would start at the wrong key.
        wh.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
            stage, READ_ORDER))
        copied = self._stream(query, params, stage, columns)
        if not copied:
            return 0, None
        # Output names k0, k1, ... so that ORDER BY refers to the typed column, not its text rendering.
        key_text = sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"k{i}"))
            for i, k in enumerate(key))
        last = wh.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} DESC LIMIT 1").format(
            key_text, stage, READ_ORDER)).fetchone()
        if self.spec.load == "upsert":
            # keyset chunks require a unique source key (require_unique_key): nothing to check
            inserted, updated = upsert_from_staging(wh, stage, self.spec.target, columns, key)
            report.inserted += inserted
            report.updated += updated
            report.unchanged += copied - inserted - updated
        else:
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            report.inserted += wh.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                self.spec.target.ident, cols, cols, stage)).rowcount
        return copied, list(last)

    def fill(self, table: SourceTable, into: TableRef) -> tuple[int, int]:
        query = sql.SQL("SELECT {} FROM {}").format(select_list(table), table.ref.ident)
        return self._stream(query, (), into.ident, table.names), 0
