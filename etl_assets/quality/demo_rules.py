"""The demo's data-quality rules declared in Python, on transformed assets (the tables YAML holds
those of the extracted tables). Shows the :func:`~etl_assets.quality.checks.rules_for` API.

``valid_emails`` is an ``error`` here, on ``clean/customers``: the row-wise transform has already sent
every malformed e-mail to the dead-letter table, so this blocking check guards the cleaned table and
passes, while the same rule on ``raw/customers`` (a ``warning`` in demo.yaml) fails visibly on the
dirty source rows. Rules for an asset that is not in the Definitions are ignored.
"""

from __future__ import annotations

from etl_assets.quality.checks import rules_for
from etl_assets.quality.rules import Rule

EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

rules_for(
    ["clean", "customers"],
    [
        Rule(
            name="no_null_ids",
            kind="not_null",
            columns=["id"],
            severity="error",
            description="No customer without an id",
        ),
        Rule(name="unique_ids", kind="unique", columns=["id"], severity="error"),
        Rule(
            name="valid_emails",
            kind="pattern",
            columns=["email"],
            regex=EMAIL_REGEX,
            severity="error",
            description="Every e-mail is local@domain.tld (bad ones were dead-lettered upstream)",
        ),
        Rule(name="no_future_dates", kind="not_in_future", columns=["created_at"], severity="error"),
        Rule(
            name="domain_matches_email",
            kind="polars",
            severity="warning",
            # a function of the polars module: the expression is built when the check runs, so loading
            # the Definitions does not load polars
            expression=lambda pl: pl.col("email").str.ends_with(pl.col("email_domain")),
            description="email_domain is the domain of email (a custom polars expression)",
        ),
    ],
    sensitive=["email"],
)
