"""Row-wise transform with error capture (the seed's pattern 1): customers -> clean customers.

Each row is transformed on its own, and a row that raises is rejected with its exception (class,
message, trace) while the others go on. Row-wise Python is deliberate here: it is the shape for logic
that cannot be vectorised and for which each failure needs its own reason. Messages name the column,
never its value (values are personal data and messages travel further than payloads).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from etl_assets.transforms.capture import RowFailure, TransformResult

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl

EMAIL = re.compile(r"^[^@\s]+@([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+)$")


class MissingName(ValueError):
    """first_name or last_name is missing or blank."""


class InvalidEmail(ValueError):
    """The e-mail address is missing or not of the form local@domain.tld."""


class FutureDate(ValueError):
    """A creation date lies in the future."""


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def transform_customer(row: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """One customer: full_name, normalised e-mail and its domain, created_date."""
    first = (row.get("first_name") or "").strip()
    last = (row.get("last_name") or "").strip()
    if not first or not last:
        raise MissingName("first_name is missing" if not first else "last_name is missing")
    email = (row.get("email") or "").strip().lower()
    match = EMAIL.match(email)
    if match is None:
        raise InvalidEmail("email is missing" if not email else "email is not of the form local@domain.tld")
    created = row.get("created_at")
    if created is None:
        raise ValueError("created_at is missing")
    if _aware(created) > now:
        raise FutureDate("created_at lies in the future")
    return {
        "id": row["id"],
        "full_name": f"{first} {last}",
        "email": email,
        "email_domain": match.group(1),
        "created_date": _aware(created).astimezone(dt.UTC).date(),
        "created_at": created,
        "updated_at": row.get("updated_at"),
    }


def clean_customers(frame: pl.DataFrame, now: dt.datetime | None = None) -> TransformResult:
    """Transform every row; a row that raises becomes a :class:`RowFailure` with its exception."""
    import polars as pl

    now = now or dt.datetime.now(dt.UTC)
    schema = {
        "id": frame.schema["id"],
        "full_name": pl.String,
        "email": pl.String,
        "email_domain": pl.String,
        "created_date": pl.Date,
        "created_at": frame.schema["created_at"],
        "updated_at": frame.schema["updated_at"],
    }
    out: list[dict[str, Any]] = []
    failures: list[RowFailure] = []
    for position, row in enumerate(frame.iter_rows(named=True)):
        try:
            out.append(transform_customer(row, now))
        except Exception as exc:
            failures.append(RowFailure(position, "transform", exc))
    return TransformResult(pl.DataFrame(out, schema=schema, orient="row"), failures)
