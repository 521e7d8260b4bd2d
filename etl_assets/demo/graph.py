"""The first end-to-end graph on the demo: ``raw/*`` -> ``clean/orders`` -> ``mart/daily_orders``.

``clean/orders`` keeps the orders that pass the demo's basic rules (amount in [0, 1,000,000), not
dated in the future, a known category) enriched with the category, and reports how many rows each
rule rejected; ``mart/daily_orders`` aggregates them per day and category. Both are plain polars
functions returning frames that the IO manager writes. The checks query the written tables, so they
verify what readers will see: an ERROR check that fails blocks downstream assets, a WARN check is
reported and the run carries on.

The richer transforms (dead letters, validation rules) live in ``etl_assets/transforms/``; this graph
stays small on purpose.
"""

# No `from __future__ import annotations`: Dagster checks the `context` annotation at runtime.

from datetime import UTC, datetime

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext
from psycopg import sql

from etl_assets.db import PostgresResource
from etl_assets.demo.seed import HUGE_AMOUNT

CLEAN_ORDERS = dg.AssetKey(["clean", "orders"])
DAILY_ORDERS = dg.AssetKey(["mart", "daily_orders"])
RAW_ORDERS = dg.AssetKey(["raw", "orders"])
RAW_CATEGORIES = dg.AssetKey(["raw", "categories"])
RAW_CUSTOMERS = dg.AssetKey(["raw", "customers"])
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


def clean_orders_frame(
    orders: pl.DataFrame, categories: pl.DataFrame, now: datetime
) -> tuple[pl.DataFrame, dict]:
    """The valid orders joined with their category, and the number of rows each rule rejected."""
    known = categories.select(
        pl.col("id").cast(orders.schema["category_id"]).alias("category_id"),
        pl.col("name").alias("category_name"),
        pl.col("type").alias("category_type"),
    )
    amount = pl.col("amount")
    rules = {
        "negative_amount": amount < 0,
        "huge_amount": amount >= HUGE_AMOUNT,
        "future_created_at": pl.col("created_at") > pl.lit(now),
        "unknown_category": ~pl.col("category_id").is_in(known["category_id"].implode()),
    }
    flagged = orders.with_columns(**{f"_bad_{name}": expr for name, expr in rules.items()})
    rejected = {name: int(flagged[f"_bad_{name}"].sum()) for name in rules}
    any_bad = pl.any_horizontal(*(pl.col(f"_bad_{name}") for name in rules))
    valid = (
        flagged.filter(~any_bad)
        .drop([f"_bad_{name}" for name in rules])
        .join(known, on="category_id", how="left")
        .with_columns(order_date=pl.col("created_at").dt.date())
        .select(
            "id",
            "user_id",
            "category_id",
            "category_name",
            "category_type",
            "amount",
            "status",
            "order_date",
            "created_at",
            "updated_at",
        )
        .sort("id")
    )
    return valid, rejected


@dg.asset(
    key=CLEAN_ORDERS,
    ins={"orders": dg.AssetIn(RAW_ORDERS), "categories": dg.AssetIn(RAW_CATEGORIES)},
    group_name="clean",
    kinds={"postgres", "polars"},
    pool="warehouse",
    description="Orders that pass the basic rules, with their category; rejected rows are counted per rule.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["id"]},
)
def clean_orders(
    context: AssetExecutionContext, orders: pl.DataFrame, categories: pl.DataFrame
) -> pl.DataFrame:
    valid, rejected = clean_orders_frame(orders, categories, datetime.now(UTC))
    context.add_output_metadata(
        {"input_rows": orders.height, "rejected_rows": sum(rejected.values())}
        | {f"rejected/{name}": count for name, count in rejected.items()}
    )
    return valid


def daily_orders_frame(clean: pl.DataFrame) -> pl.DataFrame:
    """Orders, distinct customers and amount per day and category."""
    return (
        clean.group_by("order_date", "category_name")
        .agg(
            orders=pl.len().cast(pl.Int64),
            customers=pl.col("user_id").n_unique().cast(pl.Int64),
            amount=pl.col("amount").sum(),
        )
        .sort("order_date", "category_name")
    )


@dg.asset(
    key=DAILY_ORDERS,
    ins={"clean": dg.AssetIn(CLEAN_ORDERS)},
    group_name="mart",
    kinds={"postgres", "polars"},
    pool="warehouse",
    description="Orders, distinct customers and amount per day and category.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["order_date", "category_name"]},
)
def daily_orders(clean: pl.DataFrame) -> pl.DataFrame:
    return daily_orders_frame(clean)


def _scalar(warehouse: PostgresResource, query: sql.Composable) -> int:
    with warehouse.connect() as conn:
        return int(conn.execute(query).fetchone()[0] or 0)


@dg.asset_check(
    asset=CLEAN_ORDERS, blocking=True, description="No amount outside [0, 1,000,000) survived cleaning."
)
def clean_orders_amounts_in_range(warehouse: PostgresResource) -> dg.AssetCheckResult:
    bad = _scalar(
        warehouse,
        sql.SQL("SELECT count(*) FROM {} WHERE amount < 0 OR amount >= {}").format(
            sql.Identifier("clean", "orders"), sql.Literal(HUGE_AMOUNT)
        ),
    )
    return dg.AssetCheckResult(
        passed=bad == 0, severity=dg.AssetCheckSeverity.ERROR, metadata={"bad_rows": bad}
    )


@dg.asset_check(asset=DAILY_ORDERS, blocking=True, description="The daily totals add up to the clean orders.")
def daily_orders_match_clean(warehouse: PostgresResource) -> dg.AssetCheckResult:
    mart = _scalar(
        warehouse, sql.SQL("SELECT sum(orders) FROM {}").format(sql.Identifier("mart", "daily_orders"))
    )
    clean = _scalar(warehouse, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("clean", "orders")))
    return dg.AssetCheckResult(
        passed=mart == clean,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"mart_orders": mart, "clean_orders": clean},
    )


@dg.asset_check(
    asset=RAW_CUSTOMERS, description="Customer e-mails are well formed (a warning: the source is dirty)."
)
def raw_customers_emails_well_formed(warehouse: PostgresResource) -> dg.AssetCheckResult:
    total = _scalar(warehouse, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("raw", "customers")))
    bad = _scalar(
        warehouse,
        sql.SQL("SELECT count(*) FROM {} WHERE email IS NULL OR email !~ {}").format(
            sql.Identifier("raw", "customers"), sql.Literal(EMAIL_PATTERN)
        ),
    )
    return dg.AssetCheckResult(
        passed=bad == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"malformed_emails": bad, "customers": total},
        description=f"{bad:,} of {total:,} customers have a malformed e-mail" if bad else None,
    )


def build_defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[clean_orders, daily_orders],
        asset_checks=[
            clean_orders_amounts_in_range,
            daily_orders_match_clean,
            raw_customers_emails_well_formed,
        ],
    )
