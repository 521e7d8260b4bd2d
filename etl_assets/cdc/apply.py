"""Applying a window of changes to the warehouse: one transaction holding the data and the position.

The window's net effect (one row per touched key, typed, see
:func:`etl_assets.cdc.reader.net_effect_query`) streams from the source's ``COPY … TO STDOUT`` into
a temporary staging table with the target's column types through the warehouse's ``COPY … FROM
STDIN`` (no rows in Python; binary when every column's type matches, as in the snapshot). Then, in
the same transaction: every touched key is deleted from the target (one join on the key columns),
the keys whose final state is a row are inserted (one ``INSERT … SELECT``), and the consumed
position is saved in ``etl.state``. A crash at any point rolls all of it back; the next run reads
the same window again.

Deleting then inserting (rather than ``INSERT … ON CONFLICT``) also moves rows whose key changed:
the old key is deleted, the new one inserted, and it needs no unique index on the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from etl_assets.cdc.reader import Window, net_effect_query, scalar_key_columns
from etl_assets.errors import EtlError
from etl_assets.extract.source import SourceTable
from etl_assets.extract.state import save_state, state_key
from etl_assets.io import target as target_table
from etl_assets.io.tables import TableRef
from etl_assets.io.transfer import binary_compatible, set_text_format, stream_copy
from etl_assets.io.writer import lock_target

KIND = "cdc"


class ConcurrentApply(EtlError):
    """Another run changed the target's CDC state while this one was reading."""


@dataclass
class TargetShape:
    columns: list[str]  # target columns that the source also has (the ones written)
    created: bool
    added: list[str]
    missing_in_source: list[str]


def ensure_target(
    conn: psycopg.Connection, target: TableRef, table: SourceTable, key: Sequence[str]
) -> TargetShape:
    """Create the target with the source's column types and primary key, or add new source columns
    (:func:`etl_assets.io.target.ensure_target`; CDC adds columns but changes no column's type).

    Columns the source dropped stay in the target (NULL for rows written from now on).
    """
    shape = target_table.ensure_target(
        conn, target, {c.name: c.pg_type for c in table.columns}, tuple(key), widen=False
    )
    source_names = set(table.names)
    return TargetShape([c for c in shape.types if c in source_names], shape.created, shape.added, shape.kept)


def lock_state(conn: psycopg.Connection, target: TableRef) -> dict[str, Any] | None:
    """Take the target's write lock and return its CDC state as of now (inside the transaction)."""
    lock_target(conn, target)
    row = conn.execute(
        "SELECT kind, state FROM etl.state WHERE target = %s FOR UPDATE", (state_key(target),)
    ).fetchone()
    if row is None or row[0] != KIND:
        return None
    return dict(row[1])


def check_unchanged(current: dict[str, Any] | None, expected: dict[str, Any], target: TableRef) -> None:
    if (
        current is None
        or current.get("log_id") != expected.get("log_id")
        or current.get("position") != expected.get("position")
    ):
        raise ConcurrentApply(
            f"The CDC state of {target} changed while this run read the source (another run, or "
            "`etl-assets reset`); nothing was written. Run it again."
        )


@dataclass
class ApplyCounts:
    """What applying a window did to the warehouse rows, named as a person would.

    The apply deletes every touched key and inserts the final rows (see the module doc); those
    internal deletes are not reported as deletes: a key that was there and has a final row is
    ``updated``, a key whose final state is gone and that was there is ``deleted``.
    """

    inserted: int = 0  # keys not in the target before, now there
    updated: int = 0  # keys in the target before, rewritten with their final image
    deleted: int = 0  # keys in the target before whose final state is deleted
    truncated: int = 0  # rows removed by a TRUNCATE in the window

    @property
    def written(self) -> int:
        return self.inserted + self.updated

    @property
    def removed(self) -> int:
        """Rows the target lost (for its exact row count): deletes and truncated rows."""
        return self.deleted + self.truncated


def stage_flag(columns: Sequence[str]) -> str:
    """The staging table's delete-flag column: a name none of the target's columns has."""
    flag = "etl_cdc_delete"
    while flag in columns:
        flag += "_"
    return flag


def apply_net_effect(
    src: psycopg.Connection,
    wh: psycopg.Connection,
    target: TableRef,
    table: SourceTable,
    key: Sequence[str],
    columns: Sequence[str],
    window: Window,
    *,
    truncate_first: bool,
) -> ApplyCounts:
    """Inside the caller's transactions: stage the net effect, delete touched keys, insert final rows.

    The stage has the target's own column types (plus the delete flag), so the source streams typed
    values (binary COPY when every column's type is the target's, text otherwise, as the snapshot)
    and the delete and insert are plain joins and copies on typed columns.
    """
    counts = ApplyCounts()
    if truncate_first:
        counts.truncated = wh.execute(sql.SQL("DELETE FROM {}").format(target.ident)).rowcount
    flag = stage_flag(columns)
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    wh.execute("DROP TABLE IF EXISTS pg_temp.etl_cdc_stage")
    wh.execute(
        sql.SQL(
            "CREATE TEMP TABLE etl_cdc_stage ON COMMIT DROP AS "
            "SELECT NULL::boolean AS {flag}, {cols} FROM {target} WITH NO DATA"
        ).format(flag=sql.Identifier(flag), cols=cols, target=target.ident)
    )
    binary = binary_compatible(wh, target, {c: table.column(c).pg_type for c in columns})
    if not binary:  # text must be written and read with the same settings on both sides
        for conn in (src, wh):
            set_text_format(conn, local=True)
    scalar = scalar_key_columns(src, window.capture)
    query, params = net_effect_query(window, table, key, columns, scalar, flag)
    stream_copy(src, wh, query, params, sql.Identifier("etl_cdc_stage"), [flag, *columns], binary)
    match = sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in key)
    deleted, replaced = wh.execute(
        sql.SQL(
            "WITH gone AS (DELETE FROM {target} t USING etl_cdc_stage s WHERE {match} RETURNING s.{flag}) "
            "SELECT count(*) FILTER (WHERE {flag}), count(*) FILTER (WHERE NOT {flag}) FROM gone"
        ).format(target=target.ident, match=match, flag=sql.Identifier(flag))
    ).fetchone()
    written = wh.execute(
        sql.SQL("INSERT INTO {target} ({cols}) SELECT {cols} FROM etl_cdc_stage WHERE NOT {flag}").format(
            target=target.ident, cols=cols, flag=sql.Identifier(flag)
        )
    ).rowcount
    counts.deleted = int(deleted)
    counts.updated = int(replaced)  # rewritten: every non-delete key of the stage is inserted below
    counts.inserted = written - counts.updated
    return counts


def save(conn: psycopg.Connection, target: TableRef, state: dict[str, Any], run_id: str | None) -> None:
    save_state(conn, target, KIND, state, run_id)
