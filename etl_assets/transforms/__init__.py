"""Transforms with dead letters, the HTTP exchange-rate source, and the dead-letter replay job.

``build_defs()`` is this domain's part of the project's Definitions (see ``etl_assets/domains.py``).
"""

from __future__ import annotations

import dagster as dg


def build_defs() -> dg.Definitions:
    from etl_assets.http_source import FxRatesSource
    from etl_assets.transforms.assets import ASSETS, CHECKS
    from etl_assets.transforms.replay import dlq_replay

    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[dlq_replay],
        resources={"fx_source": FxRatesSource()},
    )
