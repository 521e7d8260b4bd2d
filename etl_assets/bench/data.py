"""The benchmark's data set, its table shape, and the two checksums that verify every contender.

Every contender sees the same rows: :func:`make_frame` derives each row's values from its id and a
*variant* (0 = the original, 1 = every non-key value changed), so any slice of ids is reproducible
without storing anything, and "half new, half changed" is simply ids ``n/2+1 .. 3n/2`` of variant 1.

Two checksums, because contenders produce two kinds of output:

* a table: :func:`table_checksum` casts every column to the reference type (so a contender that
  stored ``amount`` as ``double precision`` or timestamps without a time zone is compared fairly) and
  sums a 64-bit hash of each row's text in PostgreSQL; order-independent and constant-memory;
* a frame or a stream of chunks: :func:`frame_digest` brings each column to a canonical polars type
  (cents as integers, timestamps as UTC microseconds) and sums ``hash_rows`` modulo 2**64.

Both are compared with the same function applied to the reference data, so only equal data passes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from etl_assets.bench.harness import Observed

COLUMNS: tuple[str, ...] = (
    "id",
    "customer_id",
    "amount",
    "score",
    "status",
    "note",
    "is_active",
    "created_at",
    "updated_at",
)
PRIMARY_KEY = ("id",)
_COLUMN_TYPES = {
    "id": "bigint",
    "customer_id": "integer",
    "amount": "numeric(12,2)",
    "score": "double precision",
    "status": "text",
    "note": "text",
    "is_active": "boolean",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}
_STATUSES = ["new", "paid", "shipped", "delivered", "returned"]
_EPOCH_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z


def make_frame(start: int, stop: int, variant: int = 0) -> pl.DataFrame:
    """Rows with ids ``start .. stop-1``; ``variant`` 1 changes every non-key value of every row."""
    ids = np.arange(start, stop, dtype=np.int64)
    v = int(variant)
    frame = pl.DataFrame({"id": ids})
    return frame.with_columns(
        ((pl.col("id") * 7919 + v * 13) % 100_000 + 1).cast(pl.Int32).alias("customer_id"),
        (((pl.col("id") * 104_729 + v * 7) % 10_000_000) / 100).cast(pl.Decimal(12, 2)).alias("amount"),
        (((pl.col("id") * 2_654_435_761) % 1_000_003) / 997.0 + v * 0.5).alias("score"),
        pl.Series("status", _STATUSES).gather((pl.Series(ids) + v) % len(_STATUSES)).alias("status"),
        pl.when(pl.col("id") % 10 == 0)
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.format("note {} v{}", pl.col("id") % 1000, pl.lit(v)))
        .alias("note"),
        ((pl.col("id") + v) % 3 != 0).alias("is_active"),
        (pl.lit(_EPOCH_US) + pl.col("id") * 1_000_000).cast(pl.Datetime("us", "UTC")).alias("created_at"),
        (pl.lit(_EPOCH_US) + pl.col("id") * 1_000_000 + v * 86_400_000_000 + (pl.col("id") % 86_400) * 1000)
        .cast(pl.Datetime("us", "UTC"))
        .alias("updated_at"),
    )


def ddl(table: sql.Composable, *, primary_key: bool = True, unlogged: bool = False) -> sql.Composed:
    """``CREATE TABLE`` of the benchmark shape (the same for every contender)."""
    cols = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_COLUMN_TYPES[c])) for c in COLUMNS]
    if primary_key:
        cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, PRIMARY_KEY))))
    return sql.SQL("CREATE {}TABLE {} ({})").format(
        sql.SQL("UNLOGGED " if unlogged else ""), table, sql.SQL(", ").join(cols)
    )


def recreate_table(conn: psycopg.Connection, table: sql.Composable, *, primary_key: bool = True) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(table))
    conn.execute(ddl(table, primary_key=primary_key))


def copy_frame_csv(
    conn: psycopg.Connection, table: sql.Composable, frame: pl.DataFrame, *, piece_rows: int = 200_000
) -> None:
    """COPY a polars frame into ``table`` as CSV in pieces (the harness's own loader, not a contender)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, frame.columns))
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, cols)
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for offset in range(0, frame.height, piece_rows):
            buf = io.BytesIO()
            frame.slice(offset, piece_rows).write_csv(buf, include_header=False, null_value="")
            copy.write(buf.getvalue())


def _canonical_sql(table: sql.Composable) -> sql.Composed:
    def col(name: str) -> sql.Composable:
        cast = sql.SQL("COALESCE(({}::{})::text, '\\N')").format(
            sql.Identifier(name), sql.SQL(_COLUMN_TYPES[name])
        )
        return cast

    row_text = sql.SQL("concat_ws('|', {})").format(sql.SQL(", ").join(col(c) for c in COLUMNS))
    return sql.SQL(
        "SELECT count(*), COALESCE(sum(hashtextextended({}, 0)::numeric), 0)::text FROM {}"
    ).format(row_text, table)


def table_checksum(conn: psycopg.Connection, table: sql.Composable) -> Observed:
    """Row count and an order-independent checksum over every benchmark column of ``table``.

    Extra columns (dlt's ``_dlt_id``, a load timestamp) are ignored; a missing column is an error.
    """
    with conn.transaction():
        conn.execute("SET LOCAL timezone = 'UTC'")
        conn.execute("SET LOCAL extra_float_digits = 1")
        rows, checksum = conn.execute(_canonical_sql(table)).fetchone()
    return Observed(rows=int(rows), checksum=str(checksum))


def table_checksum_dsn(dsn: str, table: sql.Composable) -> Observed:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return table_checksum(conn, table)


def _canonical_frame(frame: Any) -> pl.DataFrame:
    if not isinstance(frame, pl.DataFrame):
        frame = pl.from_pandas(frame)
    exts = [n for n in COLUMNS if isinstance(frame.schema[n], pl.Extension)]
    if exts:  # ADBC hands PostgreSQL numeric over as an opaque string extension type
        frame = frame.with_columns(frame[n].ext.storage().alias(n) for n in exts)
    exprs = []
    for name in COLUMNS:
        dtype = frame.schema[name]
        c = pl.col(name)
        if name in ("id", "customer_id"):
            expr = c.cast(pl.Int64)
        elif name == "amount":
            if isinstance(dtype, pl.Decimal):
                expr = (c * 100).cast(pl.Int64)
            else:
                expr = (c.cast(pl.Float64) * 100).round(0).cast(pl.Int64)
        elif name == "score":
            expr = c.cast(pl.Float64)
        elif name in ("status", "note"):
            expr = c.cast(pl.String)
        elif name == "is_active":
            expr = c.str.to_lowercase().is_in(["t", "true"]) if dtype == pl.String else c.cast(pl.Boolean)
        else:  # timestamps -> UTC microseconds since the epoch
            if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
                c = c.dt.convert_time_zone("UTC")
            elif dtype == pl.String:
                c = c.str.to_datetime(time_zone="UTC")
            expr = c.dt.epoch("us")
        exprs.append(expr.alias(name))
    return frame.select(exprs)


class Digest:
    """Accumulates :func:`frame_digest` over chunks: order-independent, so chunking does not matter."""

    def __init__(self) -> None:
        self.rows = 0
        self.total = np.uint64(0)

    def add(self, frame: Any) -> None:
        canon = _canonical_frame(frame)
        self.rows += canon.height
        if canon.height:
            hashes = canon.hash_rows(seed=0).to_numpy()
            with np.errstate(over="ignore"):
                self.total = np.uint64(self.total + np.sum(hashes, dtype=np.uint64))

    def observed(self) -> Observed:
        return Observed(rows=self.rows, checksum=f"f{int(self.total):x}")


def frame_digest(frames: Any | Iterable[Any]) -> Observed:
    """Row count and checksum of a frame (pandas or polars) or of an iterable of chunk frames."""
    digest = Digest()
    if isinstance(frames, (pl.DataFrame,)) or hasattr(frames, "columns"):
        digest.add(frames)
    else:
        for chunk in frames:
            digest.add(chunk)
    return digest.observed()
