"""The transform assets: clean customers and orders (with dead letters), exchange rates over HTTP,
orders enriched with categories, and daily totals per category.

Inputs are the raw tables by asset key only (``raw/customers``, ``raw/categories``, ``raw/orders``),
whoever produces them. Every asset that rejects rows returns a ``LoadBatch`` whose ``on_commit`` hook
records its dead letters in the same transaction as its data, and whose metadata carries
``rows_in``, ``rows_out``, ``dead_letters`` (plotted by the UI) and ``success_rate``.
"""

# No `from __future__ import annotations`: Dagster inspects the `context` and config annotations.
# Frame inputs are annotated PolarsFrame/PandasFrame (etl_assets.io.frametypes), not pl.DataFrame or
# pd.DataFrame: Dagster resolves annotations when the Definitions load, and the real classes would load
# pandas, polars and pyarrow into every process that loads the code location.

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import Field

from etl_assets import dlq
from etl_assets.automation.conditions import DAILY as DAILY_CONDITION
from etl_assets.automation.conditions import DOWNSTREAM
from etl_assets.db import PostgresResource
from etl_assets.errors import EtlError
from etl_assets.http_source import FX_URL_VAR, FxRatesSource
from etl_assets.io.batch import LoadBatch
from etl_assets.io.frametypes import PandasFrame, PolarsFrame
from etl_assets.io.tables import TableRef
from etl_assets.migrations import ensure_migrated
from etl_assets.retry import STEP_RETRY_POLICY, is_transient, with_connection_retry
from etl_assets.transforms import aggregate, capture
from etl_assets.transforms.customers import clean_customers as clean_customers_rows
from etl_assets.transforms.enrich import enrich_orders
from etl_assets.transforms.orders import clean_orders_pandas, clean_orders_polars

RAW_CUSTOMERS = dg.AssetKey(["raw", "customers"])
RAW_CATEGORIES = dg.AssetKey(["raw", "categories"])
RAW_ORDERS = dg.AssetKey(["raw", "orders"])
CLEAN_CUSTOMERS = dg.AssetKey(["clean", "customers"])
CLEAN_ORDERS = dg.AssetKey(["clean", "orders"])
CLEAN_ORDERS_PANDAS = dg.AssetKey(["clean", "orders_pandas"])
FX_RATES = dg.AssetKey(["ref", "fx_rates"])
ORDERS_ENRICHED = dg.AssetKey(["mart", "orders_enriched"])
DAILY_TOTALS = dg.AssetKey(["mart", "daily_category_totals"])

DAILY = dg.DailyPartitionsDefinition(start_date="2025-01-01")


class TransformConfig(dg.Config):
    max_failure_rate: float = Field(
        default=0.05,
        description="Share of input rows that may be rejected (dead-lettered); above it the asset fails "
        "and writes nothing.",
    )


class OrdersConfig(TransformConfig):
    currency: str = Field(default="EUR", description="Reporting currency for amount_<currency>.")


def key_string(key: dg.AssetKey) -> str:
    return key.to_user_string()


def _fail(exc: Exception) -> dg.Failure:
    """A permanent failure: Dagster's RetryPolicy must not retry the step."""
    return dg.Failure(description=str(exc), allow_retries=False)


def capture_output(
    context: dg.AssetExecutionContext,
    warehouse: PostgresResource,
    key: dg.AssetKey,
    transform: capture.Transform,
    frame: Any,
    max_failure_rate: float,
) -> LoadBatch:
    """Run ``transform`` with error capture and return what the IO manager writes in one transaction."""
    partition = context.partition_key if context.has_partition_key else None

    def load_corrections(conn: Any) -> dict[str, dlq.DeadLetter]:
        ensure_migrated(conn)
        return capture.edited_corrections(dlq.corrections(conn, key_string(key), partition))

    corrections = with_connection_retry(
        warehouse.connect, load_corrections, what=f"{key_string(key)}: read dead-letter corrections",
        logger=context.log,
    )
    outcome = capture.apply(transform, frame, corrections=corrections)
    try:
        outcome.check_rate(key_string(key), max_failure_rate)
    except capture.FailureRateExceeded as exc:
        raise dg.Failure(
            description=str(exc), allow_retries=False, metadata=outcome.metadata()
        ) from None
    origin = dlq.Origin(
        asset_key=key_string(key),
        run_id=context.run.run_id,
        step=context.get_step_execution_context().step.key,
        partition_key=partition,
        target=str(TableRef.for_asset_key(key)),
    )
    meta = outcome.metadata()
    line = (
        f"{meta['rows_in']:,} rows in, {meta['rows_out']:,} out, {meta['dead_letters']:,} dead-lettered"
    )
    if meta["dead_letters"]:  # a warning, so `etl-assets run` lists it; counts and classes only
        classes = ", ".join(f"{k.split(':', 1)[1]}: {v}" for k, v in meta["dead_letters_by_class"].items())
        context.log.warning(f"{line} ({classes}); see `etl-assets dlq list --asset {key_string(key)}`")
    else:
        context.log.info(line)
    return LoadBatch(outcome.frame, on_commit=[outcome.hook(origin)], metadata=meta)


# ------------------------------------------------------------------------------------------------
# The assets
# ------------------------------------------------------------------------------------------------


@dg.asset(
    key=FX_RATES,
    group_name="transforms",
    kinds={"postgres", "polars"},
    pool="warehouse",
    retry_policy=STEP_RETRY_POLICY,
    automation_condition=DOWNSTREAM,
    description="Exchange rates from ETL_FX_URL (or the resource's url), else the shipped snapshot.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["base", "currency"]},
)
def fx_rates(context: dg.AssetExecutionContext, fx_source: FxRatesSource) -> dg.Output:
    try:
        rates = fx_source.fetch(logger=context.log)
    except Exception as exc:
        if is_transient(exc):
            raise  # the step's RetryPolicy tries again later
        raise _fail(
            EtlError(
                f"Exchange rates could not be read: {exc} Check {FX_URL_VAR} (or the fx_source resource's "
                "url); unset it to use the snapshot shipped in etl_assets/data/fx_rates.json."
            )
        ) from exc
    frame = rates.frame()
    return dg.Output(
        frame,
        metadata={"currencies": frame.height, "base": rates.base, "as_of": str(rates.as_of),
                  "source": rates.source},
    )


@dg.asset(
    key=CLEAN_CUSTOMERS,
    ins={"customers": dg.AssetIn(RAW_CUSTOMERS)},
    group_name="transforms",
    kinds={"postgres", "polars"},
    pool="warehouse",
    retry_policy=STEP_RETRY_POLICY,
    automation_condition=DOWNSTREAM,
    description="Customers with full_name, email_domain and created_date, transformed row by row; "
    "rows that fail are dead-lettered.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["id"]},
)
def clean_customers(
    context: dg.AssetExecutionContext, config: TransformConfig, warehouse: PostgresResource,
    customers: PolarsFrame,
) -> LoadBatch:
    now = dt.datetime.now(dt.UTC)
    return capture_output(
        context, warehouse, CLEAN_CUSTOMERS, lambda f: clean_customers_rows(f, now), customers,
        config.max_failure_rate,
    )


def _rate(rates: Any, config: OrdersConfig) -> float:
    import polars as pl

    frame = rates if isinstance(rates, pl.DataFrame) else pl.from_pandas(rates)
    match = frame.filter(pl.col("currency") == config.currency.upper())
    if match.height != 1:
        raise _fail(
            EtlError(
                f"No exchange rate for {config.currency} in ref.fx_rates "
                f"(has {', '.join(frame.get_column('currency').to_list())}); set the config 'currency'."
            )
        )
    return float(match.get_column("rate")[0])


@dg.asset(
    key=CLEAN_ORDERS,
    ins={"orders": dg.AssetIn(RAW_ORDERS), "rates": dg.AssetIn(FX_RATES)},
    group_name="transforms",
    kinds={"postgres", "polars"},
    pool="warehouse",
    retry_policy=STEP_RETRY_POLICY,
    automation_condition=DOWNSTREAM,
    description="Orders validated and converted to the reporting currency (polars batch transform); "
    "invalid rows are dead-lettered.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["id"]},
)
def clean_orders(
    context: dg.AssetExecutionContext, config: OrdersConfig, warehouse: PostgresResource,
    orders: PolarsFrame, rates: PolarsFrame,
) -> LoadBatch:
    rate, currency, now = _rate(rates, config), config.currency.lower(), dt.datetime.now(dt.UTC)
    return capture_output(
        context, warehouse, CLEAN_ORDERS, lambda f: clean_orders_polars(f, rate, currency, now), orders,
        config.max_failure_rate,
    )


@dg.asset(
    key=CLEAN_ORDERS_PANDAS,
    ins={"orders": dg.AssetIn(RAW_ORDERS), "rates": dg.AssetIn(FX_RATES)},
    group_name="transforms",
    kinds={"postgres", "pandas"},
    pool="warehouse",
    retry_policy=STEP_RETRY_POLICY,
    automation_condition=DOWNSTREAM,
    description="The same batch transform as clean/orders on pandas; the check "
    "clean_orders_engines_agree compares the two tables.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["id"]},
)
def clean_orders_pandas_asset(
    context: dg.AssetExecutionContext, config: OrdersConfig, warehouse: PostgresResource,
    orders: PandasFrame, rates: PandasFrame,
) -> LoadBatch:
    rate, currency, now = _rate(rates, config), config.currency.lower(), dt.datetime.now(dt.UTC)
    return capture_output(
        context, warehouse, CLEAN_ORDERS_PANDAS, lambda f: clean_orders_pandas(f, rate, currency, now),
        orders, config.max_failure_rate,
    )


@dg.asset_check(
    asset=CLEAN_ORDERS_PANDAS,
    additional_deps=[CLEAN_ORDERS],
    description="clean/orders (polars) and clean/orders_pandas hold exactly the same rows.",
)
def clean_orders_engines_agree(warehouse: PostgresResource) -> dg.AssetCheckResult:
    with warehouse.connect() as conn:
        only = conn.execute(
            "SELECT (SELECT count(*) FROM (SELECT * FROM clean.orders EXCEPT ALL "
            "SELECT * FROM clean.orders_pandas) a), (SELECT count(*) FROM (SELECT * FROM clean.orders_pandas "
            "EXCEPT ALL SELECT * FROM clean.orders) b)"
        ).fetchone()
    return dg.AssetCheckResult(
        passed=only == (0, 0),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"only_in_polars": only[0], "only_in_pandas": only[1]},
    )


@dg.asset(
    key=ORDERS_ENRICHED,
    ins={"orders": dg.AssetIn(CLEAN_ORDERS), "categories": dg.AssetIn(RAW_CATEGORIES)},
    group_name="transforms",
    kinds={"postgres", "polars"},
    pool="warehouse",
    retry_policy=STEP_RETRY_POLICY,
    automation_condition=DOWNSTREAM,
    description="Clean orders with their category; orders with an unknown category are kept "
    "(category_matched = false), counted and reported.",
    metadata={"write_mode": "truncate_insert", "primary_key": ["id"]},
)
def orders_enriched(
    context: dg.AssetExecutionContext, orders: PolarsFrame, categories: PolarsFrame
) -> dg.Output:
    frame, stats = enrich_orders(orders, categories)
    if stats.unmatched_rows:
        context.log.warning(
            f"{stats.unmatched_rows} orders have an unknown category ({len(stats.unmatched_keys)} distinct "
            "ids); they are kept with category_matched = false"
        )
    return dg.Output(frame, metadata=stats.metadata())


@dg.asset(
    key=DAILY_TOTALS,
    deps=[ORDERS_ENRICHED],
    partitions_def=DAILY,
    group_name="transforms",
    kinds={"postgres", "polars"},
    pool="warehouse",
    retry_policy=STEP_RETRY_POLICY,
    automation_condition=DAILY_CONDITION,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Per day and category: total amount (shop and reporting currency), event count and "
    "unique users. One partition per day, replaced alone.",
    metadata={"write_mode": "insert", "partition_expr": "order_date",
              "primary_key": ["order_date", "category_id"]},
)
def daily_category_totals(context: dg.AssetExecutionContext, warehouse: PostgresResource) -> dg.Output:
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    orders = aggregate.read_day(
        warehouse.connect, TableRef.for_asset_key(ORDERS_ENRICHED), start, end, logger=context.log
    )
    totals = aggregate.daily_category_totals(orders)
    # A day without orders gives an empty frame: the IO manager then clears the day's rows.
    return dg.Output(totals, metadata={"orders": orders.height, "categories": totals.height})


ASSETS = [fx_rates, clean_customers, clean_orders, clean_orders_pandas_asset, orders_enriched,
          daily_category_totals]
CHECKS = [clean_orders_engines_agree]


@dataclass(frozen=True)
class ReplaySpec:
    """How to replay an asset's dead letters: its target and a transform built from the warehouse."""

    target: TableRef
    primary_key: tuple[str, ...]
    make_transform: Callable[[Any], capture.Transform]


def _rate_from_warehouse(conn: Any, currency: str = "EUR") -> float:
    from etl_assets.io.reader import read_table

    rates = read_table(conn, TableRef.for_asset_key(FX_RATES), kind="polars")
    return _rate(rates, OrdersConfig(currency=currency))


def target_currency(conn: Any, target: TableRef) -> str:
    """The reporting currency ``target`` was built in: its ``amount_<currency>`` column.

    The replay job has no run config of the asset it replays into, and the configured currency of the
    last regular run is what the rows already in the table use; the table itself records it. A table
    with several such columns (the currency was changed) uses the one whose values are filled in; a
    target that does not exist yet gets the default.
    """
    from psycopg import sql

    from etl_assets.io import catalog

    default = OrdersConfig.model_fields["currency"].default
    if catalog.table_oid(conn, target) is None:
        return default
    names = [c.name for c in catalog.columns(conn, target)]
    found = [n for n in names if re.fullmatch(r"amount_[a-z]{3}", n)]
    if len(found) > 1:
        counts = conn.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(n)) for n in found),
                sql.Identifier(target.schema, target.name),
            )
        ).fetchone()
        found = [n for n, c in zip(found, counts, strict=True) if c]
    if len(found) != 1:
        raise EtlError(
            f"Cannot tell the reporting currency of {target} for the dead-letter replay: it has "
            f"{len(found)} filled amount_<currency> columns. Rebuild it with the asset's configured "
            "currency (a regular run), then replay."
            if found
            else f"{target} has no amount_<currency> column; rebuild it with a regular run, then replay."
        )
    return found[0].removeprefix("amount_").upper()


def _replay_customers(conn: Any) -> capture.Transform:
    now = dt.datetime.now(dt.UTC)
    return lambda f: clean_customers_rows(f, now)


def _replay_orders(conn: Any) -> capture.Transform:
    currency = target_currency(conn, TableRef.for_asset_key(CLEAN_ORDERS))
    rate, now = _rate_from_warehouse(conn, currency), dt.datetime.now(dt.UTC)
    return lambda f: clean_orders_polars(f, rate, currency.lower(), now)


def _replay_orders_pandas(conn: Any) -> capture.Transform:
    currency = target_currency(conn, TableRef.for_asset_key(CLEAN_ORDERS_PANDAS))
    rate, now = _rate_from_warehouse(conn, currency), dt.datetime.now(dt.UTC)
    return lambda f: clean_orders_pandas(dlq.as_polars(f).to_pandas(), rate, currency.lower(), now)


#: asset key -> how its dead letters are replayed (the same transform code as the regular run).
REPLAY: dict[str, ReplaySpec] = {
    key_string(CLEAN_CUSTOMERS): ReplaySpec(
        TableRef.for_asset_key(CLEAN_CUSTOMERS), ("id",), _replay_customers
    ),
    key_string(CLEAN_ORDERS): ReplaySpec(TableRef.for_asset_key(CLEAN_ORDERS), ("id",), _replay_orders),
    key_string(CLEAN_ORDERS_PANDAS): ReplaySpec(
        TableRef.for_asset_key(CLEAN_ORDERS_PANDAS), ("id",), _replay_orders_pandas
    ),
}
