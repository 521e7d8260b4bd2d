"""Batch transform of orders (the seed's pattern 2), the same on pandas and on polars.

Vectorised rules decide, per row, the first reason it is rejected (or none); rejected rows become
dead letters with the rule's name as error class, the rest are converted to the reporting currency
(``amount * rate``, rounded to cents) and dated (``order_date``, the UTC day of ``created_at``).
The pandas and polars functions give the same output on the same input (a test checks it): both
compute the converted amount in float64 and round half to even.

Unknown category ids are *not* rejected here: the enrichment keeps and counts them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from etl_assets.transforms.capture import RowFailure, TransformResult

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import pandas as pd
    import polars as pl

MAX_AMOUNT = 1_000_000  # an order at or above this is a data error (the demo's "huge" amounts)

#: (error class, message), in the order the rules are tried; the first that matches is the reason.
RULES: tuple[tuple[str, str], ...] = (
    ("MissingAmount", "amount is missing"),
    ("NegativeAmount", "amount is negative"),
    ("AmountTooLarge", f"amount is at or above {MAX_AMOUNT:,}"),
    ("MissingCreatedAt", "created_at is missing"),
    ("FutureDate", "created_at lies in the future"),
)
MESSAGES = dict(RULES)


def _failures(reasons: list[str | None]) -> list[RowFailure]:
    return [
        RowFailure(i, "validate", error_class=r, message=MESSAGES[r]) for i, r in enumerate(reasons) if r
    ]


def _now_for(dtype_tz: str | None, now: dt.datetime) -> dt.datetime:
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    return now if dtype_tz else now.astimezone(dt.UTC).replace(tzinfo=None)


def clean_orders_polars(
    frame: pl.DataFrame, rate: float, currency: str = "eur", now: dt.datetime | None = None
) -> TransformResult:
    """Validate and convert orders with polars expressions."""
    import polars as pl

    now = now or dt.datetime.now(dt.UTC)
    created_dtype = frame.schema["created_at"]
    tz = getattr(created_dtype, "time_zone", None)
    amount = pl.col("amount").cast(pl.Float64)
    created = pl.col("created_at")
    conditions = (
        amount.is_null(),
        amount < 0,
        amount >= MAX_AMOUNT,
        created.is_null(),
        created > pl.lit(_now_for(tz, now)).cast(created_dtype),
    )
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    for (name, _), condition in reversed(list(zip(RULES, conditions, strict=True))):
        reason = pl.when(condition).then(pl.lit(name)).otherwise(reason)
    reasons = frame.select(reason.alias("reason")).get_column("reason")
    day = created.dt.convert_time_zone("UTC").dt.date() if tz else created.dt.date()
    good = frame.filter(reasons.is_null()).with_columns(
        (amount * rate).round(2).alias(f"amount_{currency}"),
        day.alias("order_date"),
    )
    return TransformResult(good, _failures(reasons.to_list()))


def clean_orders_pandas(
    frame: pd.DataFrame, rate: float, currency: str = "eur", now: dt.datetime | None = None
) -> TransformResult:
    """The same transform with pandas (3.x: copy-on-write, nullable dtypes)."""
    import pandas as pd

    now = now or dt.datetime.now(dt.UTC)
    amount = pd.to_numeric(frame["amount"].astype("Float64"), errors="coerce")
    created = pd.to_datetime(frame["created_at"])
    tz = getattr(created.dtype, "tz", None)
    limit = pd.Timestamp(_now_for(str(tz) if tz else None, now))
    conditions = (
        amount.isna(),
        (amount < 0).fillna(False),
        (amount >= MAX_AMOUNT).fillna(False),
        created.isna(),
        (created > limit).fillna(False),
    )
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    for (name, _), condition in reversed(list(zip(RULES, conditions, strict=True))):
        reason = reason.mask(condition.astype(bool), name)
    ok = reason.isna().to_numpy()
    good = frame.loc[ok].copy()
    good_amount = amount[ok].astype("float64")
    good[f"amount_{currency}"] = (good_amount * rate).round(2)
    days = created[ok].dt.tz_convert("UTC") if tz else created[ok]
    good["order_date"] = days.dt.date.astype("date32[pyarrow]")
    reasons = [None if pd.isna(r) else str(r) for r in reason.tolist()]
    return TransformResult(good.reset_index(drop=True), _failures(reasons))
