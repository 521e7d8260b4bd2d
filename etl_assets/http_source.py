"""An HTTP source read with retries: exchange rates, used to convert order amounts.

The rates document has the shape ``{"base": "USD", "date": "YYYY-MM-DD", "rates": {"EUR": 0.95, ...}}``
(the format of frankfurter.app and similar services). Its URL comes from the resource config
``url`` or the environment variable ``ETL_FX_URL``; with neither set, the snapshot shipped in
``etl_assets/data/fx_rates.json`` is read, so the demo runs offline.

Requests go through :func:`etl_assets.retry.retrying`: transient failures (refused or reset
connections, timeouts, 429 with its ``Retry-After``, 5xx) are retried with capped exponential
backoff and full jitter; a 4xx or a document of the wrong shape fails at once. The URL is shown
without its query string or credentials, which may carry an API key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from pydantic import Field

from etl_assets.errors import ConfigError, EtlError
from etl_assets.retry import Backoff, HttpStatusError, parse_retry_after, retrying

if TYPE_CHECKING:  # loaded where a frame is built, not when this module is imported
    import polars as pl

FX_URL_VAR = "ETL_FX_URL"
SNAPSHOT = "fx_rates.json"


class SourceFormatError(EtlError):
    """The HTTP source answered, but not with the document we expect (permanent: not retried)."""


def redact_url(url: str) -> str:
    """The URL without credentials and query string (either may hold an API key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def http_get_json(
    url: str,
    *,
    timeout: float = 10.0,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    logger: Any = None,
) -> Any:
    """GET ``url`` and parse JSON, retrying transient failures; see the module docstring."""
    shown = redact_url(url)

    def attempt() -> Any:
        headers = {"Accept": "application/json", "User-Agent": "etl-assets"}
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            raise HttpStatusError(shown, exc.code, str(exc.reason), retry_after) from None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise SourceFormatError(f"{shown} did not return JSON ({exc}).") from None

    return retrying(f"GET {shown}", backoff=backoff, sleep=sleep, logger=logger)(attempt)


@dataclass(frozen=True)
class FxRates:
    base: str
    as_of: dt.date
    rates: dict[str, float]
    source: str  # redacted URL or "snapshot"

    def rate(self, currency: str) -> float:
        try:
            return self.rates[currency]
        except KeyError:
            raise ConfigError(
                f"The exchange rates from {self.source} (base {self.base}) have no rate for {currency}; "
                f"available: {', '.join(sorted(self.rates))}. Choose one of those as reporting currency."
            ) from None

    def frame(self) -> pl.DataFrame:
        import polars as pl

        currencies = sorted(self.rates)
        return pl.DataFrame(
            {
                "base": [self.base] * len(currencies),
                "currency": currencies,
                "rate": [self.rates[c] for c in currencies],
                "as_of": [self.as_of] * len(currencies),
                "source": [self.source] * len(currencies),
            },
            schema={"base": pl.String, "currency": pl.String, "rate": pl.Float64, "as_of": pl.Date,
                    "source": pl.String},
        )


def parse_rates(document: Any, source: str) -> FxRates:
    """Validate the document's shape; a wrong shape is a permanent error naming what is wrong."""
    if not isinstance(document, dict):
        raise SourceFormatError(f"{source}: expected a JSON object with base, date and rates.")
    missing = [k for k in ("base", "date", "rates") if k not in document]
    if missing:
        raise SourceFormatError(f"{source}: the document lacks {', '.join(missing)}.")
    rates = document["rates"]
    if not isinstance(rates, dict) or not rates:
        raise SourceFormatError(f"{source}: 'rates' must be a non-empty object of currency -> number.")
    bad = [k for k, v in rates.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
    if bad:
        names = ", ".join(map(str, bad[:5]))
        raise SourceFormatError(f"{source}: rates for {names} are not positive numbers.")
    try:
        as_of = dt.date.fromisoformat(str(document["date"]))
    except ValueError:
        raise SourceFormatError(f"{source}: 'date' is not an ISO date.") from None
    return FxRates(str(document["base"]), as_of, {str(k): float(v) for k, v in rates.items()}, source)


def snapshot_rates() -> FxRates:
    text = resources.files("etl_assets.data").joinpath(SNAPSHOT).read_text()
    return parse_rates(json.loads(text), "snapshot")


class FxRatesSource(dg.ConfigurableResource):
    """Where exchange rates come from. ``url`` (or ``ETL_FX_URL``) unset: the shipped snapshot."""

    url: str | None = Field(default=None, description=f"rates URL; default: ${FX_URL_VAR}, else the snapshot")
    timeout_seconds: float = Field(default=10.0, description="socket timeout of each attempt")
    max_attempts: int = Field(default=5)
    max_wait_seconds: float = Field(default=10.0, description="cap on each wait between attempts")
    max_total_seconds: float = Field(default=60.0, description="cap on the total time spent retrying")

    def resolved_url(self) -> str | None:
        return self.url or os.environ.get(FX_URL_VAR) or None

    def fetch(self, *, logger: Any = None, sleep: Callable[[float], None] = time.sleep) -> FxRates:
        url = self.resolved_url()
        if not url:
            return snapshot_rates()
        backoff = Backoff(
            max_attempts=self.max_attempts, max_wait=self.max_wait_seconds, max_total=self.max_total_seconds
        )
        document = http_get_json(
            url, timeout=self.timeout_seconds, backoff=backoff, sleep=sleep, logger=logger
        )
        return parse_rates(document, redact_url(url))
