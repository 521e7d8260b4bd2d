"""Upsert: staging table, deduplication by key, ``INSERT ... ON CONFLICT DO UPDATE`` with counts.

Why this shape:

* The frame is COPYed into a temporary staging table (``ON COMMIT DROP``; gone on rollback too)
  whose name is unique per run and partition, so concurrent runs never share staging rows.
* ``ON CONFLICT`` cannot touch one row twice in a statement, so the frame is deduplicated by key
  first, in polars (hash-based, no sort of the staging table in PostgreSQL): the last row wins,
  ordered by the asset's ``order_by`` column (NULLs lose) and then by position in the frame.
* Into an empty table the deduplicated rows are COPYed straight in (nothing can conflict).
* ``DO UPDATE ... WHERE (target row) IS DISTINCT FROM (new row)`` leaves unchanged rows untouched
  (no dead tuples, no trigger firing); ``RETURNING (xmax = 0)`` tells inserts from updates on every
  supported PostgreSQL version (``MERGE ... RETURNING`` needs 17).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence

import polars as pl
import psycopg
from psycopg import sql

from etl_assets.errors import SchemaMismatch
from etl_assets.io import catalog
from etl_assets.io.bulk import copy_frame
from etl_assets.io.tables import TableRef
from etl_assets.io.typemap import PgType

ORDINAL = "__etl_ordinal"


def staging_name(target: TableRef, run_id: str | None, partition_label: str | None) -> str:
    """A temporary table name unique per target, run and partition (plus randomness per call)."""
    digest = hashlib.sha1(f"{target}|{run_id}|{partition_label}".encode()).hexdigest()[:12]
    return f"etl_stage_{digest}_{secrets.token_hex(3)}"


def create_staging(
    conn: psycopg.Connection,
    name: str,
    types: Mapping[str, PgType],
    columns: Sequence[str],
    with_ordinal: bool = True,
) -> sql.Identifier:
    parts = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c].sql())) for c in columns]
    if with_ordinal:
        parts.append(sql.SQL("{} bigint GENERATED ALWAYS AS IDENTITY").format(sql.Identifier(ORDINAL)))
    ident = sql.Identifier(name)
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({}) ON COMMIT DROP").format(ident, sql.SQL(", ").join(parts))
    )
    return ident


def deduplicate(frame: pl.DataFrame, keys: Sequence[str], order_by: str | None) -> pl.DataFrame:
    """One row per key: the highest ``order_by`` wins (NULL loses), ties and no ``order_by``: the last.

    Done in polars (hash-based, vectorised) so PostgreSQL gets rows ON CONFLICT can take in one
    statement, without a sort of the staging table.
    """
    if frame.height < 2 or not frame.select(pl.struct(list(keys)).is_duplicated().any()).item():
        return frame
    if order_by is not None:
        frame = frame.sort(order_by, nulls_last=False, maintain_order=True)
    return frame.unique(subset=list(keys), keep="last", maintain_order=True)


def require_unique_index(conn: psycopg.Connection, target: TableRef, keys: Sequence[str]) -> str:
    name = catalog.unique_index_on(conn, target, keys)
    if name is None:
        cols = ", ".join(keys)
        raise SchemaMismatch(
            f"Upsert into {target} needs a unique index on ({cols}), and the table has none: the missing "
            f"index is UNIQUE ({cols}) ON {target}. Create it (CREATE UNIQUE INDEX ... ON {target} ({cols})) "
            "or add a primary key on those columns."
        )
    return name


def upsert_from_staging(
    conn: psycopg.Connection,
    stage: sql.Composable,
    target: TableRef,
    columns: Sequence[str],
    keys: Sequence[str],
) -> tuple[int, int]:
    """Merge the rows of the staging table ``stage`` into ``target``; returns (inserted, updated).

    The one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM`` of the project, for
    every caller that has its rows in a table already (a frame COPYed in by :func:`upsert_frame`, a
    COPY stream of the extract fast path). The staged rows must be unique by ``keys`` (ON CONFLICT
    cannot touch one row twice); staged rows neither inserted nor updated were unchanged.
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    key_cols = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
    non_keys = [c for c in columns if c not in keys]
    if non_keys:
        sets = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in non_keys
        )
        old_row = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in non_keys)
        new_row = sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in non_keys)
        action = sql.SQL("DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})").format(
            sets, old_row, new_row
        )
    else:
        action = sql.SQL("DO NOTHING")
    stmt = sql.SQL(
        """
        WITH ins AS (
            INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {stage}
            ON CONFLICT ({keys}) {action}
            RETURNING (t.xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM ins
        """
    ).format(keys=key_cols, cols=cols, stage=stage, target=target.ident, action=action)
    try:
        inserted, updated = conn.execute(stmt).fetchone()
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        from etl_assets.io.bulk import copy_error

        raise copy_error(exc, target) from exc
    return inserted, updated


def upsert_frame(
    conn: psycopg.Connection,
    frame: pl.DataFrame,
    target: TableRef,
    keys: Sequence[str],
    order_by: str | None,
    types: Mapping[str, PgType],
    *,
    run_id: str | None = None,
    partition: str | None = None,
    empty: bool | None = None,
) -> tuple[int, int, int, int]:
    """Upsert ``frame`` into ``target``; returns (inserted, updated, unchanged, duplicates dropped).

    ``empty``: whether the caller already knows the target is empty (an extract keeps its row count),
    which spares the probe of the table; ``None`` probes it.
    """
    require_unique_index(conn, target, keys)
    columns = list(frame.columns)
    rows_in = frame.height
    frame = deduplicate(frame, keys, order_by)
    if empty is None:
        probe = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target.ident)
        empty = not conn.execute(probe).fetchone()[0]
    if empty:
        # Nothing to conflict with (and our writers are locked out): the deduplicated rows go
        # straight in by COPY, as fast as an insert.
        copy_frame(conn, frame, target, targets=types)
        return frame.height, 0, 0, rows_in - frame.height
    label = partition  # the partition's label: part of the staging table's name
    name = staging_name(target, run_id, label)
    stage = create_staging(conn, name, types, columns, with_ordinal=False)
    # Temporary tables live in the session's own pg_temp schema, which that name addresses.
    copy_frame(conn, frame, TableRef("pg_temp", name), targets=types)
    inserted, updated = upsert_from_staging(conn, stage, target, columns, keys)
    conn.execute(sql.SQL("DROP TABLE {}").format(stage))
    distinct = frame.height
    return inserted, updated, distinct - inserted - updated, rows_in - distinct
