"""The Dagster Definitions of the project: ``dagster dev``, ``dagster asset materialize`` and
``etl-assets`` all load this module.

Each domain keeps its assets, checks, jobs, sensors and schedules in its own module exposing
``build_defs() -> dagster.Definitions``; this module merges them and binds the shared resources in
one place. Loading it resolves the database DSNs first (starting the embedded server for any that
is unset), so that ``dagster.EnvVar`` finds them in every process.
"""

from __future__ import annotations

import dagster as dg

from etl_assets.environment import ensure_environment
from etl_assets.resources import build_resources


def build_definitions() -> dg.Definitions:
    """Merge every domain's definitions and bind the shared resources."""
    from etl_assets import domains

    parts = [module.build_defs() for module in domains.modules()]
    merged = dg.Definitions.merge(*parts) if parts else dg.Definitions()
    # A user's tables declaration need not include the demo tables: assets whose inputs no declared
    # table provides are left out (etl_assets.extract.assets.prune_undeclared), not an error.
    from etl_assets.extract.assets import prune_undeclared

    merged, _left_out = prune_undeclared(merged)
    # Automation (etl_assets.automation): per-table freshness windows derived from each table's
    # trigger, and fill-when-missing on schedule-driven extracts; before the quality defaults.
    from etl_assets.automation.defs import apply_automation

    merged = apply_automation(merged)
    # Project-wide policies at the root (etl_assets.quality.defs): run-metrics hooks on every asset,
    # freshness on extracted tables, Python-declared quality checks, column-schema change checks.
    from etl_assets.quality.defs import apply_quality

    merged = apply_quality(merged)
    # ETL_CELERY_BROKER set: every run of the project (etl-assets run, the UI, automation) sends its
    # steps to Celery workers (etl_assets.celery_executor); unset, Dagster's default executor.
    from etl_assets.celery_executor import build_executor

    executor = build_executor()
    extra = dg.Definitions(resources=build_resources(), executor=executor)
    return dg.Definitions.merge(merged, extra)


ensure_environment()
defs = build_definitions()
