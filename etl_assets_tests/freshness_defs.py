"""A one-asset code location carrying the project's freshness policy, for test_quality_freshness."""

import dagster as dg

from etl_assets.quality.defs import FRESHNESS


@dg.asset(key=["raw", "freshness_probe"], freshness_policy=FRESHNESS)
def freshness_probe() -> dg.MaterializeResult:
    return dg.MaterializeResult()


defs = dg.Definitions(assets=[freshness_probe])
