"""How a read strategy's rows travel from the source into the warehouse: the transport.

Every read strategy (:mod:`.full`, :mod:`.incremental`, :mod:`.chunked`) decides WHAT is read and
how it commits (snapshot, transactions, checkpoints, state); a transport decides HOW the rows of one
query get into a warehouse table. Two exist:

* :class:`FrameTransport` (``fast_path: false``): ``COPY (query) TO STDOUT`` as CSV into bounded polars
  frames of text, written with the IO layer's bulk pieces (``copy_frame``, ``upsert_frame``);
* :class:`etl_assets.extract.fastpath.CopyTransport` (``fast_path: true``, the default): the source's COPY
  stream piped into the warehouse's ``COPY … FROM STDIN``, rows never becoming Python objects.

A transport is made per run, after the target is prepared, as
``transport(src, wh, spec, table, info)``, and works inside the caller's warehouse transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from psycopg import sql

from etl_assets.io.bulk import copy_frame
from etl_assets.io.tables import TableRef
from etl_assets.io.upsert import upsert_frame
from etl_assets.pipeline_config import TableSpec

from .common import ExtractReport, TargetInfo, target_key
from .source import SourceTable, copy_query_to_frame, iter_copy_frames, iter_keyset_chunks, key_tuple


class Transport(Protocol):
    """What a read strategy asks of a transport (see the module docstring)."""

    path: str  # "frame" or "copy": the report's extract_path

    def append(self, query: sql.Composable, params: Sequence[Any], into: TableRef, columns: Sequence[str]
               ) -> int:
        """Add the rows of ``query`` (named ``columns``) to ``into``; returns how many."""

    def upsert(self, query: sql.Composable, params: Sequence[Any], columns: Sequence[str],
               report: ExtractReport, run_id: str | None, before: int, count_nulls: str | None = None
               ) -> None:
        """Upsert the rows of ``query`` into the target by its key, refusing repeated keys; adds
        rows_read, inserted, updated, unchanged (and ``count_nulls``' NULLs) to ``report``.
        ``before``: the target's row count (0: it may be empty)."""

    def chunk(self, query: sql.Composable, params: Sequence[Any], columns: Sequence[str],
              report: ExtractReport, run_id: str | None, before: int) -> tuple[int, list[Any] | None]:
        """Write one keyset chunk (``query`` ordered by the key) into the target in the declared
        load (upsert or insert), adding inserted/updated/unchanged to ``report``; returns the rows
        read and the chunk's last key as text, in the SOURCE's order (None when no row was read)."""

    def fill(self, table: SourceTable, into: TableRef) -> tuple[int, int]:
        """Copy the whole table (inside the caller's source snapshot) into ``into``; returns (rows,
        chunks read)."""


class TransportFactory(Protocol):
    path: str

    def __call__(self, src: psycopg.Connection, wh: psycopg.Connection, spec: TableSpec, table: SourceTable,
                 info: TargetInfo) -> Transport: ...


class FrameTransport:
    """Rows as bounded polars frames of text (PostgreSQL's own rendering of every value), written
    with the source's column types (``info.types``: a ``varchar(20)`` stays ``varchar(20)``)."""

    path = "frame"

    def __init__(self, src: psycopg.Connection, wh: psycopg.Connection, spec: TableSpec, table: SourceTable,
                 info: TargetInfo) -> None:
        self.src, self.wh, self.spec, self.table, self.info = src, wh, spec, table, info

    def append(self, query: sql.Composable, params: Sequence[Any], into: TableRef, columns: Sequence[str]
               ) -> int:
        rows = 0
        for frame in iter_copy_frames(self.src, query, params, columns):
            rows += copy_frame(self.wh, frame, into, targets=self.info.types)
            del frame
        return rows

    def _upsert_frame(self, frame: Any, report: ExtractReport, run_id: str | None, known: int) -> None:
        # Rows sharing the declared key are refused, as on the COPY path (nothing silently lost).
        inserted, updated, unchanged, _dups = upsert_frame(
            self.wh, frame, self.spec.target, target_key(self.spec), None, self.info.types, run_id=run_id,
            empty=False if known else None,  # a known non-empty target needs no probe
            duplicates="refuse", sensitive=self.spec.sensitive, keys_unique=self.info.key_unique)
        report.inserted += inserted
        report.updated += updated
        report.unchanged += unchanged

    def upsert(self, query: sql.Composable, params: Sequence[Any], columns: Sequence[str],
               report: ExtractReport, run_id: str | None, before: int, count_nulls: str | None = None
               ) -> None:
        for frame in iter_copy_frames(self.src, query, params, columns):
            report.rows_read += frame.height
            if count_nulls is not None:
                report.null_cursor_rows += frame.get_column(count_nulls).null_count()
            self._upsert_frame(frame, report, run_id, before + report.inserted)
            del frame

    def chunk(self, query: sql.Composable, params: Sequence[Any], columns: Sequence[str],
              report: ExtractReport, run_id: str | None, before: int) -> tuple[int, list[Any] | None]:
        frame = copy_query_to_frame(self.src, query, params, columns)
        if frame.height == 0:
            return 0, None
        last = key_tuple(frame, self.spec.primary_key)
        if self.spec.load == "upsert":
            self._upsert_frame(frame, report, run_id, before)
        else:
            report.inserted += copy_frame(self.wh, frame, self.spec.target, targets=self.info.types)
        return frame.height, last

    def fill(self, table: SourceTable, into: TableRef) -> tuple[int, int]:
        """Keyset chunks of ``chunk_size`` rows (bounded memory), each written and dropped."""
        rows = chunks = 0
        for frame in iter_keyset_chunks(self.src, table, self.spec.primary_key, self.spec.chunk_size):
            copy_frame(self.wh, frame, into, targets=self.info.types)
            rows += frame.height
            chunks += 1
            del frame
        return rows, chunks
