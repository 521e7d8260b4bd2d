"""A one-asset code location for test_automation_conditions: an extracted table (as the tables
declaration would give it) with the freshness policy etl_assets.automation derives from its trigger."""

import dagster as dg

from etl_assets.automation.defs import apply_automation
from etl_assets.pipeline_config import parse_pipelines

CONFIG = parse_pipelines(
    "tables:\n  - name: shop.heartbeat_probe\n    extract: incremental\n    primary_key: [id]\n"
    "    cursor: updated_at\n",
    "automation_defs.yaml",
)
SPEC = CONFIG.tables[0]


@dg.asset(key=SPEC.asset_key_path)
def heartbeat_probe() -> dg.MaterializeResult:
    return dg.MaterializeResult()


defs = apply_automation(dg.Definitions(assets=[heartbeat_probe]), CONFIG)
