"""Aggregation (the seed's pattern 4): daily totals per category from the enriched orders.

Daily partitions: each partition reads only its day's rows from the warehouse (a range condition
on ``order_date``) and is written by replacing exactly that day (``partition_expr = order_date``), so
one day can be recomputed alone. The read opens a fresh connection per attempt and is retried on
transient failures (a dropped connection, a deadlock), so a flaky warehouse costs a retry, not a run.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from psycopg import sql

from etl_assets.io.reader import read_table
from etl_assets.io.tables import TableRef
from etl_assets.io.writer import PartitionWindow
from etl_assets.retry import Backoff, with_connection_retry

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl

COLUMNS = ("order_date", "category_id", "category_name", "user_id", "amount", "amount_eur")


def output_schema() -> dict[str, type[pl.DataType]]:
    """The totals' columns and dtypes (a function: polars loads when a frame is built)."""
    import polars as pl

    return {
        "order_date": pl.Date,
        "category_id": pl.Int64,
        "category_name": pl.String,
        "total_amount": pl.Float64,
        "total_amount_eur": pl.Float64,
        "event_count": pl.Int64,
        "unique_users": pl.Int64,
    }


def read_day(
    open_connection: Any, table: TableRef, start: dt.date, end: dt.date, *, backoff: Backoff | None = None,
    sleep: Any = None, logger: Any = None,
) -> pl.DataFrame:
    """The enriched orders with ``start <= order_date < end``, read with retries."""
    window = PartitionWindow("order_date", start=start, end=end)
    options: dict[str, Any] = {"backoff": backoff, "logger": logger}
    if sleep is not None:
        options["sleep"] = sleep

    def work(conn: Any) -> pl.DataFrame:
        return read_table(conn, table, columns=list(COLUMNS), partition=window, kind="polars")

    return with_connection_retry(open_connection, work, what=f"read {table} [{start}, {end})", **options)


def daily_category_totals(orders: pl.DataFrame) -> pl.DataFrame:
    """Total amount, event count and unique users per day and category (unknown categories grouped)."""
    import polars as pl

    schema = output_schema()
    if orders.height == 0:
        return pl.DataFrame(schema=schema)
    return (
        orders.group_by("order_date", "category_id", "category_name")
        .agg(
            pl.col("amount").cast(pl.Float64).sum().round(2).alias("total_amount"),
            pl.col("amount_eur").sum().round(2).alias("total_amount_eur"),
            pl.len().cast(pl.Int64).alias("event_count"),
            pl.col("user_id").n_unique().cast(pl.Int64).alias("unique_users"),
        )
        .select(list(schema))
        .cast(schema)
        .sort("order_date", "category_id", nulls_last=True)
    )


def expected_sql(table: TableRef) -> sql.Composed:
    """The same aggregate in SQL (used by a check and by tests as the independent answer)."""
    return sql.SQL(
        "SELECT order_date, category_id, count(*) AS event_count, count(DISTINCT user_id) AS unique_users, "
        "round(sum(amount)::numeric, 2) AS total_amount FROM {} WHERE order_date >= %s AND order_date < %s "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(table.ident)
