"""The Lambda layers' additive measures: per day and category, orders and the exact sum of amounts.

An order contributes ``(1, amount)`` to (UTC day of ``created_at``, ``category_id``) when it passes
``clean.orders``' rules (decided by :func:`etl_assets.transforms.orders.clean_orders_polars` itself,
not a copy) and is not cancelled; otherwise nothing. Both layers use :func:`passing` so they agree
on every row. Amounts stay ``Decimal`` (the rules' float conversion only decides pass/fail).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from etl_assets.transforms.orders import clean_orders_polars

CANCELLED = "cancelled"


def passing(states: Sequence[dict[str, Any]], now: dt.datetime | None = None) -> list[str | None]:
    """For each order state (amount, created_at, …): None when it passes clean.orders' rules, else the
    name of the first rule it fails."""
    import polars as pl

    if not states:
        return []
    frame = pl.DataFrame(
        {
            "row": list(range(len(states))),
            "amount": [None if s.get("amount") is None else float(s["amount"]) for s in states],
            "created_at": [s.get("created_at") for s in states],
        },
        schema={"row": pl.Int64, "amount": pl.Float64, "created_at": pl.Datetime("us", "UTC")},
    )
    result = clean_orders_polars(frame, rate=1.0, now=now)
    reasons: list[str | None] = [None] * len(states)
    for failure in result.failures:
        reasons[failure.position] = failure.error_class
    return reasons


def contribution(
    state: dict[str, Any] | None, reason: str | None
) -> tuple[dt.date, int, int, Decimal] | None:
    """(day, category, orders, amount) an order state adds to the measures, or None."""
    if state is None or reason is not None or state.get("status") == CANCELLED:
        return None
    created: dt.datetime = state["created_at"]
    return created.astimezone(dt.UTC).date(), int(state["category_id"]), 1, Decimal(state["amount"])
